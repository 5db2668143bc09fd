"""The aiohttp application: one factory, resources handed in, nothing created at import."""

from __future__ import annotations

import weakref

from aiohttp import web

from viewer_api import insight, views, ws
from viewer_api.auth import Principal, TokenAuth, auth_middleware
from viewer_api.keys import JOBS, NODE, SECURITY, TICKETS, WEBSOCKETS, WS_SETTINGS
from viewer_api.ports import JobQueries, NodeOps
from viewer_api.security_log import SecurityLog
from viewer_api.tickets import TicketBook

HSTS = "max-age=31536000"             # one year: browsers that saw the node over HTTPS never try plain HTTP


def init_app(jobs: JobQueries, node: NodeOps, auth: TokenAuth | None = None, *, ws_queue_size: int = 1000,
             ws_heartbeat_s: float = 20.0, websockets: weakref.WeakSet[web.WebSocketResponse] | None = None,
             https: bool = False, tickets: TicketBook[Principal] | None = None,
             security: SecurityLog | None = None) -> web.Application:
    """The web side of a node: `jobs` answers queries, `node` commands; `websockets` (the open sockets,
    closed at shutdown) may be passed in so the node can count them. `https`: the node serves HTTPS only, and
    every answer carries Strict-Transport-Security. `tickets` and `security` (their clocks) for tests."""
    auth = auth or TokenAuth()
    app = web.Application(middlewares=[auth_middleware(auth)])
    app[JOBS] = jobs
    app[NODE] = node
    app[WEBSOCKETS] = weakref.WeakSet() if websockets is None else websockets
    app[WS_SETTINGS] = (ws_queue_size, ws_heartbeat_s)
    app[TICKETS] = TicketBook() if tickets is None else tickets
    app[SECURITY] = SecurityLog(jobs) if security is None else security
    app.add_routes([
        web.get("/", views.index), web.static("/static/", views.STATIC),
        web.get("/ohif/segnode-ohif.mjs", views.ohif_module),
        web.get("/api/health", views.health), web.get("/api/openapi.json", views.openapi),
        web.get("/api/jobs", views.list_jobs), web.get("/api/jobs/{job_id}", views.get_job),
        web.post("/api/jobs/{job_id}/retry", views.retry_job), web.post("/api/jobs/{job_id}/cancel", views.cancel_job),
        web.get("/api/jobs/{job_id}/results/{kind}", views.download), web.get("/api/models", views.list_models),
        web.get("/api/jobs/{job_id}/preview/{name}", insight.preview),
        web.get("/api/jobs/{job_id}/routing", insight.job_routing), web.get("/api/stats", insight.stats),
        web.get("/api/routing", insight.routing), web.get("/api/routing/dry-run", insight.dry_run),
        web.get("/api/audit", views.audit_log), web.get("/metrics", views.metrics),
        web.post("/api/ws-ticket", views.ws_ticket), web.get("/ws/jobs", ws.jobs_socket),
    ])
    if https:
        app.on_response_prepare.append(_strict_transport_security)
    app.on_shutdown.append(ws.close_websockets)
    return app


async def _strict_transport_security(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Strict-Transport-Security"] = HSTS
