"""Ingest: the same generated study sent by storescu (TCP_NODELAY=1) to Segnode, to DCMTK storescp
(writing files) and to Orthanc, in one run: instances/s, MB/s and the ratios.

  python bench/ingest.py                 # 300 x 128 KB CT instances, one association
Writes bench/out/ingest.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from node.synth.series import write_series
from tests.e2e.dcmtk import storescu
from tests.e2e.node_process import NodeProcess
from tests.e2e.orthanc import OrthancProcess
from tests.helpers import free_port, peer_env, tool, wait_until


def send(port: int, folder: Path, called: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        result = storescu(port, folder, called=called)
        best = min(best, time.perf_counter() - t)
        assert result.returncode == 0, result.stderr
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        files = write_series(tmp / "ct", slices=args.slices, rows=args.rows)
        folder = files[0].parent
        mb = sum(f.stat().st_size for f in files) / 1e6
        n = len(files)
        times: dict[str, float] = {}

        port = free_port()
        (tmp / "ref").mkdir()
        ref = subprocess.Popen([tool("storescp"), "-aet", "REF", "+xa", "-pm", "-dhl", "-od", str(tmp / "ref"),
                                "-fe", ".dcm", str(port)], env=peer_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            times["dcmtk_storescp"] = send(port, folder, "REF", args.repeat)
        finally:
            ref.terminate()
            ref.wait(10)

        # a fresh study each repeat would be fairer for Segnode's duplicate path: re-sent instances
        # are acknowledged without a rewrite, so only the first (cold) send is timed for it
        node = NodeProcess(tmp / "node", node__log_level="WARNING", dicom__study_quiet_period_s="3600").start()
        try:
            times["segnode"] = send(node.dicom_port, folder, "SEGNODE", 1)
            wait_until(lambda: node.get("/api/health")["instances_received"] == n, 30, "all recorded")
        finally:
            node.stop()

        orthanc = OrthancProcess(tmp / "orthanc").start()
        try:
            times["orthanc"] = send(orthanc.dicom_port, folder, "ORTHANC", 1)
        finally:
            orthanc.stop()

    rates = {k: {"instances_per_s": n / v, "mb_per_s": mb / v, "seconds": v} for k, v in times.items()}
    ratios = {"segnode / storescp": times["dcmtk_storescp"] / times["segnode"],
              "segnode / orthanc": times["orthanc"] / times["segnode"]}
    for k, r in rates.items():
        print(f"{k:16s} {r['instances_per_s']:8.0f} instances/s {r['mb_per_s']:7.1f} MB/s")
    print("throughput ratios:", {k: round(v, 2) for k, v in ratios.items()}, "(goal: segnode >= 0.67 x storescp)")
    print("wrote", write_result("ingest", {"instances": n, "megabytes": mb, "rates": rates, "ratios": ratios}))


if __name__ == "__main__":
    main()
