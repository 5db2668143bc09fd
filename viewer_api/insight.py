"""What the node produced and how it is doing: result previews, numbers per hour, the rules at work."""

from __future__ import annotations

from aiohttp import web

from viewer_api.keys import JOBS, NODE
from viewer_api.views import audit, int_param, job_of, json_error

DRY_RUN_FIELDS = ("modality", "body_part", "series_description", "calling_ae")


async def preview(request: web.Request) -> web.FileResponse:
    """A result preview PNG, audited like a download (it shows the patient's anatomy)."""
    job = await job_of(request)
    name = request.match_info["name"]
    try:
        path = request.app[NODE].preview_file(job, name)
    except LookupError as exc:
        raise json_error(web.HTTPNotFound, str(exc)) from exc
    await audit(request, "view preview", job.id, job.study_instance_uid)
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "private, max-age=3600"})


async def stats(request: web.Request) -> web.Response:
    hours = int_param(request, "hours", 24, 1, 24 * 7)
    return web.json_response({"hours": await request.app[JOBS].hourly(hours)})


async def routing(request: web.Request) -> web.Response:
    return web.json_response(await request.app[NODE].routing())


async def dry_run(request: web.Request) -> web.Response:
    """GET /api/routing/dry-run?modality=CT&body_part=&series_description=&calling_ae=&instances=: no side effect."""
    q = request.query
    if not q.get("modality"):
        raise json_error(web.HTTPBadRequest, "modality is required (the series' Modality, e.g. CT)")
    unknown = sorted(set(q) - {*DRY_RUN_FIELDS, "instances", "token"})
    if unknown:
        raise json_error(web.HTTPBadRequest, f"unknown field(s) {', '.join(unknown)}; known: "
                                             f"{', '.join([*DRY_RUN_FIELDS, 'instances'])}")
    answer = request.app[NODE].dry_run(q["modality"].strip().upper(), q.get("body_part", "").strip(),
                                       q.get("series_description", ""), q.get("calling_ae", "").strip(),
                                       int_param(request, "instances", 1, 0, 10**6))
    return web.json_response(answer)


async def job_routing(request: web.Request) -> web.Response:
    job = await job_of(request)
    return web.json_response(await request.app[NODE].job_routing(job))
