"""Result previews: one PNG per series, three orthogonal planes through the largest segment, the label map
laid over the windowed image in a fixed colour per segment number. A result writer: it runs where the model ran
(a model process or a Ray actor), after the model, so it never blocks the event loop.

Axes as everywhere in ai/: (slice, row, column); slices ascend along the slice normal, which for an axial
series points to the head, so the coronal and sagittal panels are flipped to show the head at the top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai.segmenter import ModelCard
from node.compute.series import SeriesResult
from node.fsutil import make_dirs, write_atomic
from node.jobs.records import JobResults, JobView
from node.results.png import encode_png

PANEL_PX = 256                    # each plane is fitted into a square of this size
GAP_PX = 4
ALPHA = 0.45                      # how strongly a segment's colour covers the image
PLANES = ("axial", "coronal", "sagittal")
# A fixed colour per segment number (cycled), the same on every preview and in the page's legend.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195))
# (low, high) of the display window per modality; others use the 1st-99th percentile of the volume.
WINDOWS: Mapping[str, tuple[float, float]] = {"CT": (-160.0, 240.0)}    # soft tissue: level 40, width 400


def colour(number: int) -> tuple[int, int, int]:
    return PALETTE[(number - 1) % len(PALETTE)]


def hex_colour(number: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour(number))


def display_window(modality: str, voxels: np.ndarray) -> tuple[float, float]:
    if modality.upper() in WINDOWS:
        return WINDOWS[modality.upper()]
    sample = voxels[:: max(1, voxels.shape[0] // 16)]
    low, high = (float(v) for v in np.percentile(sample, (1, 99)))
    return (low, high) if high > low else (low, low + 1.0)


def centre_of(labels: np.ndarray, number: int | None) -> tuple[int, int, int]:
    """The (slice, row, column) centroid of segment `number`, from every 4th voxel; the volume's centre
    when `number` is None or absent."""
    middle = tuple(n // 2 for n in labels.shape)
    if number is None:
        return middle                                  # type: ignore[return-value]
    step = 4 if min(labels.shape) >= 16 else 1
    where = np.nonzero(labels[::step, ::step, ::step] == number)
    if where[0].size == 0:
        return middle                                  # type: ignore[return-value]
    return tuple(min(int(np.mean(w)) * step, n - 1) for w, n in zip(where, labels.shape, strict=True))  # type: ignore[return-value]


def fit(plane: np.ndarray, spacing: tuple[float, float], box: int = PANEL_PX) -> np.ndarray:
    """Nearest-neighbour resample of a 2-D plane to its physical aspect, the longer side `box` pixels."""
    h_mm, w_mm = plane.shape[0] * spacing[0], plane.shape[1] * spacing[1]
    scale = box / max(h_mm, w_mm)
    out_h, out_w = max(1, round(h_mm * scale)), max(1, round(w_mm * scale))
    rows = np.minimum((np.arange(out_h) + 0.5) * plane.shape[0] / out_h, plane.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(out_w) + 0.5) * plane.shape[1] / out_w, plane.shape[1] - 1).astype(np.intp)
    return plane[np.ix_(rows, cols)]


def _planes(array: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    k, r, c = centre
    return [array[k], array[::-1, r, :], array[::-1, :, c]]


def _lut() -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.float32)
    for n in range(1, 256):
        lut[n] = colour(n)
    return lut


_LUT = _lut()


def overlay(image: np.ndarray, labels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """RGB uint8: `image` windowed to grey, each labelled pixel blended with its segment's colour."""
    low, high = window
    grey = np.clip((image.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    mask = labels > 0
    rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * _LUT[labels[mask]]
    return rgb.astype(np.uint8)


@dataclass(frozen=True, slots=True)
class Preview:
    rgb: np.ndarray                      # (height, width, 3) uint8: the three panels side by side
    centre: tuple[int, int, int]
    window: tuple[float, float]
    focus: int | None                    # the segment the planes go through (the largest), None if none


def render_preview(r: SeriesResult) -> Preview:
    """Axial, coronal and sagittal planes through the centroid of the largest segment, side by side."""
    voxels, labels, sp = r.volume.voxels, r.labels, r.volume.spacing_mm
    largest = max(r.measurements, key=lambda m: m.voxel_count, default=None)
    focus = largest.number if largest is not None else None
    centre = centre_of(labels, focus)
    window = display_window(r.volume.modality, voxels)
    spacings = [(sp[1], sp[2]), (sp[0], sp[2]), (sp[0], sp[1])]
    canvas = np.zeros((PANEL_PX, 3 * PANEL_PX + 2 * GAP_PX, 3), dtype=np.uint8)
    for i, (img, lab, spacing) in enumerate(zip(_planes(voxels, centre), _planes(labels, centre), spacings,
                                                strict=True)):
        panel = overlay(fit(img, spacing), fit(lab, spacing), window)
        top, left = (PANEL_PX - panel.shape[0]) // 2, i * (PANEL_PX + GAP_PX) + (PANEL_PX - panel.shape[1]) // 2
        canvas[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
    return Preview(canvas, centre, window, focus)


def preview_name(series_instance_uid: str) -> str:
    return f"preview-{series_instance_uid}.png"


def write_previews(job: JobView, folder: Path, results: list[SeriesResult], card: ModelCard) -> JobResults:
    """One PNG per series in the job's results folder, and what the page needs to show it (legend, window)."""
    make_dirs(folder)
    entries: list[dict[str, Any]] = []
    for r in results:
        p = render_preview(r)
        name = preview_name(r.series_instance_uid)
        write_atomic(folder / name, encode_png(p.rgb))
        entries.append({"series_instance_uid": r.series_instance_uid, "file": name, "planes": list(PLANES),
                        "width": int(p.rgb.shape[1]), "height": int(p.rgb.shape[0]),
                        "window": [round(v, 1) for v in p.window], "centre": list(p.centre), "focus": p.focus,
                        "segments": [{"number": m.number, "name": m.name, "colour": hex_colour(m.number)}
                                     for m in r.measurements]})
    return JobResults(previews=tuple(entries))
