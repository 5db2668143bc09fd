"""REST views. HTTP errors are raised here, with a JSON body that says what was wrong."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from viewer_api.keys import HEALTH, JOBS, MODELS

JOB_STATES = {"receiving", "queued", "running", "sending", "done", "failed", "cancelled", "ignored"}


def json_error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
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


async def health(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.app[HEALTH].health()
    return web.json_response(body, status=200 if body.get("ok") else 503)


async def list_jobs(request: web.Request) -> web.Response:
    state = request.query.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise json_error(web.HTTPBadRequest, f"state must be one of {', '.join(sorted(JOB_STATES))}")
    limit = _int_param(request, "limit", 100, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, 10**9)
    jobs = await request.app[JOBS].list_jobs(state=state, study_instance_uid=request.query.get("study") or None,
                                             limit=limit, offset=offset)
    return web.json_response({"jobs": [j.as_dict() for j in jobs], "limit": limit, "offset": offset})


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    try:
        job = await request.app[JOBS].get(job_id)
    except LookupError as exc:
        raise json_error(web.HTTPNotFound, str(exc)) from exc
    events = await request.app[JOBS].events(job_id)
    return web.json_response({**job.as_dict(), "events": [e.as_message() for e in events]})


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"models": await request.app[MODELS].models()})
