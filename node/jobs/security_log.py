"""Security events from any thread (a refused TLS handshake, a certificate presented for another AE title):
a WARNING log line, a count by kind for /metrics, and an audit row written on the loop. Never a patient
attribute: who (AE title, certificate subject), from where, why."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

from node.bridge import LoopBridge
from node.jobs.store import JobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    kind: str            # the audit action: "refused tls handshake", "refused ae/certificate", ...
    actor: str           # the calling AE title, a certificate subject, or "unknown"
    remote: str          # the peer's address "host:port"
    detail: str          # why, for an admin


class SecurityLog:
    """Thread-safe sink for security events of one node; `bind()` on the loop before the first event."""

    def __init__(self, store: JobStore, role: str = "dicom") -> None:
        self._store = store
        self._role = role
        self._bridge: LoopBridge | None = None
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def bind(self, bridge: LoopBridge) -> None:
        self._bridge = bridge

    def record(self, event: SecurityEvent) -> None:
        logger.warning("security: %s from %s (%s): %s", event.kind, event.remote, event.actor, event.detail)
        with self._lock:
            self._counts[event.kind] += 1
        if self._bridge is not None:
            self._bridge.submit(self._write, event)

    async def _write(self, event: SecurityEvent) -> None:
        try:
            await self._store.audit(event.actor, self._role, event.kind, remote=event.remote, detail=event.detail)
        except Exception as exc:                 # edge: the log line stands; the row is lost with the database
            logger.error("security: could not write the audit row of %s (%s)", event.kind, type(exc).__name__)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
