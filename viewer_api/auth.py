"""Bearer tokens with two roles, single-use tickets for the WebSocket, the CORS allow-list. No credential is
accepted in a URL but a ticket. 400/401/403 answers carry a JSON body; refusals are audited (security_log)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from viewer_api.keys import SECURITY, TICKETS
from viewer_api.security_log import REFUSED_TICKET, REFUSED_TOKEN, REFUSED_TOKEN_IN_URL
from viewer_api.tickets import TicketRefused

ADMIN, VIEWER = "admin", "viewer"
PUBLIC = ("/api/health", "/api/openapi.json", "/metrics", "/static/", "/ohif/")
WS_PATH = "/ws/jobs"
TICKET_PATH = "/api/ws-ticket"        # a POST any role may make: it trades the token for a WebSocket ticket
TOKEN_IN_URL = ("a token in a URL is refused (URLs end up in logs and browser history): send it in the "
                "Authorization header (Bearer), or open the WebSocket with ?ticket= from POST /api/ws-ticket")


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

    def lookup(self, token: str) -> Principal | None:
        """Whose token this is; None for an unknown one (every known token compared, in constant time)."""
        found = None
        for known, who in self._tokens:
            if hmac.compare_digest(token.encode(), known.encode()) and token:
                found = who
        return found

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        own = f"{request.scheme}://{request.host}"
        return origin.rstrip("/") in self.cors_origins or origin.rstrip("/") == own


PRINCIPAL = web.RequestKey("principal", Principal)


def bearer(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; "" for another scheme; None with no header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json",
                        headers=headers)


async def authenticate(auth: TokenAuth, request: web.Request) -> Principal | str:
    """Who makes this request: a ticket's holder (the WebSocket only) or a bearer token's; else the reason
    to answer 401, the refusal audited when a credential was presented."""
    security = request.app[SECURITY]
    if request.path == WS_PATH and "ticket" in request.query:
        book = request.app[TICKETS]
        try:
            holder: Principal = book.redeem(request.query["ticket"])
        except TicketRefused as exc:
            who = exc.holder if isinstance(exc.holder, Principal) else None
            await security.refused(request, REFUSED_TICKET, exc.reason, *((who.name, who.role) if who else ()))
            return (f"{exc.reason}: get a new ticket with POST {TICKET_PATH} (a ticket opens one socket, "
                    f"within {book.ttl_s:.0f} s)")
        return holder
    if not auth.enabled:
        return LOCAL_ADMIN
    token = bearer(request)
    if token is None:
        return (f"a bearer token is required (Authorization: Bearer <token>; the WebSocket takes ?ticket= from "
                f"POST {TICKET_PATH})")
    who = auth.lookup(token)
    if who is None:
        why = "unknown bearer token" if token else "the Authorization header is not \"Bearer <token>\""
        await security.refused(request, REFUSED_TOKEN, why)
        return f"{why}: a bearer token of [http] admin_tokens or viewer_tokens is required"
    return who


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
        if "token" in request.query:                   # on every path, public ones too: the token has leaked
            leaked = auth.lookup(request.query["token"])
            why = f"a bearer token in the URL (the token of {leaked.name}: replace it)" if leaked else \
                "a bearer token in the URL (not a known token)"
            await request.app[SECURITY].refused(request, REFUSED_TOKEN_IN_URL, why,
                                                *((leaked.name, leaked.role) if leaked else ()))
            return _error(400, TOKEN_IN_URL, **cors)
        path = request.path
        if path == "/" or path.startswith(PUBLIC):
            response = await handler(request)
        else:
            who = await authenticate(auth, request)
            if isinstance(who, str):
                return _error(401, who, **{"WWW-Authenticate": "Bearer", **cors})
            needs_admin = (request.method == "POST" and path != TICKET_PATH) or path.startswith("/api/audit")
            if needs_admin and not who.is_admin:
                return _error(403, f"{who.name} has the viewer role; this needs the admin role", **cors)
            request[PRINCIPAL] = who
            response = await handler(request)
        if not response.prepared:
            response.headers.update(cors)
        return response
    return middleware
