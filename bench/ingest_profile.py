"""Where the per-instance time goes on the receive path: a node in this process, storescu sending.

  python bench/ingest_profile.py [--receiver pynetdicom|threads] [--slices 300]

Wraps each stage of the C-STORE handling with a timer (decode + door checks, coercion, spool write
with fsyncs, store commit) and compares their sum with the wall time per instance; the rest is the
upper layer (PDU reads, DIMSE assembly, response, polling threads, GIL hand-overs). Also measures a
bare pynetdicom SCP whose handler does nothing, in the same run. Writes bench/out/ingest_profile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom import AE, evt

from bench.common import write_result
from node.app import Node
from node.intake import door
from node.synth.series import write_series
from node.tcp import on_conn_open
from tests.peers.dcmtk import storescu
from tests.peers.settings import node_settings

TIMES: dict[str, list[float]] = defaultdict(list)


def timer(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - t)
    return wrapped


def instrument(node: Node) -> None:
    door.checked = timer("decode + door checks", door.checked)
    door.coerced = timer("control-character check", door.coerced)
    assert node.scp is not None
    node.scp.door.spool.write_instance = timer("spool write (fsync, rename, dir fsync)",  # type: ignore[method-assign]
                                          node.scp.door.spool.write_instance)


async def node_run(tmp: Path, folders: list[Path], receiver: str) -> list[float]:
    node = Node(node_settings(tmp / receiver, dicom__receiver=receiver, dicom__study_quiet_period_s="3600"))
    await node.start()
    instrument(node)
    assert node.scp is not None and node.store is not None
    store = node.store
    original = store.record_instance_blocking
    store.record_instance_blocking = timer("store commit (SQLite row)", original)  # type: ignore[method-assign]
    inner = store._instances.record
    store._instances.record = timed_async("store commit (group, via loop)", inner)  # type: ignore[method-assign]
    walls = []
    try:
        for folder in folders:
            t = time.perf_counter()
            result = await asyncio.to_thread(storescu, node.scp.port, folder)
            assert result.returncode == 0, result.stderr
            walls.append(time.perf_counter() - t)
    finally:
        await node.stop()
    return walls


def timed_async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapped(*args: Any) -> Any:
        t = time.perf_counter()
        try:
            return await fn(*args)
        finally:
            TIMES[name].append(time.perf_counter() - t)
    return wrapped


def bare_scp(folders: list[Path]) -> list[float]:
    ae = AE(ae_title="SEGNODE")
    from node.intake.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
    for sop in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop, TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_CONN_OPEN, on_conn_open), (evt.EVT_C_STORE, lambda _e: 0x0000)])
    walls = []
    try:
        for folder in folders:
            t = time.perf_counter()
            assert storescu(server.server_address[1], folder).returncode == 0
            walls.append(time.perf_counter() - t)
    finally:
        server.shutdown()
    return walls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--receiver", default="pynetdicom")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        folders = [write_series(tmp / f"s{i}", slices=args.slices, rows=256)[0].parent for i in range(args.repeat)]
        bare = bare_scp(folders[:1] * 2)
        walls = asyncio.run(node_run(tmp, folders, args.receiver))
    n = args.slices
    per_instance_ms = 1000 * statistics.median(walls) / n
    stages = {k: 1000 * statistics.median(v) for k, v in TIMES.items()}
    print(f"receiver {args.receiver}: {n / statistics.median(walls):.0f} inst/s, {per_instance_ms:.2f} ms/instance "
          f"(bare pynetdicom no-op SCP: {n / min(bare):.0f} inst/s, {1000 * min(bare) / n:.2f} ms)")
    for k, v in stages.items():
        print(f"  {k:42s} {v:6.2f} ms median ({len(TIMES[k])} calls)")
    rest = per_instance_ms - sum(v for k, v in stages.items() if "via loop" not in k)
    print(f"  {'rest (upper layer, hand-offs, GIL)':42s} {rest:6.2f} ms")
    write_result("ingest_profile", {"receiver": args.receiver, "per_instance_ms": per_instance_ms,
                                    "bare_pynetdicom_ms": 1000 * min(bare) / n, "stages_ms": stages})


if __name__ == "__main__":
    main()
