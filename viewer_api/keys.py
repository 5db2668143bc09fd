"""Every application key in one place."""

from __future__ import annotations

from aiohttp import web

from viewer_api.ports import HealthSource, JobQueries, ModelCatalog

JOBS = web.AppKey("jobs", JobQueries)
HEALTH = web.AppKey("health", HealthSource)
MODELS = web.AppKey("models", ModelCatalog)
