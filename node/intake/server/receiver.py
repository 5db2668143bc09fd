"""The Storage SCP: owns the DICOM ports, plain and TLS. The event loop only accepts connections; each
association then runs on its own thread with blocking socket reads (no polling) in
node/intake/server/associations.py, after its TLS handshake on that same thread (node/intake/server/tls.py).
Success is sent only after the file is fsynced and linked under its name and its row committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from node.intake.door.door import Door, Recorder
from node.intake.door.image_check import ImageLimits
from node.intake.door.spool import Spool
from node.intake.server.associations import AssociationServer, Connection
from node.intake.server.tls import HandshakeRefused, handshake
from node.jobs.security_log import SecurityEvent
from node.security import ReloadingContext, TlsSettings
from node.settings import DicomSettings

logger = logging.getLogger(__name__)

_EXTRA_CONNECTIONS = 16          # connections still negotiating, beyond max_associations


class StorageSCP:
    """Owns the DICOM port: Verification + Storage, named refusals, timeouts and limits, one thread per
    association doing its own reads, checks, durable writes and replies. It is the associations' `Lease`:
    it counts them against max_associations and commits each instance's row through `record`."""

    def __init__(self, settings: DicomSettings, spool: Spool, record: Recorder, *, tls: TlsSettings | None = None,
                 on_security_event: Callable[[SecurityEvent], None] | None = None) -> None:
        self.settings = settings
        self.door = Door(spool, ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames))
        self.record: Recorder = record
        self._tls = tls or TlsSettings()
        self._server = AssociationServer(settings, self.door, tls=self._tls, on_security_event=on_security_event)
        self._context: ReloadingContext | None = None
        self._listeners: dict[bool, socket.socket] = {}              # by "is the TLS port"
        self._accepting: list[asyncio.Task[None]] = []
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()    # guarded by _lock
        self._established = 0                         # guarded by _lock

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    @property
    def port(self) -> int:
        """The plain DICOM port."""
        return self._port_of(tls=False)

    @property
    def tls_port(self) -> int:
        """The DICOM TLS port."""
        return self._port_of(tls=True)

    def ports(self) -> dict[str, int]:
        return {("tls" if tls else "plain"): int(sock.getsockname()[1]) for tls, sock in self._listeners.items()}

    def _port_of(self, *, tls: bool) -> int:
        listener = self._listeners.get(tls)
        if listener is None:
            raise RuntimeError(f"the {'TLS' if tls else 'plain'} DICOM port is not open")
        return int(listener.getsockname()[1])

    def reload_tls(self) -> bool:
        """Read the TLS certificate, key, CAs and CRL again (SIGHUP); open associations keep their session."""
        return self._context.reload() if self._context is not None else False

    async def start(self) -> None:
        """Open the ports (the TLS one after its context loads: a bad file stops the node with ConfigError)."""
        s = self.settings
        if s.tls_enabled:
            self._context = ReloadingContext(self._tls, on_error=self._rotation_failed)
        for tls, port in ((False, s.port), (True, s.tls_port)):
            if not (s.tls_enabled if tls else s.plain_enabled):
                continue
            family = socket.getaddrinfo(s.bind_address or None, port, type=socket.SOCK_STREAM,
                                        flags=socket.AI_PASSIVE)[0][0]
            listener = socket.create_server((s.bind_address, port), family=family, backlog=128)
            listener.setblocking(False)
            self._listeners[tls] = listener
            self._accepting.append(asyncio.create_task(self._accept(listener, tls), name="dicom-accept"))
        logger.info("DICOM SCP %s listening on %s: %s (a thread per association)", s.ae_title, s.bind_address,
                    ", ".join(f"{kind} {port}" for kind, port in self.ports().items()))

    @staticmethod
    def _rotation_failed(reason: str) -> None:
        logger.error("TLS: the changed certificate files could not be loaded; the previous ones stay in use: %s",
                     reason)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish up to the grace period, then abort the rest."""
        if not self._listeners:
            return
        self.door.stopping.set()
        for task in self._accepting:
            task.cancel()
        for task in self._accepting:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._accepting.clear()
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        deadline = time.monotonic() + (self.settings.shutdown_grace_s if grace_s is None else grace_s)
        while self._open() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in self._open():
            logger.warning("shutdown: aborting an association after the grace period")
            await asyncio.to_thread(conn.abort)
        joins_end = time.monotonic() + 5.0
        for conn in self._open():
            if conn.thread is not None and conn.thread.ident is not None:
                await asyncio.to_thread(conn.thread.join, max(0.0, joins_end - time.monotonic()))
        logger.info("DICOM SCP stopped")

    def _open(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    # -- the lease of every association ------------------------------------------------------------------
    def establish(self) -> bool:
        with self._lock:
            if self._established >= self.settings.max_associations:
                return False
            self._established += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._established -= 1

    async def _accept(self, listener: socket.socket, tls: bool) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.max_associations + _EXTRA_CONNECTIONS
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:                     # e.g. out of file descriptors: keep listening
                logger.error("DICOM SCP: accept failed (%s)", exc.strerror)
                await asyncio.sleep(0.5)
                continue
            try:
                self._open_association(sock, peer, limit, tls)
            except Exception:                          # edge: one connection's failure, not the port's
                logger.exception("connection from %s could not be served", peer)
                sock.close()

    def _open_association(self, sock: socket.socket, peer: object, limit: int, tls: bool) -> None:
        with self._lock:
            crowded = len(self._connections) >= limit
        if crowded:
            logger.warning("connection from %s closed: %d connections already open", peer, limit)
            sock.close()
            return
        conn = self._server.connection(sock, peer)
        conn.tls = tls
        with self._lock:
            self._connections.add(conn)
        try:
            conn.thread = threading.Thread(target=self._association, args=(conn,), name="dicom-association",
                                           daemon=True)
            conn.thread.start()
        except BaseException:
            with self._lock:
                self._connections.discard(conn)
            conn.thread = None
            raise

    def _association(self, conn: Connection) -> None:
        try:
            if conn.tls and not self._secure(conn):
                return
            self._server.serve(conn, self)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.sock.close()

    def _secure(self, conn: Connection) -> bool:
        """The TLS handshake on this association's thread; False (reported, the connection to be closed) if
        it failed."""
        assert self._context is not None
        try:
            sock, certificate = handshake(conn.sock, self._context.get(), self._tls.handshake_timeout_s)
        except HandshakeRefused as refused:
            self._server.security_event(SecurityEvent("refused tls handshake", "unknown", conn.remote,
                                                      str(refused)))
            return False
        conn.secured(sock, certificate)
        return True
