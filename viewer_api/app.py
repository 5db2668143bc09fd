"""The aiohttp application: one factory, resources handed in, nothing created at import."""

from __future__ import annotations

from aiohttp import web

from viewer_api import views
from viewer_api.keys import HEALTH, JOBS, MODELS
from viewer_api.ports import HealthSource, JobQueries, ModelCatalog


def init_app(jobs: JobQueries, health: HealthSource, models: ModelCatalog) -> web.Application:
    app = web.Application()
    app[JOBS] = jobs
    app[HEALTH] = health
    app[MODELS] = models
    app.router.add_get("/api/health", views.health)
    app.router.add_get("/api/jobs", views.list_jobs)
    app.router.add_get("/api/jobs/{job_id}", views.get_job)
    app.router.add_get("/api/models", views.list_models)
    return app
