"""Bearer tokens with two roles, CORS allow-list. 401/403 answers carry a JSON body."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

ADMIN, VIEWER = "admin", "viewer"
PUBLIC = ("/api/health", "/api/openapi.json", "/metrics", "/static/", "/ohif/")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


LOCAL_ADMIN = Principal("local", ADMIN)


class TokenAuth:
    def __init__(self, admin_tokens: Sequence[str] = (), viewer_tokens: Sequence[str] = (),
                 cors_origins: Sequence[str] = ()) -> None:
        self._tokens: list[tuple[str, Principal]] = []
        for role, tokens in ((ADMIN, admin_tokens), (VIEWER, viewer_tokens)):
            for i, entry in enumerate(tokens, start=1):
                name, sep, token = entry.partition("=")
                self._tokens.append((token if sep else entry, Principal(name if sep else f"{role}{i}", role)))
        self.cors_origins = frozenset(o.rstrip("/") for o in cors_origins)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def principal(self, request: web.Request) -> Principal | None:
        if not self.enabled:
            return LOCAL_ADMIN
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.query.get("token", "")
        for known, who in self._tokens:
            if token and hmac.compare_digest(token.encode(), known.encode()):
                return who
        return None

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        own = f"{request.scheme}://{request.host}"
        return origin.rstrip("/") in self.cors_origins or origin.rstrip("/") == own


PRINCIPAL = web.RequestKey("principal", Principal)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json",
                        headers=headers)


def auth_middleware(auth: TokenAuth) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        cors = {}
        if origin and auth.origin_allowed(request):
            cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type",
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS"}
        if request.method == "OPTIONS":
            return web.Response(status=204 if cors else 403, headers=cors)
        if origin and not auth.origin_allowed(request):
            return _error(403, f"origin {origin} is not in [http] cors_origins")
        path = request.path
        if path == "/" or path.startswith(PUBLIC):
            response = await handler(request)
        else:
            who = auth.principal(request)
            if who is None:
                return _error(401, "a bearer token is required (Authorization: Bearer <token>, or ?token= for "
                                   "the WebSocket)", **{"WWW-Authenticate": "Bearer", **cors})
            needs_admin = request.method == "POST" or path.startswith("/api/audit")
            if needs_admin and not who.is_admin:
                return _error(403, f"{who.name} has the viewer role; this needs the admin role", **cors)
            request[PRINCIPAL] = who
            response = await handler(request)
        if not response.prepared:
            response.headers.update(cors)
        return response
    return middleware
