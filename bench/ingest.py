"""Ingest: the same generated study sent by storescu (TCP_NODELAY=1) to Segnode, to DCMTK storescp
(writing files) and to Orthanc, in one run: instances/s, MB/s and the ratios.

  python bench/ingest.py                 # 300 x 128 KB CT instances, one association, best of 5 rounds
Writes bench/out/ingest.json.

Every send is a fresh copy of the study (new UIDs, same pixels), so no receiver takes its duplicate
path. A fourth reference, "durable write floor", writes the same files in-process exactly as Segnode's
spool does (temp file, fsync, rename, folder fsync) with no network at all: no receiver that makes each
instance durable before answering Success can be faster than that on this disk.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from node.fsutil import write_atomic
from node.synth.series import write_series
from tests.peers.dcmtk import storescu
from tests.peers.helpers import free_port, peer_env, tool, wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import OrthancProcess


def sender(port: int, called: str) -> Callable[[Path], None]:
    def send(folder: Path) -> None:
        result = storescu(port, folder, called=called)
        assert result.returncode == 0, result.stderr
    return send


def durable_writes(out: Path) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        target = out / folder.name
        target.mkdir()
        for f in sorted(folder.iterdir()):
            write_atomic(target / f.name, f.read_bytes())
    return write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        studies = [write_series(tmp / f"study{i}", slices=args.slices, rows=args.rows)[0].parent
                   for i in range(args.repeat)]
        files = sorted(studies[0].iterdir())
        n, mb = len(files), sum(f.stat().st_size for f in files) / 1e6
        (tmp / "floor").mkdir()
        (tmp / "ref").mkdir()
        port = free_port()
        ref = subprocess.Popen([tool("storescp"), "-aet", "REF", "+xa", "-pm", "-dhl", "-od", str(tmp / "ref"),
                                "-fe", ".dcm", str(port)], env=peer_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        node = NodeProcess(tmp / "node", node__log_level="WARNING", dicom__study_quiet_period_s="3600")
        orthanc = OrthancProcess(tmp / "orthanc")
        try:
            wait_until(lambda: subprocess.run([tool("echoscu"), "-aec", "REF", "127.0.0.1", str(port)],
                                              capture_output=True).returncode == 0, 10, "storescp")
            node.start()
            orthanc.start()
            runs: dict[str, Callable[[Path], None]] = {
                "durable_write_floor": durable_writes(tmp / "floor"), "dcmtk_storescp": sender(port, "REF"),
                "segnode": sender(node.dicom_port, "SEGNODE"), "orthanc": sender(orthanc.dicom_port, "ORTHANC")}
            # rounds interleave the receivers, so a noisy moment on a shared machine hits them alike
            times = {name: float("inf") for name in runs}
            for folder in studies:
                for name, run in runs.items():
                    t = time.perf_counter()
                    run(folder)
                    times[name] = min(times[name], time.perf_counter() - t)
            wait_until(lambda: node.get("/api/health")["instances_received"] == n * len(studies), 30,
                       "every instance recorded")
        finally:
            ref.terminate()
            ref.wait(10)
            node.stop()
            orthanc.stop()

    rates = {k: {"instances_per_s": n / v, "mb_per_s": mb / v, "seconds": v} for k, v in times.items()}
    ratios = {"segnode / storescp": times["dcmtk_storescp"] / times["segnode"],
              "segnode / orthanc": times["orthanc"] / times["segnode"],
              "segnode / durable write floor": times["durable_write_floor"] / times["segnode"],
              "durable write floor / storescp": times["dcmtk_storescp"] / times["durable_write_floor"]}
    print(f"{n} instances, {mb:.1f} MB, one association, best of {len(studies)} fresh copies")
    for k, r in rates.items():
        print(f"{k:20s} {r['instances_per_s']:8.0f} instances/s {r['mb_per_s']:7.1f} MB/s")
    for k, v in ratios.items():
        print(f"{k:32s} {v:5.2f}")
    print("goal: segnode >= 0.67 x storescp (storescp does not fsync; the floor line shows the best any "
          "fsync-per-instance receiver can do here)")
    print("wrote", write_result("ingest", {"instances": n, "megabytes": mb, "repeat": len(studies),
                                          "rates": rates, "ratios": ratios}))


if __name__ == "__main__":
    main()
