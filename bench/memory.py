"""Peak memory and time of one job against the study's size: 512 x 512 CT of 200, 800 and 1,600 slices.

Each job runs as the node runs it: in a fresh model process (node/compute/process.py) that reads the
spooled files, builds the volume, segments, measures and writes labels, SEG and SR. The peak RSS is that
process's VmHWM. The reference, measured in the same run, is the study's float32 volume: the bound is
2.5 x that + 1 GiB per job (issue 18), and both RSS and time should grow linearly with the slices. Each
row also shows the model's own estimate (Segmenter.memory_profile, what [compute] max_job_memory_mb is
checked against), which must not be below the peak.

  python bench/memory.py                                  # 200 and 800 slices, ct-basic and a bundle
  python bench/memory.py --slices 200,800,1600 --models ct-basic,bundle,ct-liver
Writes bench/out/memory.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.registry import ModelRegistry
from bench.common import write_result
from node.compute.memory import MIB, job_need_mb
from node.compute.process import ModelProcess, ModelProcessSpec
from node.jobs.records import JobResults, JobView
from node.results.basic import write_basic_results
from node.results.dicom import write_dicom_results
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets, write_datasets
from tests.builders.bundles import build_threshold_bundle
from tests.builders.ct_liver_factory import fake_liver_folder

ROWS = 512
FOV_MM = 400.0                  # make_phantom's default field of view


def write_study(folder: Path, slices: int) -> tuple[SeriesIds, list[Path]]:
    """A 512 x 512 phantom CT of `slices` 1 mm slices (its arrays are freed before the job runs)."""
    ids = SeriesIds()
    return ids, write_datasets(folder, phantom_datasets(make_phantom(slices, ROWS, slice_spacing_mm=1.0, seed=1), ids))


def job_view(model: str, ids: SeriesIds, count: int) -> JobView:
    now = datetime.now(UTC)
    return JobView("bench", ids.study_instance_uid, "bench", "running", "", 0.0, "bench", model, (),
                   (ids.series_instance_uid,), "BENCH", "CT", "", count, 1, JobResults(), now, now)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def run_one(models_dir: Path, model: str, ids: SeriesIds, paths: list[Path], out: Path) -> dict[str, float]:
    spec = ModelProcessSpec(models_dir, "auto", None, (write_basic_results, write_dicom_results), 0, logging.WARNING)
    proc = ModelProcess(spec, 0)
    proc.start()
    try:
        t0 = time.perf_counter()
        outcome = proc.run_job(job_view(model, ids, len(paths)), {ids.series_instance_uid: [str(p) for p in paths]},
                               out, lambda _f, _s: None)
        seconds = time.perf_counter() - t0
        assert proc.pid is not None
        return {"peak_rss_mb": peak_rss_mb(proc.pid), "seconds": seconds, "inference_s": outcome.inference_s}
    finally:
        proc.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", default="200,800")
    ap.add_argument("--models", default="ct-basic,bundle")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="segnode-mem-") as tmp_s:
        tmp = Path(tmp_s)
        models = tmp / "models"
        build_threshold_bundle(models / "bundle", pixdim=1.5)
        fake_liver_folder(models)
        registry = ModelRegistry(models, torch.device("cpu"))
        for slices in (int(s) for s in args.slices.split(",")):
            ids, paths = write_study(tmp / f"ct-{slices}", slices)
            volume_mb = slices * ROWS * ROWS * 4 / MIB
            for model in args.models.split(","):
                got = run_one(models, model, ids, paths, tmp / f"out-{slices}-{model}")
                bound = job_need_mb(slices * ROWS * ROWS)
                estimate = registry.get(model).memory_profile((1.0, FOV_MM / ROWS, FOV_MM / ROWS)).need_mb(
                    slices * ROWS * ROWS)
                row = {"model": model, "slices": slices, "volume_mb": round(volume_mb), "bound_mb": bound,
                       "estimate_mb": estimate,
                       **{k: round(v, 1) for k, v in got.items()},
                       "rss_per_volume": round(got["peak_rss_mb"] / volume_mb, 2),
                       "within_bound": got["peak_rss_mb"] <= bound,
                       "within_estimate": got["peak_rss_mb"] <= estimate}
                rows.append(row)
                print(f"{model:9s} {slices:5d} slices: volume {volume_mb:6.0f} MiB, peak RSS {got['peak_rss_mb']:7.0f} "
                      f"MiB ({row['rss_per_volume']:.2f}x; bound {bound} MiB: "
                      f"{'ok' if row['within_bound'] else 'OVER'}; estimate {estimate} MiB: "
                      f"{'ok' if row['within_estimate'] else 'UNDER'}), {got['seconds']:6.1f} s", flush=True)
            for p in paths:
                p.unlink()
    print("wrote", write_result("memory", {"rows": ROWS, "columns": ROWS, "jobs": rows}))


if __name__ == "__main__":
    main()
