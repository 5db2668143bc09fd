"""WebSocket fan-out: N clients on loopback, M job events, delivery latency and messages lost,
against a bare aiohttp broadcast (send to each socket in turn) measured in the same run.

Two cases: every client watches every event (the admin page), and one client per study, each
watching only its study (`/ws/jobs?study=UID`, an OHIF per open study; events spread evenly over
the studies). The per-study case is measured against a bare aiohttp server that looks the
study's sockets up in a dict, and against the bare broadcast.

  python bench/ws_fanout.py                    # 500 clients, 2,000 events
Writes bench/out/ws_fanout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from node.jobs.records import InstanceRecord
from node.jobs.states import JobState
from tests.support import running_node

IDLE_S = 30.0       # a client that hears nothing for this long stops listening (the run is over or stuck)


async def clients_receive(urls: list[str], n_events: int, skip_first: bool) -> tuple[list[float], int, int]:
    """Connect one client per URL; each records (receive time - event time) for the n_events it expects.

    Returns the latencies, the events some client never received, and how many clients the server
    closed early (a Segnode client that falls behind its queue is told to resync and closed).
    """
    latencies: list[float] = []
    lost = closed_early = 0
    # the default connector caps a session at 100 connections
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = [await http.ws_connect(url, max_msg_size=0) for url in urls]
        if skip_first:
            for ws in sockets:
                await ws.receive()            # snapshot
        ready.set()

        async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal lost, closed_early
            got = 0
            while got < n_events:
                try:
                    async with asyncio.timeout(IDLE_S):
                        msg = await ws.receive()
                except TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    closed_early += 1
                    break
                data = json.loads(msg.data)
                if "t" in data or "detail" in data:
                    sent = float(data.get("t") or data["detail"])
                    latencies.append(time.perf_counter() - sent)
                    got += 1
            lost += n_events - got
        await asyncio.gather(*(one(ws) for ws in sockets))
        for ws in sockets:
            await ws.close()
    return latencies, lost, closed_early

ready = asyncio.Event()


def study_uid(i: int) -> str:
    return f"1.2.826.0.1.3680043.10.1234.{i + 1}"


async def bare_run(n_clients: int, n_events: int, per_study: bool = False) -> tuple[list[float], int, int, float]:
    """per_study: client i watches study i and event j goes to study j % n_clients, found in a dict."""
    sockets: set[web.WebSocketResponse] = set()
    by_study: dict[str, set[web.WebSocketResponse]] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        group = by_study.setdefault(request.query["study"], set()) if per_study else sockets
        group.add(ws)
        async for _ in ws:
            pass
        group.discard(ws)
        return ws
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ready.clear()
    urls = [f"http://127.0.0.1:{port}/ws?study={study_uid(i)}" for i in range(n_clients)]
    receiving = asyncio.create_task(clients_receive(urls, n_events // n_clients if per_study else n_events, False))
    await ready.wait()
    t0 = time.perf_counter()
    for j in range(n_events):
        payload = json.dumps({"t": time.perf_counter()})
        group = by_study.get(study_uid(j % n_clients), set()) if per_study else sockets
        for ws in list(group):                  # the aiohttp example: await each socket in turn
            await ws.send_str(payload)
        await asyncio.sleep(0)
    latencies, lost, closed = await receiving
    total = time.perf_counter() - t0
    await runner.cleanup()
    return latencies, lost, closed, total


async def node_run(n_clients: int, n_events: int, per_study: bool = False) -> tuple[list[float], int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_node(Path(tmp), dicom__study_quiet_period_s="3600",
                                http__ws_queue_size=str(n_events + 10)) as node:
            store = node.store
            assert store is not None
            studies = [study_uid(i) for i in range(n_clients if per_study else 1)]
            for i, study in enumerate(studies):          # one job per study, each taking instance i
                await store.record_instance(InstanceRecord(f"{study}.1.1", study, f"{study}.1",
                                                           "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                                                           f"/x{i}", 1, "BENCH"))
            job_of = {j.study_instance_uid: j.id for j in await store.list_jobs(limit=len(studies))}
            if not per_study:
                await store.transition(job_of[studies[0]], JobState.QUEUED)
                await store.claim_next()
            ready.clear()
            base = f"http://127.0.0.1:{node.http_port}/ws/jobs"
            urls = [f"{base}?study={s}" for s in studies] if per_study else [base] * n_clients
            receiving = asyncio.create_task(clients_receive(urls, n_events // n_clients if per_study else n_events,
                                                            True))
            await ready.wait()
            t0 = time.perf_counter()
            for i in range(n_events):
                # a real job event: written to the store, which publishes it (the detail carries the send time)
                await store.progress(job_of[studies[i % len(studies)]], i / n_events, repr(time.perf_counter()))
            latencies, lost, closed = await receiving
            total = time.perf_counter() - t0

    return latencies, lost, closed, total


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--events", type=int, default=2000)
    args = ap.parse_args()
    import logging
    logging.disable(logging.INFO)
    if args.events % args.clients:
        ap.error("--events must be a multiple of --clients (the per-study case spreads them evenly)")
    result: dict[str, Any] = {"clients": args.clients, "events": args.events}
    runs = (("bare", bare_run, False), ("segnode", node_run, False),
            ("bare_per_study", bare_run, True), ("segnode_per_study", node_run, True))
    for name, run, per_study in runs:
        lat, lost, closed, total = await run(args.clients, args.events, per_study)
        result[name] = {"p50_ms": 1000 * pct(lat, 50), "p99_ms": 1000 * pct(lat, 99), "lost": lost,
                        "closed_early": closed, "total_s": total}
        r = result[name]
        print(f"{name:18s} p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  lost {r['lost']}  "
              f"closed early {r['closed_early']}  total {r['total_s']:.2f} s")

    def ratios(a: str, b: str) -> dict[str, float]:
        return {"p50": result[a]["p50_ms"] / result[b]["p50_ms"], "p99": result[a]["p99_ms"] / result[b]["p99_ms"],
                "total": result[a]["total_s"] / result[b]["total_s"]}
    result["ratios"] = ratios("segnode", "bare")
    result["ratios_per_study"] = ratios("segnode_per_study", "bare_per_study")
    result["ratios_per_study_vs_broadcast"] = ratios("segnode_per_study", "bare")
    for key in ("ratios", "ratios_per_study", "ratios_per_study_vs_broadcast"):
        print(f"{key}:", {k: round(v, 2) for k, v in result[key].items()})
    print("wrote", write_result("ws_fanout", result))


if __name__ == "__main__":
    asyncio.run(main())
