"""End to end: a study sent by storescu to Segnode until its SEG and SR are stored in a real Orthanc,
against bare inference (volume from the same datasets + ct-basic) measured in the same run, with the
local backend and with the Ray backend (a local Ray with 2 CPUs, or `--ray-address`).

For each backend two fresh studies are sent one after the other: the first pays start-up costs (model
load; for Ray the actor start), the second is the steady state. The quiet period that makes a study
"complete" is configured short and subtracted from the ratios (it is reported too).

  python bench/e2e.py                              # 100 x 256 x 256, local and ray
  python bench/e2e.py --slices 300 --rows 512      # a full-size CT
  python bench/e2e.py --backends local             # no Ray
Writes bench/out/e2e.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.ct_basic import CtBasic
from ai.volume import volume_from_datasets
from bench.common import timed, write_result
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets, write_datasets
from tests.peers.dcmtk import storescu
from tests.peers.helpers import wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import OrthancProcess

QUIET_S = 1.0


def run_backend(backend: str, studies: list[tuple[str, list[Path]]], workdir: Path,
                ray_address: str) -> list[dict[str, float]]:
    orthanc = OrthancProcess(workdir / f"orthanc-{backend}")
    config = (f"[[destinations]]\nname = \"pacs\"\nkind = \"dicom\"\nhost = \"127.0.0.1\"\n"
              f"port = {orthanc.dicom_port}\nae_title = \"ORTHANC\"\n\n"
              f"[[rules]]\nname = \"ct\"\nmodel = \"ct-basic\"\ndestinations = [\"pacs\"]\n")
    extra = {"compute__backend": backend}
    if backend == "ray":
        extra |= {"compute__ray_num_cpus": "2", "compute__ray_address": ray_address}
    node = NodeProcess(workdir / f"node-{backend}", config, dicom__study_quiet_period_s=str(QUIET_S),
                       node__log_level="WARNING", **extra)
    runs = []
    try:
        orthanc.start()
        t_start = time.perf_counter()
        node.start(timeout_s=120)
        start_s = time.perf_counter() - t_start
        for study_uid, paths in studies:
            t0 = time.perf_counter()
            assert storescu(node.dicom_port, paths).returncode == 0
            sent = time.perf_counter() - t0
            wait_until(lambda uid=study_uid: {"SEG", "SR"} <= orthanc.modalities_in_study(uid), 900,
                       "SEG and SR in Orthanc", interval_s=0.1)
            runs.append({"node_start_s": start_s, "send_s": sent,
                         "study_to_results_in_orthanc_s": time.perf_counter() - t0})
    finally:
        node.stop()
        orthanc.stop()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--backends", default="local,ray")
    ap.add_argument("--ray-address", default="", help="a Ray cluster; empty: a local Ray with 2 CPUs")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    phantom = make_phantom(args.slices, args.rows, seed=1)
    result: dict[str, Any] = {"slices": args.slices, "rows": args.rows, "quiet_period_s": QUIET_S, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        first = phantom_datasets(phantom, SeriesIds())
        _, bare = timed(lambda: CtBasic().predict(volume_from_datasets(first)), repeat=2)
        result["bare_inference_s"] = bare
        print(f"{args.slices} x {args.rows} x {args.rows} CT; bare inference (volume + ct-basic): {bare:.2f} s")
        for backend in args.backends.split(","):
            studies = []
            for i in range(2):
                ds = phantom_datasets(phantom, SeriesIds())
                studies.append((ds[0].StudyInstanceUID, write_datasets(tmp / f"{backend}-{i}", ds)))
            runs = run_backend(backend, studies, tmp, args.ray_address)
            for label, run in zip(("first", "steady"), runs, strict=True):
                run["ratio_to_bare_excluding_quiet_period"] = (run["study_to_results_in_orthanc_s"] - QUIET_S) / bare
                print(f"{backend:5s} {label:6s} study -> SEG+SR in Orthanc "
                      f"{run['study_to_results_in_orthanc_s']:6.2f} s "
                      f"(send {run['send_s']:.2f} s, quiet {QUIET_S:.0f} s)  ratio to bare "
                      f"{run['ratio_to_bare_excluding_quiet_period']:.2f}   node start {run['node_start_s']:.1f} s")
            result["backends"][backend] = dict(zip(("first", "steady"), runs, strict=True))
    print("wrote", write_result("e2e", result))


if __name__ == "__main__":
    main()
