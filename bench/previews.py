"""Preview benchmark: what rendering the result previews adds to a job. One CT phantom study goes through
the node's job path in-process (read the files, ct-basic, measure, label maps + measurements, SEG + SR with
their checks) and then the preview writer, timed apart in the same run; the goal is previews < 5 % of the job.

  python bench/previews.py                          # 300 x 512 x 512
  python bench/previews.py --slices 100 --rows 256  # quicker
Writes bench/out/previews.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.ct_basic import CtBasic
from bench.common import timed, write_result
from node.compute.series import segment_series
from node.jobs.records import JobResults, JobView
from node.results.basic import write_basic_results
from node.results.dicom import write_dicom_results
from node.results.preview import render_preview, write_previews
from node.synth.series import write_series


def job_view(series_instance_uid: str, slices: int) -> JobView:
    at = datetime.fromtimestamp(time.time(), UTC)
    return JobView("bench", "1.2", "bench", "running", "", None, "bench", "ct-basic", (), (series_instance_uid,),
                   "BENCH", "CT", "", slices, 1, JobResults(), at, at)


def run(slices: int, rows: int, repeat: int) -> dict[str, float]:
    model = CtBasic()
    with tempfile.TemporaryDirectory(prefix="segnode-bench-") as tmp:
        paths = write_series(Path(tmp) / "ct", slices=slices, rows=rows)
        uid = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        job = job_view(uid, slices)
        folder = Path(tmp) / "results"
        result, t_segment = timed(lambda: segment_series(uid, paths, model, lambda _f, _s: None))
        _, t_basic = timed(lambda: write_basic_results(job, folder, [result], model.card))
        _, t_dicom = timed(lambda: write_dicom_results(job, folder, [result], model.card))
        _, t_render = timed(lambda: render_preview(result), repeat)
        _, t_preview = timed(lambda: write_previews(job, folder, [result], model.card), repeat)
        size = (folder / f"preview-{uid}.png").stat().st_size
    job_s = t_segment + t_basic + t_dicom + t_preview
    return {"slices": slices, "rows": rows, "segment_s": t_segment, "basic_results_s": t_basic,
            "seg_sr_s": t_dicom, "render_s": t_render, "preview_writer_s": t_preview, "preview_png_bytes": size,
            "job_s": job_s, "preview_share_of_job": t_preview / job_s,
            "preview_vs_inference": t_preview / t_segment}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the preview writer; the best counts")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    r = run(args.slices, args.rows, args.repeat)
    print(f"{args.slices}x{args.rows}x{args.rows} CT: job path {r['job_s']:.2f} s (read + ct-basic + measure "
          f"{r['segment_s']:.2f} s, label maps {r['basic_results_s']:.2f} s, SEG+SR {r['seg_sr_s']:.2f} s); "
          f"previews {r['preview_writer_s'] * 1000:.0f} ms (render {r['render_s'] * 1000:.0f} ms, PNG "
          f"{r['preview_png_bytes'] / 1024:.0f} KB) = {100 * r['preview_share_of_job']:.2f} % of the job "
          f"(goal < 5 %)")
    print("wrote", write_result("previews", r))


if __name__ == "__main__":
    main()
