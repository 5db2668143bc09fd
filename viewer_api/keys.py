"""Every application key in one place."""

from __future__ import annotations

import weakref

from aiohttp import web

from viewer_api.ports import JobQueries, NodeOps
from viewer_api.security_log import SecurityLog
from viewer_api.tickets import TicketBook

JOBS = web.AppKey("jobs", JobQueries)
NODE = web.AppKey("node", NodeOps)
WEBSOCKETS = web.AppKey("websockets", weakref.WeakSet[web.WebSocketResponse])
WS_SETTINGS = web.AppKey("ws_settings", tuple)          # (queue size, heartbeat seconds)
TICKETS = web.AppKey("tickets", TicketBook)             # single-use WebSocket tickets -> the Principal
SECURITY = web.AppKey("security", SecurityLog)          # refused tokens and tickets: counted and audited
