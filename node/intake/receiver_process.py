"""A receiver process (`[dicom] receiver_processes` > 0): serves the associations the main process hands it.

The main process owns the DICOM port, accepts each connection and passes it here with its channel
(node/intake/channel.py). This process reads the association, runs the door's checks and durable spool
writes on its own threads and its own interpreter lock, and has the main process commit each row (and count
the association) over the channel; only then does it answer Success. It keeps no state of its own: when the
main process goes away it aborts its associations and exits, and the main process starts a new one if it died.

Run by the main process as `python -m node.intake.receiver_process --control FD --config JSON`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from node.errors import StoreUnavailable
from node.intake import channel
from node.intake.associations import AssociationServer, Connection
from node.intake.door import Door
from node.intake.image_check import ImageLimits
from node.intake.spool import Spool
from node.jobs.records import InstanceRecord, RecordOutcome
from node.settings import DicomSettings

logger = logging.getLogger(__name__)

_REPLY_MARGIN_S = 5.0          # beyond record_timeout_s, which the main process keeps itself


def config_of(settings: DicomSettings, spool: Spool, log_level: str) -> str:
    """What a receiver process needs to know, as its --config argument."""
    return json.dumps({"dicom": dataclasses.asdict(settings), "spool": str(spool.root),
                       "min_free_bytes": spool.min_free_bytes, "log_level": log_level})


def settings_of(values: dict[str, Any]) -> DicomSettings:
    return DicomSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class ChannelLease:
    """An association's lease held by the main process: it counts the association and commits the rows."""

    def __init__(self, chan: socket.socket, reply_timeout_s: float) -> None:
        self._chan = chan
        self._chan.settimeout(reply_timeout_s)
        self._broken = False

    def establish(self) -> bool:
        try:
            return self._ask(channel.ESTABLISH) == channel.YES
        except OSError as exc:
            logger.warning("association refused: the node's main process did not answer (%s)", type(exc).__name__)
            return False

    def record(self, rec: InstanceRecord) -> RecordOutcome:
        reply = self._ask(channel.row_message(rec))
        if reply in (channel.NEW, channel.DUPLICATE):
            return RecordOutcome(intake_id="", duplicate=reply == channel.DUPLICATE)
        raise StoreUnavailable(reply[1:].decode(errors="replace") or "row not committed")

    def release(self) -> None:
        """Nothing to send: the main process stops counting the association when its channel closes."""

    def close(self) -> None:
        self._chan.close()

    def _ask(self, message: bytes) -> bytes:
        """One request, one reply. After a timeout or error the channel is out of step, so it is not used again
        (every later row fails: the sender is answered 0xA700 and sends again)."""
        if self._broken:
            raise StoreUnavailable("channel to the node's main process broken")
        try:
            self._chan.send(message)
            reply = self._chan.recv(channel.MAX_MESSAGE)
        except BaseException:
            self._broken = True
            raise
        if not reply:
            self._broken = True
            raise StoreUnavailable("the node's main process has gone")
        return reply


class ReceiverProcess:
    """Takes connections from the control socket and serves each on its own thread until the main process
    closes the control socket (or dies), then aborts what is left."""

    def __init__(self, control: socket.socket, server: AssociationServer) -> None:
        self._control = control
        self._server = server
        self._lock = threading.Lock()
        self._connections: dict[Connection, threading.Thread] = {}     # guarded by _lock
        self._reply_timeout_s = server.settings.record_timeout_s + _REPLY_MARGIN_S

    def run(self) -> None:
        try:
            self._control.send(channel.READY)
            while True:
                try:
                    message, fds, _flags, _address = socket.recv_fds(self._control, 16, 2)
                except OSError:
                    break
                for fd in fds:
                    os.set_inheritable(fd, False)
                if message == channel.CONNECTION and len(fds) == 2:
                    self._start(fds[0], fds[1])
                    continue
                for fd in fds:                       # edge: descriptors with a message that takes none
                    os.close(fd)
                if not message:
                    break
                if message == channel.STOPPING:
                    self._server.door.stopping.set()
                elif message == channel.ABORT:
                    self._abort_all()
        finally:
            self._end()

    def _start(self, sock_fd: int, chan_fd: int) -> None:
        """Serve the connection on a new thread; if that cannot be done, close both (the main process sees
        the channel close and the sender the connection)."""
        sock, chan = socket.socket(fileno=sock_fd), socket.socket(fileno=chan_fd)
        conn: Connection | None = None
        try:
            try:
                peer: object = sock.getpeername()
            except OSError:
                peer = "(gone)"
            conn = self._server.connection(sock, peer)
            lease = ChannelLease(chan, self._reply_timeout_s)
            thread = threading.Thread(target=self._association, args=(conn, lease), name="dicom-association",
                                      daemon=True)
            with self._lock:
                self._connections[conn] = thread
            thread.start()
        except Exception as exc:                     # edge: e.g. no more threads: this connection, not the process
            logger.error("a connection could not be served (%s); closed", type(exc).__name__)
            if conn is not None:
                with self._lock:
                    self._connections.pop(conn, None)
            sock.close()
            chan.close()

    def _association(self, conn: Connection, lease: ChannelLease) -> None:
        try:
            self._server.serve(conn, lease)
        finally:
            with self._lock:
                self._connections.pop(conn, None)
            conn.sock.close()
            lease.close()                            # after the socket: the main process counts it closed

    def _abort_all(self) -> None:
        with self._lock:
            open_now = list(self._connections)
        for conn in open_now:
            logger.warning("aborting the association from %s: the node is stopping", conn.peer)
            conn.abort()

    def _end(self) -> None:
        """The control socket closed: the main process stopped us or died. Nothing is acknowledged without
        it (it commits the rows), so abort what is still open and go."""
        self._server.door.stopping.set()
        self._abort_all()
        with self._lock:
            threads = list(self._connections.values())
        for thread in threads:
            thread.join(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.intake.receiver_process")
    parser.add_argument("--control", type=int, required=True, help="the control socket's file descriptor")
    parser.add_argument("--config", required=True, help="JSON, as written by config_of()")
    args = parser.parse_args(argv)
    # The main process ends this one by closing the control socket (and kills it if it lingers), after its own
    # grace period: a SIGTERM or Ctrl-C sent to the whole process group must not cut the associations first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = json.loads(args.config)
    logging.basicConfig(level=config["log_level"].upper(),
                        format="%(asctime)s %(levelname)s %(name)s[receiver %(process)d]: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    settings = settings_of(config["dicom"])
    spool = Spool(Path(config["spool"]), int(config["min_free_bytes"]), shared=True)
    door = Door(spool, ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames))
    control = socket.socket(fileno=args.control)
    ReceiverProcess(control, AssociationServer(settings, door)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
