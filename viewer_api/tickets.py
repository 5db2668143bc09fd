"""Single-use WebSocket tickets.

A browser cannot set an Authorization header on a WebSocket, and a bearer token in a URL ends up in proxy
logs, browser history and Referer headers. So a client trades its token (sent in a header) for a ticket,
`POST /api/ws-ticket`, and opens the socket with `?ticket=` within `ttl_s`: the ticket opens one socket,
once, for the principal it was issued to. Pure: no I/O, time comes from `now`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
TICKET_TTL_S = 30.0


class TicketRefused(Exception):
    """Why a ticket opens nothing; `holder` is who it was issued to, when it was issued at all."""

    def __init__(self, reason: str, holder: object | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.holder = holder


@dataclass(slots=True)
class _Issued(Generic[T]):
    holder: T
    issued_at: float
    used_at: float | None = None


class TicketBook(Generic[T]):
    """Tickets in memory, at most `capacity` (the oldest dropped first). A used or expired ticket is
    remembered for `remember_s`, so a replay or a late one is refused with its real reason (and its holder
    named in the audit trail); after that it is an unknown ticket like a forged one."""

    def __init__(self, ttl_s: float = TICKET_TTL_S, *, capacity: int = 10_000, remember_s: float = 300.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        if not 0 < ttl_s <= remember_s or capacity < 1:
            raise ValueError("a ticket book needs 0 < ttl_s <= remember_s and capacity >= 1")
        self.ttl_s = ttl_s
        self._capacity = capacity
        self._remember_s = remember_s
        self._now = now
        self._issued: dict[str, _Issued[T]] = {}      # insertion order is issue order: oldest first

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, holder: T) -> str:
        now = self._now()
        self._sweep(now)
        while len(self._issued) >= self._capacity:
            del self._issued[next(iter(self._issued))]
        ticket = secrets.token_urlsafe(32)
        self._issued[ticket] = _Issued(holder, now)
        return ticket

    def redeem(self, ticket: str) -> T:
        """The holder of a valid ticket, which is used up by this call; TicketRefused otherwise."""
        now = self._now()
        self._sweep(now)
        entry = self._issued.get(ticket) if ticket else None
        if entry is None:
            raise TicketRefused(f"unknown ticket (forged, or issued more than {self._remember_s:.0f} s ago)")
        if entry.used_at is not None:
            raise TicketRefused(f"ticket already used {now - entry.used_at:.0f} s ago (a replay?)", entry.holder)
        age = now - entry.issued_at
        if age > self.ttl_s:
            raise TicketRefused(f"ticket expired: issued {age:.0f} s ago, valid for {self.ttl_s:.0f} s",
                                entry.holder)
        entry.used_at = now
        return entry.holder

    def _sweep(self, now: float) -> None:
        while self._issued:
            oldest = next(iter(self._issued))
            if now - self._issued[oldest].issued_at <= self._remember_s:
                break
            del self._issued[oldest]
