"""Security events of the HTTP door: each one counted for /metrics and written to the audit trail.

The convention, shared with the DICOM door (docs/api.md): `action` is the kind, "refused <what>" ("refused
token", "refused token in url", "refused ticket", "refused tls handshake", "refused certificate", "refused
ae/certificate"); `actor`/`role` who it was (the principal, a certificate's CN, a calling AE) or "-" and the
door ("http", "dicom") when unknown; role "security" for an event that is not a refusal (a certificate
rotation that failed); `remote` the address; `detail` why. Never a token or a ticket.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from viewer_api.ports import JobQueries

REFUSED_TOKEN = "refused token"
REFUSED_TOKEN_IN_URL = "refused token in url"
REFUSED_TICKET = "refused ticket"
HTTP_KINDS = (REFUSED_TOKEN, REFUSED_TOKEN_IN_URL, REFUSED_TICKET)


class SecurityLog:
    """Counts every event (since start) and audits it, at most `rows_per_minute` rows per remote address a
    minute: a flood of bad tokens must not become a flood of database writes. The rows held back are
    counted, and said in the next row written for that address."""

    def __init__(self, jobs: JobQueries, rows_per_minute: int = 30,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter({kind: 0 for kind in HTTP_KINDS})
        self._jobs = jobs
        self._limit = rows_per_minute
        self._now = now
        self._windows: dict[str, list[float | int]] = {}     # remote -> [window start, rows written, held back]

    async def refused(self, request: web.Request, kind: str, why: str, actor: str = "-", role: str = "http") -> None:
        self.counts[kind] += 1
        remote = request.remote or ""
        now = self._now()
        for address in [a for a, w in self._windows.items() if now - w[0] >= 60 and not w[2]]:
            del self._windows[address]                      # quiet addresses are forgotten
        window = self._windows.setdefault(remote, [now, 0, 0])
        if now - window[0] >= 60:
            window[0], window[1] = now, 0
        if window[1] >= self._limit:
            window[2] += 1
            return
        held_back, window[2] = window[2], 0
        window[1] += 1
        detail = f"{why} ({request.method} {request.path})"
        if held_back:
            detail += f"; {held_back} more from this address were counted, not written"
        await self._jobs.audit(actor, role, kind, remote=remote, detail=detail)
