"""Result previews: the PNG encoder round-trips, planes go through the largest segment, colours are fixed."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ai.ct_basic import CtBasic
from ai.measure import measure
from ai.volume import volume_from_datasets
from node.compute.series import SeriesResult
from node.jobs.records import JobResults, JobView
from node.jobs.stats import hours_back, percentile
from node.results.png import encode_png
from node.results.preview import PANEL_PX, colour, fit, hex_colour, render_preview, write_previews
from node.synth.phantom import make_phantom
from node.synth.series import phantom_datasets


def test_png_round_trips_through_an_independent_decoder() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (17, 31, 3), dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_png(rgb)))
    assert (image.mode, image.size) == ("RGB", (31, 17))
    assert (np.asarray(image) == rgb).all()
    with pytest.raises(ValueError, match="uint8"):
        encode_png(rgb.astype(np.float32))


def test_fit_keeps_the_physical_aspect() -> None:
    plane = np.arange(40 * 100).reshape(40, 100)
    assert fit(plane, (5.0, 1.0)).shape == (PANEL_PX, 128)        # 200 mm tall, 100 mm wide
    assert fit(plane, (1.0, 1.0)).shape == (102, PANEL_PX)


@pytest.fixture(scope="module")
def result() -> SeriesResult:
    datasets = phantom_datasets(make_phantom(24, 64, seed=0))
    volume = volume_from_datasets(datasets)
    model = CtBasic()
    labels = model.predict(volume)
    return SeriesResult(datasets[0].SeriesInstanceUID, volume, labels,
                        measure(labels, volume.voxels, volume.spacing_mm, model.card), datasets)


def test_the_planes_go_through_the_largest_segment_in_its_fixed_colour(result: SeriesResult) -> None:
    preview = render_preview(result)
    largest = max(result.measurements, key=lambda m: m.voxel_count)
    assert preview.focus == largest.number
    assert result.labels[preview.centre] == largest.number
    assert preview.rgb.shape == (PANEL_PX, 3 * PANEL_PX + 8, 3)
    axial = preview.rgb[:, :PANEL_PX].reshape(-1, 3).astype(int)
    hue = colour(largest.number)
    tinted = (np.sign(axial - axial.mean(axis=1, keepdims=True)) == np.sign(np.array(hue) - np.mean(hue))).all(1)
    assert tinted.mean() > 0.2                                       # the body's colour covers the axial panel


def test_write_previews_records_the_file_and_its_legend(result: SeriesResult, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    job = JobView("j1", "1.2", "j1", "running", "", None, "r", "ct-basic", (), (result.series_instance_uid,),
                  "SCU", "CT", "", 24, 1, JobResults(), now, now)
    written = write_previews(job, tmp_path, [result], CtBasic().card)
    [entry] = written.as_json()["previews"]
    assert (tmp_path / entry["file"]).read_bytes()[:4] == b"\x89PNG"
    assert entry["segments"] == [{"number": m.number, "name": m.name, "colour": hex_colour(m.number)}
                                 for m in result.measurements]
    assert JobResults.from_json(written.as_json()).preview(entry["file"]) == entry
    assert JobResults().merged(written).preview("labels.npz") is None


def test_percentile_is_nearest_rank_and_hours_end_at_the_current_one() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0], 95) == 3.0
    hours = hours_back(datetime(2026, 3, 1, 0, 30, tzinfo=UTC), 3)
    assert [h.hour for h in hours] == [22, 23, 0]
