"""Ingest: the same generated study sent by storescu (TCP_NODELAY=1) to Segnode, to DCMTK storescp
(writing files) and to Orthanc, in one run: instances/s, MB/s and the ratios.

  python bench/ingest.py          # 300 x 132 KB CT instances: 1 association, then 4 at once; 3 rounds each
Writes bench/out/ingest.json. Figures are medians of interleaved rounds.

Every send is a fresh copy of the study (new UIDs, same pixels), so no receiver takes its duplicate
path. A fourth reference, "durable write floor", writes the same files in-process exactly as Segnode's
spool does (node.fsutil.write_new: an unnamed file, fsync, link, folder fsync) with no network at all: no
receiver that makes each instance durable before answering Success can be faster than that on this disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from node.fsutil import write_new
from node.synth.series import write_series
from tests.builders.certs import TestPKI, make_pki
from tests.peers.dcmtk import storescu, tls_flags
from tests.peers.helpers import REPO, free_port, peer_env, tool, wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import OrthancProcess, TlsFiles


def sender(port: int, called: str, tls: Sequence[str] = ()) -> Callable[[list[Path]], None]:
    """Each folder on its own storescu association (over TLS with `tls`, storescu's +tls options), all at once."""
    def send(folders: list[Path]) -> None:
        with ThreadPoolExecutor(len(folders)) as pool:
            results = list(pool.map(lambda f: storescu(port, f, called=called, extra=tls), folders))
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    return send


def durable_writes(out: Path) -> Callable[[list[Path]], None]:
    def write_one(folder: Path) -> None:
        target = out / folder.name
        target.mkdir()
        for f in sorted(folder.iterdir()):
            write_new(target / f.name, f.read_bytes())

    def write(folders: list[Path]) -> None:
        with ThreadPoolExecutor(len(folders)) as pool:
            list(pool.map(write_one, folders))
    return write


Measured = tuple[dict[str, list[float]], dict[str, list[tuple[float, float]]],
                 dict[str, list[tuple[float, float, float]]]]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a process and its running children (the node's receiver and model
    processes) have used so far, all their threads."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for one in (pid, *children(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:              # ended since it was listed
            continue
        user, system = user + int(fields[11]) / tick, system + int(fields[12]) / tick
    return user, system


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine has spent busy (all cores, all processes and kernel threads), and
    in total (busy + idle), from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / tick, sum(ticks) / tick


def file_system(path: Path) -> dict[str, Any]:
    """The file system the receivers write to, and for ext4 whether it has a journal. Without one (as on this
    VM), ext4 will not reuse an inode freed in the last 60-360 s and scans past each of them on every file
    it creates: run this benchmark minutes after deleting many files on it, or every receiver pays that."""
    best: tuple[str, str, str] = ("", "", "")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        mount_point, (fs_type, source) = left.split()[4], right.split()[:2]
        if str(path).startswith(mount_point.rstrip("/") + "/") and len(mount_point) >= len(best[0]):
            best = (mount_point, fs_type, source)
    info: dict[str, Any] = {"mount_point": best[0], "type": best[1], "device": best[2]}
    if best[1] == "ext4":
        info["journal"] = any(Path("/proc/fs/jbd2").glob(f"{Path(best[2]).name}-*"))
    return info


def senders_cpu() -> float:
    """CPU seconds used so far by this process's finished children (the storescu senders)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rounds(runs: dict[str, Callable[[list[Path]], None]], batches: list[list[Path]],
           pids: dict[str, int]) -> Measured:
    """Every batch to every receiver in turn (interleaved, so a noisy moment hits them alike): seconds each,
    the user and system CPU seconds each receiver process spent on it, and for each run the machine's busy
    CPU seconds, its share of the machine's capacity, and the senders' CPU seconds."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
    machine: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    for batch in batches:
        for name, run in runs.items():
            before = cpu_seconds(pids[name]) if name in pids else (0.0, 0.0)
            busy0, all0, send0 = *machine_cpu(), senders_cpu()
            t = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - t)
            busy1, all1, send1 = *machine_cpu(), senders_cpu()
            machine[name].append((busy1 - busy0, (busy1 - busy0) / max(all1 - all0, 1e-9), send1 - send0))
            if name in pids:
                after = cpu_seconds(pids[name])
                cpu[name].append((after[0] - before[0], after[1] - before[1]))
    return times, cpu, machine


