"""The most several receiver processes could give: four studies on four associations to one node, against
one study each to four nodes (four processes, four stores, nothing shared), and against Orthanc, in
interleaved rounds.

  python bench/ingest_processes.py            # 4 x 300 x 132 KB per round, 5 rounds each way
Writes bench/out/ingest_processes.json.

Four separate nodes share no GIL, no writer lock and no store: no design with several receiver processes
behind one port and one job store can beat them, so their rate over one node's is the ceiling of that
design on this machine, and four nodes / Orthanc the best ratio such a design could show there
(bench/RESULTS.md, issue 13).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from bench.ingest import file_system, machine_cpu, study_writer
from tests.peers.dcmtk import storescu
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import OrthancProcess

SENDERS = 4


def send_round(ports: list[int], studies: list[Path], called: str) -> tuple[float, float]:
    """Seconds to send each study to its port at once, and the machine's busy share meanwhile."""
    busy0, total0 = machine_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(len(studies)) as pool:
        results = list(pool.map(lambda job: storescu(job[0], job[1], called=called),
                                zip(ports, studies, strict=True)))
    seconds = time.perf_counter() - start
    busy1, total1 = machine_cpu()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    return seconds, (busy1 - busy0) / (total1 - total0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        study = study_writer(tmp, args.slices, args.rows)
        nodes = [NodeProcess(tmp / f"node{i}", node__log_level="WARNING", dicom__study_quiet_period_s="3600")
                 for i in range(SENDERS)]
        orthanc = OrthancProcess(tmp / "orthanc")
        cases = ("one_node", "four_nodes", "orthanc")
        rates: dict[str, list[float]] = {k: [] for k in cases}
        busy: dict[str, list[float]] = {k: [] for k in cases}
        try:
            orthanc.start()
            for node in nodes:
                node.start()
                storescu(node.dicom_port, study(), called="SEGNODE")     # warm: negotiation cached, store open
            storescu(orthanc.dicom_port, study(), called="ORTHANC")
            for r in range(args.repeat):
                for case in cases[r % 3:] + cases[:r % 3]:
                    ports = {"one_node": [nodes[0].dicom_port] * SENDERS,
                             "four_nodes": [node.dicom_port for node in nodes],
                             "orthanc": [orthanc.dicom_port] * SENDERS}[case]
                    seconds, share = send_round(ports, [study() for _ in range(SENDERS)],
                                                "ORTHANC" if case == "orthanc" else "SEGNODE")
                    rates[case].append(SENDERS * args.slices / seconds)
                    busy[case].append(share)
        finally:
            for node in nodes:
                node.stop()
            orthanc.stop()
        fs = file_system(tmp)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"instances_per_study": args.slices, "senders": SENDERS, "repeat": args.repeat, "file_system": fs,
              "instances_per_s": med, "rounds": rates,
              "machine_busy_share": {k: statistics.median(v) for k, v in busy.items()},
              "ratio_four_nodes_to_one": med["four_nodes"] / med["one_node"],
              "ratio_one_node_to_orthanc": med["one_node"] / med["orthanc"],
              "ratio_four_nodes_to_orthanc": med["four_nodes"] / med["orthanc"]}
    print(f"{SENDERS} studies of {args.slices} instances on {SENDERS} associations at once, "
          f"median of {args.repeat} interleaved rounds")
    for k, v in med.items():
        print(f"  {k:12s} {v:8.0f} instances/s  machine busy {100 * result['machine_busy_share'][k]:3.0f} %  "
              f"rounds {[round(x) for x in rates[k]]}")
    print(f"  four nodes / one node (the ceiling of several receiver processes): "
          f"{result['ratio_four_nodes_to_one']:.2f}")
    print(f"  one node / orthanc:   {result['ratio_one_node_to_orthanc']:.2f}")
    print(f"  four nodes / orthanc: {result['ratio_four_nodes_to_orthanc']:.2f} (goal of issue 13 for one node: 1.5)")
    print("wrote", write_result("ingest_processes", result))


if __name__ == "__main__":
    main()
