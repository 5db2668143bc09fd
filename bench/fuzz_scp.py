"""Fuzz the Storage SCP with thousands of seeded mutants of one CT slice; Orthanc gets the same mutants.

  python bench/fuzz_scp.py [--count 2000] [--seed 7]
Writes bench/out/fuzz_scp.json. For each receiver: how many mutants were acknowledged, how many of
those pydicom cannot turn into the declared pixels (the number that must be 0 for Segnode), how many
got no answer (an aborted association), and the time per mutant. The receiver stays up throughout or
the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.common import write_result
from node.synth.phantom import make_phantom
from node.synth.series import phantom_datasets, write_datasets
from tests.builders.mutants import decodable, mutants
from tests.peers.orthanc import OrthancProcess
from tests.peers.scu import send_files_to
from tests.support import running_node

ACKNOWLEDGED = {0x0000, 0xB000, 0xB007, 0xB006}


def tally(paths: list[Path], statuses: list, seconds: float) -> dict[str, float]:
    acked = [p for p, s in zip(paths, statuses, strict=True) if s is not None and s.Status in ACKNOWLEDGED]
    return {"mutants": len(paths), "acknowledged": len(acked),
            "acknowledged_undecodable": sum(not decodable(p) for p in acked),
            "no_answer": sum(s is None for s in statuses), "ms_per_mutant": round(1000 * seconds / len(paths), 2)}


async def segnode_run(paths: list[Path], workdir: Path) -> dict[str, float]:
    async with running_node(workdir, DICOM__STUDY_QUIET_PERIOD_S="3600") as node:
        assert node.scp is not None
        started = time.perf_counter()
        statuses = await asyncio.to_thread(send_files_to, node.scp.port, paths, "SEGNODE", "SCANNER", 2)
        return tally(paths, statuses, time.perf_counter() - started)


def orthanc_run(paths: list[Path], workdir: Path) -> dict[str, float]:
    orthanc = OrthancProcess(workdir, check_called_aet=False).start()
    try:
        started = time.perf_counter()
        # Orthanc drops an association it cannot parse without answering: the sender waits its timeout
        statuses = send_files_to(orthanc.dicom_port, paths, called=orthanc.ae_title, timeout_s=2)
        return tally(paths, statuses, time.perf_counter() - started)
    finally:
        orthanc.stop()


def report(name: str, r: dict[str, float]) -> None:
    print(f"{name:8s} acknowledged {r['acknowledged']:5d} / {r['mutants']}, of which undecodable "
          f"{r['acknowledged_undecodable']:4d}; no answer {r['no_answer']}; {r['ms_per_mutant']} ms per mutant",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--orthanc-count", type=int, default=300,
                        help="Orthanc gets the first N mutants only: it leaves many unanswered, each costing a timeout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = write_datasets(root / "source", phantom_datasets(make_phantom(3, 128, seed=0))[:1])[0]
        paths = [p for _kind, p in mutants(source, root / "mutants", args.count, args.seed)]
        segnode = asyncio.run(segnode_run(paths, root / "segnode"))
        report("segnode", segnode)
        orthanc = orthanc_run(paths[: args.orthanc_count], root / "orthanc")
        report("orthanc", orthanc)
    rate = {n: r["acknowledged_undecodable"] / max(1, r["acknowledged"]) for n, r in (("segnode", segnode),
                                                                                        ("orthanc", orthanc))}
    print(f"undecodable among acknowledged: segnode {rate['segnode']:.1%}, orthanc {rate['orthanc']:.1%}; "
          f"time per mutant segnode / orthanc {segnode['ms_per_mutant'] / orthanc['ms_per_mutant']:.3f}x "
          "(Orthanc's includes the 2 s the sender waits on each mutant it leaves unanswered)")
    print("wrote", write_result("fuzz_scp", {"seed": args.seed, "segnode": segnode, "orthanc": orthanc}))
    if segnode["acknowledged_undecodable"] or segnode["no_answer"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