def summary(measured: Measured, n: int, mb: float) -> dict[str, Any]:
    times, cpu, machine = measured
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"rates": {k: {"instances_per_s": n / v, "mb_per_s": mb / v, "median_s": v, "all_s": times[k]}
                      for k, v in med.items()},
            "cpu_ms_per_instance": {k: {"user": 1000 * statistics.median(u for u, _ in v) / n,
                                        "system": 1000 * statistics.median(s for _, s in v) / n}
                                    for k, v in cpu.items()},
            "machine": {k: {"busy_cpu_ms_per_instance": 1000 * statistics.median(b for b, _, _ in v) / n,
                            "busy_share": statistics.median(f for _, f, _ in v),
                            "senders_cpu_ms_per_instance": 1000 * statistics.median(c for _, _, c in v) / n}
                        for k, v in machine.items()},
            "ratios": {f"{k} / {ref}": med[ref_key] / med[k] for k in med if k in ("segnode", "segnode_before")
                       for ref, ref_key in (("storescp", "dcmtk_storescp"), ("orthanc", "orthanc"),
                                            ("durable write floor", "durable_write_floor"))
                       if k != "segnode_before" or ref == "orthanc"}
            | ({"segnode_tls / orthanc_tls": med["orthanc_tls"] / med["segnode_tls"],
                "segnode_tls / segnode (plain)": med["segnode"] / med["segnode_tls"]}
               if "segnode_tls" in med else {})
            | ({"segnode / segnode_before (> 1: this checkout is faster)": med["segnode_before"] / med["segnode"]}
               if "segnode_before" in med else {})}


def study_writer(folder: Path, slices: int, rows: int) -> Callable[[], Path]:
    """Each call writes a fresh copy of the study (new UIDs, same pixels) under `folder`; its series folder."""
    count = iter(range(10**6))

    def study() -> Path:
        return write_series(folder / f"study{next(count)}", slices=slices, rows=rows)[0].parent
    return study


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tls", action="store_true",
                    help="also DICOM over TLS: Segnode's TLS port and an Orthanc with DicomTlsEnabled, "
                         "storescu +tls (BCP 195 non-downgrading), same rounds")
    ap.add_argument("--against", default="",
                    help="a git revision: a node of that commit (a temporary worktree) measured in the same rounds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        study = study_writer(tmp, args.slices, args.rows)
        single = [[study()] for _ in range(args.repeat)]
        parallel = [[study() for _ in range(4)] for _ in range(args.repeat)]
        files = sorted(single[0][0].iterdir())
        n, mb = len(files), sum(f.stat().st_size for f in files) / 1e6
        # the TLS port is the same node as the plain one: it gets its own fresh copies (a resent instance
        # is answered from the first copy, which would flatter it)
        twins = {folder: study() for batch in (*single, *parallel) for folder in batch} if args.tls else {}
        with worktree(args.against, tmp / "against") as against:
            times1, times4 = measure(tmp, single, parallel, n, against, make_pki(tmp / "pki") if args.tls else None,
                                     twins)
        fs = file_system(tmp)
    result = {"instances_per_study": n, "megabytes_per_study": mb, "repeat": args.repeat,
              "against": args.against or None, "commit": git_revision(REPO), "file_system": fs,
              "one_association": summary(times1, n, mb), "four_associations": summary(times4, 4 * n, 4 * mb)}
    print("file system:", fs["type"], f"on {fs['device']}", "" if "journal" not in fs else
          ("with a journal" if fs["journal"] else "WITHOUT a journal (see file_system() on deleted inodes)"))
    for case in ("one_association", "four_associations"):
        print(f"{case.replace('_', ' ')}: {n} instances x {1 if case[0] == 'o' else 4}, {mb:.1f} MB each, "
              f"median of {args.repeat} interleaved rounds")
        for k, r in result[case]["rates"].items():
            print(f"  {k:20s} {r['instances_per_s']:8.0f} instances/s {r['mb_per_s']:7.1f} MB/s")
        for k, v in result[case]["cpu_ms_per_instance"].items():
            print(f"  {k:20s} CPU {v['user']:.2f} ms user + {v['system']:.2f} ms system per instance")
        for k, v in result[case]["machine"].items():
            print(f"  {k:20s} machine busy {100 * v['busy_share']:3.0f} %, {v['busy_cpu_ms_per_instance']:.2f} ms "
                  f"busy CPU per instance, of which senders {v['senders_cpu_ms_per_instance']:.2f} ms")
        for k, v in result[case]["ratios"].items():
            print(f"  {k:32s} {v:5.2f}")
    print("goal: 1 association >= 1.0 x orthanc, 4 associations >= 1.5 x orthanc; stretch >= 0.67 x storescp")
    if args.tls:
        print("TLS goal: segnode_tls >= 1.0 x orthanc_tls on 1 association, >= 1.2 x on 4; "
              "segnode_tls >= 0.85 x segnode (plain)")
    print("wrote", write_result("ingest", result))


def git_revision(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


@contextlib.contextmanager
def worktree(revision: str, path: Path) -> Iterator[Path | None]:
    """A checkout of `revision` (None without one), removed afterwards; its node runs on this venv."""
    if not revision:
        yield None
        return
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), revision], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)


