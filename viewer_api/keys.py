"""Every application key in one place."""

from __future__ import annotations

import weakref

from aiohttp import web

from viewer_api.ports import JobQueries, NodeOps

JOBS = web.AppKey("jobs", JobQueries)
NODE = web.AppKey("node", NodeOps)
WEBSOCKETS = web.AppKey("websockets", weakref.WeakSet[web.WebSocketResponse])
WS_SETTINGS = web.AppKey("ws_settings", tuple)          # (queue size, heartbeat seconds)
