"""WebSocket fan-out: N clients on loopback, M job events, delivery latency and messages lost,
against a bare aiohttp broadcast (send to each socket in turn) measured in the same run.

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

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from node.app import Node
from node.jobs.records import InstanceRecord
from node.jobs.states import JobState
from node.settings import load_settings

IDLE_S = 30.0       # a client that hears nothing for this long stops listening (the run is over or stuck)


async def clients_receive(url: str, n_clients: int, n_events: int, skip_first: bool) -> tuple[list[float], int, int]:
    """Connect n clients; each records (receive time - event time) for every event.

    Returns the latencies, the events some client never received, and how many clients the server
    closed early (a Segnode client that falls behind its queue is told to resync and closed).
    """
    latencies: list[float] = []
    lost = closed_early = 0
    # the default connector caps a session at 100 connections
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = [await http.ws_connect(url, max_msg_size=0) for _ in range(n_clients)]
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


async def bare_run(n_clients: int, n_events: int) -> tuple[list[float], int, int, float]:
    sockets: set[web.WebSocketResponse] = set()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        async for _ in ws:
            pass
        sockets.discard(ws)
        return ws
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ready.clear()
    receiving = asyncio.create_task(clients_receive(f"http://127.0.0.1:{port}/ws", n_clients, n_events, False))
    await ready.wait()
    t0 = time.perf_counter()
    for _ in range(n_events):
        payload = json.dumps({"t": time.perf_counter()})
        for ws in list(sockets):                # the aiohttp example: await each socket in turn
            await ws.send_str(payload)
        await asyncio.sleep(0)
    latencies, lost, closed = await receiving
    total = time.perf_counter() - t0
    await runner.cleanup()
    return latencies, lost, closed, total


async def node_run(n_clients: int, n_events: int) -> tuple[list[float], int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={"SEGNODE_NODE__DATA_DIR": tmp, "SEGNODE_DICOM__PORT": "0",
                                      "SEGNODE_HTTP__PORT": "0", "SEGNODE_DICOM__MIN_FREE_DISK_MB": "1",
                                      "SEGNODE_DICOM__STUDY_QUIET_PERIOD_S": "3600",
                                      "SEGNODE_HTTP__WS_QUEUE_SIZE": str(n_events + 10)})
        node = Node(settings)
        await node.start()
        store = node.store
        assert store is not None
        await store.record_instance(InstanceRecord("1.2.3", "1.2", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2",
                                                   "1.2.840.10008.1.2.1", "/x", 1, "BENCH"))
        job_id = (await store.list_jobs())[0].id
        await store.transition(job_id, JobState.QUEUED)
        await store.claim_next()
        ready.clear()
        receiving = asyncio.create_task(clients_receive(f"http://127.0.0.1:{node.http_port}/ws/jobs", n_clients,
                                                        n_events, True))
        await ready.wait()
        t0 = time.perf_counter()
        for i in range(n_events):
            # a real job event: written to the store, which publishes it (the detail carries the send time)
            await store.progress(job_id, i / n_events, repr(time.perf_counter()))
        latencies, lost, closed = await receiving
        total = time.perf_counter() - t0
        await node.stop()

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
    bare_lat, bare_lost, bare_closed, bare_total = await bare_run(args.clients, args.events)
    node_lat, node_lost, node_closed, node_total = await node_run(args.clients, args.events)
    result = {"clients": args.clients, "events": args.events,
              "bare": {"p50_ms": 1000 * pct(bare_lat, 50), "p99_ms": 1000 * pct(bare_lat, 99), "lost": bare_lost,
                       "closed_early": bare_closed, "total_s": bare_total},
              "segnode": {"p50_ms": 1000 * pct(node_lat, 50), "p99_ms": 1000 * pct(node_lat, 99), "lost": node_lost,
                          "closed_early": node_closed, "total_s": node_total}}
    result["ratios"] = {"p50": result["segnode"]["p50_ms"] / result["bare"]["p50_ms"],
                        "p99": result["segnode"]["p99_ms"] / result["bare"]["p99_ms"],
                        "total": node_total / bare_total}
    for name in ("bare", "segnode"):
        r = result[name]
        print(f"{name:8s} p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  lost {r['lost']}  "
              f"closed early {r['closed_early']}  total {r['total_s']:.1f} s")
    print("ratios segnode/bare:", {k: round(v, 2) for k, v in result["ratios"].items()})
    print("wrote", write_result("ws_fanout", result))


if __name__ == "__main__":
    asyncio.run(main())
