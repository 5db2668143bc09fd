"""Bundles in the model zoo's layouts run as real jobs: a pynetdicom SCU sends a phantom, the job ends `done`
with a dciodvfy-clean SEG and SR; a rule naming a bundle found unusable at start fails its job at once."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from node.app import Node
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.builders.bundle_layouts import (
    BTCV_LABELS,
    WHOLE_BODY_LABELS,
    build_btcv_on_old_monai,
    build_layout_bundle,
)
from tests.peers.helpers import dciodvfy
from tests.peers.scu import final_job, send
from tests.support import running_node

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
PEDIATRIC = ["background", "liver", "spleen", "pancreas"]
RULES = """
[[rules]]
name = "pediatric"
model = "pediatric-yaml-label_def"
match = { series_description = "pediatric" }
[[rules]]
name = "whole body"
model = "wholebody-105ch"
match = { series_description = "whole body" }
[[rules]]
name = "btcv"
model = "swin-unetr-btcv"
match = { series_description = "btcv" }
[[rules]]
name = "json state dict"
model = "json-channel_def-state_dict"
match = { series_description = "json state dict" }
[[rules]]
name = "config labels"
model = "yaml-config_labels-checkpoint"
match = { series_description = "config labels" }
[[rules]]
name = "torchscript"
model = "json-channel_def-torchscript-2ch"
match = { series_description = "torchscript" }
"""


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    build_layout_bundle(root / "pediatric-yaml-label_def", names=PEDIATRIC, soft=1, lung=2, bone=3, config="yaml",
                        labels="label_def", weights="named")
    build_layout_bundle(root / "wholebody-105ch", names=WHOLE_BODY_LABELS, soft=5, lung=15, bone=58,
                        weights="checkpoint", net="BlocksNet")
    build_btcv_on_old_monai(root / "swin-unetr-btcv")
    build_layout_bundle(root / "json-channel_def-state_dict", names=BTCV_LABELS, soft=6, lung=1, bone=2)
    build_layout_bundle(root / "yaml-config_labels-checkpoint", names=PEDIATRIC, soft=1, lung=2, bone=3,
                        config="yaml", labels="config", weights="checkpoint")
    build_layout_bundle(root / "json-channel_def-torchscript-2ch", names=["background", "liver"], soft=1, lung=1,
                        bone=1, weights="torchscript")
    return root


@pytest.fixture
async def znode(tmp_path: Path, zoo: Path):
    async with running_node(tmp_path, RULES, models__dir=str(zoo)) as n:
        yield n


@pytest.mark.parametrize(("description", "segments", "first"), [
    ("pediatric", 3, ("Liver", "10200004")),                   # YAML, label_def, scripts/, named checkpoint
    ("whole body", 104, ("Spleen", "78961009")),               # 105 channels, checkpoint dict
    ("json state dict", 3, ("Spleen", "78961009")),            # JSON, channel_def, state dict, BTCV's names
    ("config labels", 3, ("Liver", "10200004")),               # labels from the config's own mapping
    ("torchscript", 1, ("Liver", "10200004")),                 # TorchScript, 2 channels
])
async def test_a_bundle_job_ends_done_with_a_clean_seg_and_sr(znode: Node, description: str, segments: int,
                                                               first: tuple[str, str]) -> None:
    # 8 slices: the whole-body SEG has ~100 frames a slice, and dciodvfy's time grows much faster than that
    ds = phantom_datasets(make_phantom(slices=8, rows=64, seed=4), SeriesIds(series_description=description))
    await send(znode, ds)
    job = await final_job(znode, ds[0].StudyInstanceUID, timeout_s=90)
    assert job.state == "done", job.detail
    folder = znode.settings.node.data_path / "results" / job.id
    files = {f.kind: folder / f.file for f in job.results.files}
    for path in files.values():
        errors = dciodvfy(path).errors
        assert errors == [], (path.name, errors[:5])
    seg = hd.seg.segread(files["seg"])
    assert seg.number_of_segments == segments
    item = seg.SegmentSequence[0]
    assert (item.SegmentLabel, item.SegmentedPropertyTypeCodeSequence[0].CodeValue) == first
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator for s in seg.SegmentSequence} == {"SCT"}
    report = hd.sr.MeasurementReport.from_sequence([dcmread(files["sr"])])     # the root item
    groups = report.get_volumetric_roi_measurement_groups()
    numbers = sorted(n for g in groups for n in g.referenced_segment.referenced_segment_numbers or [])
    assert numbers == list(range(1, segments + 1))


async def test_a_rule_naming_an_unavailable_bundle_fails_the_job_at_routing_with_the_reason(znode: Node) -> None:
    ds = phantom_datasets(make_phantom(slices=6, rows=32, seed=5), SeriesIds(series_description="btcv"))
    await send(znode, ds)
    job = await final_job(znode, ds[0].StudyInstanceUID)
    assert job.state == "failed"
    assert "model swin-unetr-btcv unavailable" in job.detail and "img_size" in job.detail
    states = [e.state for e in await znode.store.events(job.id)]
    assert "running" not in states and states[-2:] == ["queued", "failed"], states