def measure(tmp: Path, single: list[list[Path]], parallel: list[list[Path]], n: int,
            against: Path | None, pki: TestPKI | None = None, twins: dict[Path, Path] | None = None,
            ) -> tuple[Measured, Measured]:
    """Every receiver in interleaved rounds: the durable-write floor, storescp, Orthanc, a Segnode node of this
    checkout ("segnode") and, with `against`, one of that checkout ("segnode_before")."""
    (tmp / "floor").mkdir()
    (tmp / "ref").mkdir()
    port = free_port()
    ref = subprocess.Popen([tool("storescp"), "-aet", "REF", "+xa", "-pm", "-dhl", "-od", str(tmp / "ref"),
                            "-fe", ".dcm", str(port)], env=peer_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    checkouts = {"segnode": REPO, **({"segnode_before": against} if against is not None else {})}
    tls = {} if pki is None else {
        "dicom__tls_enabled": "true", "tls__certificate": str(pki.node.cert), "tls__private_key": str(pki.node.key),
        "tls__ca_file": str(pki.ca.cert), "tls__peers": "SCANNER=CN:SCANNER"}
    nodes = {name: NodeProcess(tmp / name, node__log_level="WARNING", dicom__study_quiet_period_s="3600",
                               repo=checkout, **(tls if name == "segnode" else {}))
             for name, checkout in checkouts.items()}
    orthanc = OrthancProcess(tmp / "orthanc")
    orthanc_tls = None if pki is None else OrthancProcess(tmp / "orthanc_tls", tls=TlsFiles(
        pki.pacs.cert, pki.pacs.key, pki.ca.cert, client_certificate_required=True))
    scanner_tls = [] if pki is None else tls_flags(pki.scanner.key, pki.scanner.cert, pki.ca.cert)
    try:
        wait_until(lambda: subprocess.run([tool("echoscu"), "-aec", "REF", "127.0.0.1", str(port)],
                                          capture_output=True).returncode == 0, 10, "storescp")
        for node in nodes.values():
            node.start()
        orthanc.start()
        runs: dict[str, Callable[[list[Path]], None]] = {
            "durable_write_floor": durable_writes(tmp / "floor"), "dcmtk_storescp": sender(port, "REF"),
            **{name: sender(node.dicom_port, "SEGNODE") for name, node in nodes.items()},
            "orthanc": sender(orthanc.dicom_port, "ORTHANC")}
        assert orthanc.proc is not None and all(node.proc is not None for node in nodes.values())
        pids = {"dcmtk_storescp": ref.pid, "orthanc": orthanc.proc.pid,
                **{name: node.proc.pid for name, node in nodes.items() if node.proc is not None}}
        if orthanc_tls is not None:
            orthanc_tls.start()
            assert orthanc_tls.proc is not None and nodes["segnode"].proc is not None
            to_node = sender(nodes["segnode"].tls_port, "SEGNODE", scanner_tls)
            runs["segnode_tls"] = lambda folders: to_node([(twins or {})[f] for f in folders])
            runs["orthanc_tls"] = sender(orthanc_tls.dicom_port, "ORTHANC", scanner_tls)
            pids["segnode_tls"], pids["orthanc_tls"] = nodes["segnode"].proc.pid, orthanc_tls.proc.pid
        times1 = rounds(runs, single, pids)
        times4 = rounds(runs, parallel, pids)
        total = n * (len(single) + 4 * len(parallel))
        expected = {name: total * (2 if name == "segnode" and orthanc_tls is not None else 1) for name in nodes}
        for name, node in nodes.items():
            wait_until(lambda node=node, count=expected[name]: node.get("/api/health")["instances_received"] == count,
                       30, "every instance recorded")
    finally:
        ref.terminate()
        ref.wait(10)
        for node in nodes.values():
            node.stop()
        orthanc.stop()
        if orthanc_tls is not None:
            orthanc_tls.stop()
    return times1, times4


if __name__ == "__main__":
    main()
