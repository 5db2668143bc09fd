"""The aiohttp application: one factory, resources handed in, nothing created at import."""

from __future__ import annotations

import weakref

from aiohttp import web

from viewer_api import views, ws
from viewer_api.auth import TokenAuth, auth_middleware
from viewer_api.keys import AUTH, JOBS, NODE, WEBSOCKETS, WS_SETTINGS
from viewer_api.ports import JobQueries, NodeOps


def init_app(jobs: JobQueries, node: NodeOps, auth: TokenAuth | None = None, *, ws_queue_size: int = 1000,
             ws_heartbeat_s: float = 20.0) -> web.Application:
    auth = auth or TokenAuth()
    app = web.Application(middlewares=[auth_middleware(auth)])
    app[JOBS] = jobs
    app[NODE] = node
    app[AUTH] = auth
    app[WEBSOCKETS] = weakref.WeakSet()
    app[WS_SETTINGS] = (ws_queue_size, ws_heartbeat_s)
    r = app.router
    r.add_get("/", views.index)
    r.add_static("/static/", views.STATIC)
    r.add_get("/ohif/segnode-ohif.mjs", views.ohif_module)
    r.add_get("/api/health", views.health)
    r.add_get("/api/openapi.json", views.openapi)
    r.add_get("/api/jobs", views.list_jobs)
    r.add_get("/api/jobs/{job_id}", views.get_job)
    r.add_post("/api/jobs/{job_id}/retry", views.retry_job)
    r.add_post("/api/jobs/{job_id}/cancel", views.cancel_job)
    r.add_get("/api/jobs/{job_id}/results/{kind}", views.download)
    r.add_get("/api/models", views.list_models)
    r.add_get("/api/audit", views.audit_log)
    r.add_get("/metrics", views.metrics)
    r.add_get("/ws/jobs", ws.jobs_socket)
    app.on_shutdown.append(ws.close_websockets)
    return app
