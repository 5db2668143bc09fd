"""GET /ws/jobs: a snapshot, then every job event exactly once and in `seq` order.

Events come from the node's bus through a bounded queue per client; a gap in `seq` (or a
reconnect with `since`) is filled from the store, so nothing is missed. A client that falls
further behind than its queue gets {"type": "resync", "seq": last} and is closed.

With `study=UID` the bus itself hands the socket only that study's events (an OHIF per open
study does not cost a check per event per viewer); the seqs it sees then have gaps by design,
so a gap is not a loss there: the bus delivers each event of the study once, and events up to
the snapshot's seq are skipped because the snapshot (or the `since` replay) already holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from typing import Any

from aiohttp import WSCloseCode, web

from viewer_api.keys import JOBS, NODE, WEBSOCKETS, WS_SETTINGS
from viewer_api.ports import JobQueries, Subscription
from viewer_api.views import audit, json_error, who


@functools.lru_cache(maxsize=4096)
def event_text(event: Any) -> str:
    """An event's JSON message, encoded once however many clients receive it (events are immutable)."""
    return json.dumps(event.as_message())


def _matches(event: Any, study: str | None, job_id: str | None) -> bool:
    return (study is None or event.study_instance_uid == study) and (job_id is None or event.job_id == job_id)


async def jobs_socket(request: web.Request) -> web.WebSocketResponse:
    study = request.query.get("study") or None
    job_id = request.query.get("job") or None
    try:
        since = int(request.query["since"]) if "since" in request.query else None
    except ValueError:
        raise json_error(web.HTTPBadRequest, "since must be an integer event seq") from None
    queue_size, heartbeat_s = request.app[WS_SETTINGS]
    jobs = request.app[JOBS]
    ws = web.WebSocketResponse(heartbeat=heartbeat_s)
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    sub = request.app[NODE].subscribe(queue_size, study)   # before the snapshot, so nothing falls between the two
    try:
        head = await jobs.max_seq()
        listed = await jobs.list_jobs(study_instance_uid=study, limit=500)
        snapshot = [j.as_dict(phi=who(request).is_admin) for j in listed if job_id is None or j.id == job_id]
        await audit(request, "watch jobs", study=study or "")
        await ws.send_json({"type": "snapshot", "seq": head, "jobs": snapshot})
        if since is not None and since < head:
            for e in await jobs.events(since=since, limit=1_000_000):
                if e.seq > head:
                    break
                if _matches(e, study, job_id):
                    await ws.send_str(event_text(e))
        await _stream(ws, sub, jobs, head, study, job_id)
    finally:
        sub.close()
        request.app[WEBSOCKETS].discard(ws)
    return ws


async def _stream(ws: web.WebSocketResponse, sub: Subscription, jobs: JobQueries, last: int, study: str | None,
                  job_id: str | None) -> None:
    """Send every event after `last` in seq order (gaps filled from the store) until either side closes;
    a study's socket (filtered by the bus) sends its events as they come, each once."""
    head = last
    reader = asyncio.ensure_future(ws.receive())   # notices the client closing
    while not ws.closed and not reader.done():
        pending: list[Any] = []
        if sub.queue.empty():
            getter = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                getter.cancel()
                break
            pending.append(getter.result())
        while not sub.queue.empty():              # a burst goes out without a wait per event
            pending.append(sub.queue.get_nowait())
        if sub.overflowed:        # it fell behind: the store has everything; the client resumes from `last`
            await ws.send_json({"type": "resync", "seq": last})
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow; reconnect with since")
            break
        if study is not None:                     # the bus filtered: every event here is ours, once
            for event in pending:
                if event.seq > head and _matches(event, study, job_id):
                    last = max(last, event.seq)
                    await ws.send_str(event_text(event))
            continue
        for event in pending:
            if event.seq <= last:
                continue
            batch = [event] if event.seq == last + 1 else \
                [e for e in await jobs.events(since=last, limit=1_000_000) if e.seq <= event.seq]
            for e in batch:
                last = e.seq
                if _matches(e, study, job_id):
                    await ws.send_str(event_text(e))
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


async def close_websockets(app: web.Application) -> None:
    """on_shutdown: every client hears GOING_AWAY, so it knows to reconnect later with `since`."""
    for ws in list(app[WEBSOCKETS]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"segnode is shutting down")
