"""REST views. HTTP errors are raised here, with a JSON body that says what was wrong."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from viewer_api.auth import LOCAL_ADMIN, PRINCIPAL, Principal
from viewer_api.keys import JOBS, NODE, SECURITY, TICKETS

JOB_STATES = {"receiving", "queued", "running", "sending", "done", "failed", "cancelled", "ignored"}
STATIC = Path(__file__).resolve().parent / "static"


def json_error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def who(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, LOCAL_ADMIN)


async def audit(request: web.Request, action: str, job_id: str = "", study: str = "") -> None:
    p = who(request)
    await request.app[JOBS].audit(p.name, p.role, action, job_id, study, request.remote or "")


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise json_error(web.HTTPBadRequest, f"{name} must be {low}-{high}, got {value}")
    return value


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def ohif_module(request: web.Request) -> web.FileResponse:
    """The OHIF extension (no token: it holds no data; a module script needs a JavaScript MIME type)."""
    return web.FileResponse(STATIC / "segnode-ohif.mjs", headers={"Content-Type": "text/javascript",
                                                                  "Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.app[NODE].health()
    return web.json_response(body, status=200 if body.get("ok") else 503)


async def job_of(request: web.Request) -> Any:
    job_id = request.match_info["job_id"]
    try:
        return await request.app[JOBS].get(job_id)
    except LookupError as exc:
        raise json_error(web.HTTPNotFound, str(exc)) from exc


async def list_jobs(request: web.Request) -> web.Response:
    state = request.query.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise json_error(web.HTTPBadRequest, f"state must be one of {', '.join(sorted(JOB_STATES))}")
    limit = int_param(request, "limit", 100, 1, 1000)
    offset = int_param(request, "offset", 0, 0, 10**9)
    study = request.query.get("study") or None
    text = request.query.get("q") or None
    phi = who(request).is_admin
    if text is not None and not phi:         # the search matches patient names and IDs
        raise json_error(web.HTTPForbidden, "searching (q=) needs the admin role; filter by study= instead")
    jobs = await request.app[JOBS].list_jobs(state=state, study_instance_uid=study, limit=limit, offset=offset,
                                             modality=request.query.get("modality") or None,
                                             model=request.query.get("model") or None, text=text)
    await audit(request, "search jobs" if text else "list jobs", study=study or "")
    return web.json_response({"jobs": [j.as_dict(phi=phi) for j in jobs], "limit": limit, "offset": offset})


async def get_job(request: web.Request) -> web.Response:
    job = await job_of(request)
    events = await request.app[JOBS].events(job.id)
    await audit(request, "view job", job.id, job.study_instance_uid)
    return web.json_response({**job.as_dict(phi=who(request).is_admin), "events": [e.as_message() for e in events]})


async def _command(request: web.Request, name: str) -> web.Response:
    job = await job_of(request)
    try:
        event = await getattr(request.app[NODE], name)(job.id)
    except ValueError as exc:
        raise json_error(web.HTTPConflict, str(exc)) from exc
    await audit(request, name, job.id, job.study_instance_uid)
    return web.json_response(event.as_message())


async def retry_job(request: web.Request) -> web.Response:
    return await _command(request, "retry")


async def cancel_job(request: web.Request) -> web.Response:
    return await _command(request, "cancel")


async def download(request: web.Request) -> web.StreamResponse:
    kind = request.match_info["kind"]
    if kind not in ("seg", "sr"):
        raise json_error(web.HTTPNotFound, "results are 'seg' or 'sr'")
    job = await job_of(request)
    try:
        path = request.app[NODE].result_file(job, kind)
    except LookupError as exc:
        raise json_error(web.HTTPNotFound, str(exc)) from exc
    await audit(request, f"download {kind}", job.id, job.study_instance_uid)
    return web.FileResponse(path, headers={"Content-Type": "application/dicom",
                                           "Content-Disposition": f'attachment; filename="{kind}-{job.id}.dcm"'})


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"models": await request.app[NODE].models()})


async def ws_ticket(request: web.Request) -> web.Response:
    """A single-use ticket for one WebSocket open (the browser cannot send a header with it), for the caller."""
    book = request.app[TICKETS]
    return web.json_response({"ticket": book.issue(who(request)), "expires_in_s": book.ttl_s},
                             headers={"Cache-Control": "no-store"})


MAX_AUDIT_ROWS = 5000


async def audit_log(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 200, 1, MAX_AUDIT_ROWS)
    security = request.query.get("security", "").lower()
    if security not in ("", "true", "false", "1", "0"):
        raise json_error(web.HTTPBadRequest, f"security must be true or false, got {security!r}")
    if security in ("true", "1"):
        rows = await request.app[JOBS].audit_log(limit, security=True)
    else:
        rows = await request.app[JOBS].audit_log(limit)
    return web.json_response({"audit": rows})


async def openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "openapi.json")


async def metrics(request: web.Request) -> web.Response:
    m = await request.app[NODE].metrics()
    lines = ["# HELP segnode_jobs Jobs by state.", "# TYPE segnode_jobs gauge"]
    lines += [f'segnode_jobs{{state="{s}"}} {n}' for s, n in sorted(m["jobs"].items())]
    for name, kind, help_text in (
            ("instances_received_total", "counter", "DICOM instances stored since start."),
            ("send_failures_total", "counter", "Failed delivery attempts since start."),
            ("inference_seconds_total", "counter", "Seconds spent in inference since start."),
            ("websocket_clients", "gauge", "Connected WebSocket clients.")):
        lines += [f"# HELP segnode_{name} {help_text}", f"# TYPE segnode_{name} {kind}",
                  f"segnode_{name} {m[name]}"]
    events = Counter(request.app[SECURITY].counts)     # the HTTP door's, and the node's DICOM door's
    events.update(m.get("security_events", {}))
    lines += ["# HELP segnode_security_events_total Refused tokens, tickets, TLS handshakes and certificates "
              "since start, by kind.", "# TYPE segnode_security_events_total counter"]
    lines += [f'segnode_security_events_total{{kind="{_label(k)}"}} {n}' for k, n in sorted(events.items())]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
