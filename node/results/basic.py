"""The plain result writer: label maps (npz) and measurements (JSON) in the job's folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ai.segmenter import ModelCard
from node.compute.series import SeriesResult
from node.fsutil import make_dirs, write_atomic
from node.jobs.records import JobResults, JobView


def write_basic_results(job: JobView, folder: Path, results: list[SeriesResult], card: ModelCard) -> JobResults:
    """Label maps (npz) and measurements (JSON), written atomically into the job's folder."""
    make_dirs(folder)
    series = []
    for r in results:
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=r.labels, spacing_mm=np.array(r.volume.spacing_mm),
                            affine=r.volume.affine)
        name = f"labels-{r.series_instance_uid}.npz"
        write_atomic(folder / name, buf.getvalue())
        series.append({"series_instance_uid": r.series_instance_uid, "labels": name,
                       "shape": list(r.labels.shape),
                       "measurements": [m.as_dict() for m in r.measurements]})
    summary = {"model": card.name, "model_version": card.version, "series": series}
    write_atomic(folder / "measurements.json", json.dumps(summary, indent=1).encode())
    return JobResults(model=card.name, model_version=card.version, series=tuple(series))
