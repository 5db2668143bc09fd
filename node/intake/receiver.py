"""The Storage SCP with one thread per association (`[dicom] receiver = "threads"`, the default).

The event loop only accepts connections. Each association then runs on its own thread with blocking
socket reads (no polling), in this process (node/intake/associations.py) or, with `receiver_processes` > 0,
in one of the receiver processes (node/intake/receiver_pool.py): the connection is handed over and this
process only counts the association and commits its rows, on a thread of its own per association.
Success is sent only after the file is fsynced and linked under its name and its row committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from node.intake import channel
from node.intake.associations import AssociationServer, Connection
from node.intake.door import Door, Recorder
from node.intake.image_check import ImageLimits
from node.intake.receiver_pool import Helper, ReceiverPool
from node.intake.receiver_process import config_of
from node.intake.spool import Spool
from node.jobs.records import InstanceRecord, RecordOutcome
from node.settings import DicomSettings

logger = logging.getLogger(__name__)

_EXTRA_CONNECTIONS = 16          # connections still negotiating, beyond max_associations


@dataclass(eq=False)
class _Remote:
    """A connection handed to a receiver process, seen from here: its channel and the thread serving it."""
    helper: Helper
    chan: socket.socket
    thread: threading.Thread | None = None


class _LocalLease:
    """The lease of an association served in this process."""

    def __init__(self, scp: ThreadedStorageSCP) -> None:
        self._scp = scp

    def establish(self) -> bool:
        return self._scp.establish()

    def record(self, rec: InstanceRecord) -> RecordOutcome:
        return self._scp.record(rec)

    def release(self) -> None:
        self._scp.release()


class ThreadedStorageSCP:
    """Owns the DICOM port: Verification + Storage, named refusals, timeouts and limits, one thread per
    association doing its own reads, checks, durable writes and replies (here or in a receiver process)."""

    def __init__(self, settings: DicomSettings, spool: Spool, record: Recorder, *, log_level: str = "INFO") -> None:
        self.settings = settings
        self.door = Door(spool, ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames))
        self.record = record
        self._server = AssociationServer(settings, self.door)
        self._pool = (ReceiverPool(settings.receiver_processes, config_of(settings, spool, log_level))
                      if settings.receiver_processes else None)
        self._spool_prefix = str(spool.root) + os.sep
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._connections: set[Connection | _Remote] = set()    # guarded by _lock
        self._established = 0                                    # guarded by _lock

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("SCP is not running")
        return int(self._listener.getsockname()[1])

    @property
    def pool(self) -> ReceiverPool | None:
        return self._pool

    async def start(self) -> None:
        s = self.settings
        family = socket.getaddrinfo(s.bind_address or None, s.port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        listener = socket.create_server((s.bind_address, s.port), family=family, backlog=128)
        listener.setblocking(False)
        if self._pool is not None:
            self._pool.start()            # until a process is ready, this one serves the associations itself
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener), name="dicom-accept")
        logger.info("DICOM SCP %s listening on %s:%d (a thread per association%s)", s.ae_title, s.bind_address,
                    self.port, f", in {s.receiver_processes} receiver processes" if self._pool else "")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish up to the grace period, then abort the rest."""
        if self._listener is None or self._accepting is None:
            return
        self.door.stopping.set()
        if self._pool is not None:
            self._pool.tell_all(channel.STOPPING)
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._listener.close()
        self._listener = None
        deadline = time.monotonic() + (self.settings.shutdown_grace_s if grace_s is None else grace_s)
        while self._open() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self._open()
        for conn in left:
            if isinstance(conn, Connection):
                logger.warning("shutdown: aborting an association after the grace period")
                await asyncio.to_thread(conn.abort)
        if self._pool is not None and any(isinstance(c, _Remote) for c in left):
            logger.warning("shutdown: aborting the receiver processes' associations after the grace period")
            self._pool.tell_all(channel.ABORT)
        joins_end = time.monotonic() + 5.0
        for conn in self._open():
            if conn.thread is not None and conn.thread.ident is not None:
                await asyncio.to_thread(conn.thread.join, max(0.0, joins_end - time.monotonic()))
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
        logger.info("DICOM SCP stopped")

    def _open(self) -> list[Connection | _Remote]:
        with self._lock:
            return list(self._connections)

    # -- the lease of every association, served here or in a receiver process -----------------------
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
        handed = self._pool.hand_over(sock) if self._pool is not None else None
        if handed is not None:
            sock.close()                               # the receiver process has its own descriptor now
            self._watch_remote(_Remote(*handed))
        else:
            self._serve_here(sock, peer)

    def _serve_here(self, sock: socket.socket, peer: object) -> None:
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
            self._server.serve(conn, _LocalLease(self))
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.sock.close()

    # -- an association in a receiver process: its channel, on a thread here ----------------------------
    def _watch_remote(self, remote: _Remote) -> None:
        with self._lock:
            self._connections.add(remote)
        remote.thread = threading.Thread(target=self._remote, args=(remote,), name="dicom-channel", daemon=True)
        try:
            remote.thread.start()
        except BaseException:
            self._remote_ended(remote, established=False)
            raise

    def _remote(self, remote: _Remote) -> None:
        """Answer the receiver process's requests for one association until it closes the channel: count it
        (against max_associations, with this process's own), commit its rows."""
        established = False
        try:
            while True:
                message = remote.chan.recv(channel.MAX_MESSAGE)
                if not message:
                    return
                if message == channel.ESTABLISH and not established:
                    established = self.establish()
                    reply = channel.YES if established else channel.NO
                elif message[:1] == channel.ROW and established:
                    reply = self._remote_row(message)
                else:
                    logger.error("receiver process %d sent an unexpected message; its association is dropped",
                                 remote.helper.index)
                    return
                remote.chan.send(reply)
        except OSError as exc:
            logger.warning("receiver process %d: channel of an association failed (%s)", remote.helper.index,
                           exc.strerror or type(exc).__name__)
        finally:
            self._remote_ended(remote, established=established)

    def _remote_ended(self, remote: _Remote, *, established: bool) -> None:
        if established:
            self.release()
        with self._lock:
            self._connections.discard(remote)
        if self._pool is not None:
            self._pool.done(remote.helper)
        remote.chan.close()

    def _remote_row(self, message: bytes) -> bytes:
        try:
            rec = channel.record_of(message)
        except channel.BadMessage as exc:
            logger.error("receiver process sent a bad row (%s); the instance is not acknowledged", exc)
            return channel.failure_message("bad row message")
        if not rec.path.startswith(self._spool_prefix):
            logger.error("receiver process sent a row for a file outside the spool; not recorded")
            return channel.failure_message("file outside the spool")
        try:
            outcome = self.record(rec)
        except Exception as exc:                       # the file is safe but unrecorded: the sender is told so
            logger.error("C-STORE %s: could not record the instance (%s)", rec.sop_instance_uid, type(exc).__name__)
            return channel.failure_message("job store unavailable")
        return channel.DUPLICATE if outcome.duplicate else channel.NEW
