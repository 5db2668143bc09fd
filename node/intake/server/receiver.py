"""The Storage SCP: owns the DICOM port. The event loop only accepts connections; each association then runs
on its own thread with blocking socket reads (no polling) in node/intake/server/associations.py. Success is sent only
after the file is fsynced and linked under its name and its row committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time

from node.intake.door.door import Door, Recorder
from node.intake.door.image_check import ImageLimits
from node.intake.door.spool import Spool
from node.intake.server.associations import AssociationServer, Connection
from node.settings import DicomSettings

logger = logging.getLogger(__name__)

_EXTRA_CONNECTIONS = 16          # connections still negotiating, beyond max_associations


class StorageSCP:
    """Owns the DICOM port: Verification + Storage, named refusals, timeouts and limits, one thread per
    association doing its own reads, checks, durable writes and replies. It is the associations' `Lease`:
    it counts them against max_associations and commits each instance's row through `record`."""

    def __init__(self, settings: DicomSettings, spool: Spool, record: Recorder) -> None:
        self.settings = settings
        self.door = Door(spool, ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames))
        self.record: Recorder = record
        self._server = AssociationServer(settings, self.door)
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()    # guarded by _lock
        self._established = 0                         # guarded by _lock

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("SCP is not running")
        return int(self._listener.getsockname()[1])

    async def start(self) -> None:
        s = self.settings
        family = socket.getaddrinfo(s.bind_address or None, s.port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        listener = socket.create_server((s.bind_address, s.port), family=family, backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener), name="dicom-accept")
        logger.info("DICOM SCP %s listening on %s:%d (a thread per association)", s.ae_title, s.bind_address,
                    self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish up to the grace period, then abort the rest."""
        if self._listener is None or self._accepting is None:
            return
        self.door.stopping.set()
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._listener.close()
        self._listener = None
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

    async def _accept(self, listener: socket.socket) -> None:
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
                self._open_association(sock, peer, limit)
            except Exception:                          # edge: one connection's failure, not the port's
                logger.exception("connection from %s could not be served", peer)
                sock.close()

    def _open_association(self, sock: socket.socket, peer: object, limit: int) -> None:
        with self._lock:
            crowded = len(self._connections) >= limit
        if crowded:
            logger.warning("connection from %s closed: %d connections already open", peer, limit)
            sock.close()
            return
        conn = self._server.connection(sock, peer)
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
            self._server.serve(conn, self)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.sock.close()
