"""The aiohttp application: one factory, resources handed in, nothing created at import."""

from __future__ import annotations

from aiohttp import web

from viewer_api import views
from viewer_api.keys import HEALTH, JOBS
from viewer_api.ports import HealthSource, JobQueries


def init_app(jobs: JobQueries, health: HealthSource) -> web.Application:
    app = web.Application()
    app[JOBS] = jobs
    app[HEALTH] = health
    app.router.add_get("/api/health", views.health)
    app.router.add_get("/api/jobs", views.list_jobs)
    app.router.add_get("/api/jobs/{job_id}", views.get_job)
    return app
