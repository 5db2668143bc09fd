"""The receiver processes of the main process (`[dicom] receiver_processes`): started, handed connections,
watched, and started again when one dies. The associations themselves are node/intake/receiver_process.py's;
what crosses between the processes is node/intake/channel.py's."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from node.intake import channel

logger = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 2          # a hand-over to a process that does not read its control socket fails after this
_STOP_WAIT_S = 5.0           # for a process to exit once its control socket is closed, before it is killed
_QUICK_DEATH_S = 10.0        # a process that dies sooner than this after its start is restarted ever more slowly
_MAX_BACKOFF_S = 30.0


@dataclass(eq=False)
class Helper:
    """One receiver process slot: the process now in it, its control socket, the connections it serves."""
    index: int
    proc: subprocess.Popen[bytes] | None = None
    control: socket.socket | None = None
    ready: bool = False
    open: int = 0
    send_lock: threading.Lock = field(default_factory=threading.Lock)


def _package_root() -> str:
    """The folder holding the node package, for the child's module path."""
    return str(Path(__file__).resolve().parents[2])


def _send_timeout(sock: socket.socket, seconds: int) -> None:
    """A timeout on sends only; the supervisor's receive on the same socket keeps blocking."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))


class ReceiverPool:
    """Owns the receiver processes: `count` slots, each kept filled by a supervising thread."""

    def __init__(self, count: int, config: str) -> None:
        self._config = config
        self._helpers = [Helper(i) for i in range(count)]
        self._lock = threading.Lock()                  # guards each helper's ready and open
        self._closing = threading.Event()
        self._supervisors: list[threading.Thread] = []

    def start(self) -> None:
        for helper in self._helpers:
            thread = threading.Thread(target=self._supervise, args=(helper,), name=f"receiver-{helper.index}",
                                      daemon=True)
            self._supervisors.append(thread)
            thread.start()

    def ready_count(self) -> int:
        with self._lock:
            return sum(h.ready for h in self._helpers)

    def hand_over(self, sock: socket.socket) -> tuple[Helper, socket.socket] | None:
        """Pass an accepted connection to the ready process serving the fewest, with a new channel; the main
        process's end of that channel, or None when no process can take it (the caller serves it itself)."""
        with self._lock:
            ready = [h for h in self._helpers if h.ready]
            if not ready:
                return None
            helper = min(ready, key=lambda h: h.open)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self._lock:
            helper.open += 1
        try:
            with helper.send_lock:
                if helper.control is None:
                    raise ConnectionError("receiver process gone")
                socket.send_fds(helper.control, [channel.CONNECTION], [sock.fileno(), theirs.fileno()])
        except OSError as exc:
            logger.warning("receiver process %d could not take a connection (%s); restarting it", helper.index,
                           type(exc).__name__)
            with self._lock:
                helper.open -= 1
                helper.ready = False
            self._shut(helper)                        # its supervisor then reaps it and starts a new one
            ours.close()
            return None
        finally:
            theirs.close()
        return helper, ours

    def done(self, helper: Helper) -> None:
        """One of `helper`'s connections has ended (its channel closed)."""
        with self._lock:
            helper.open -= 1

    def tell_all(self, message: bytes) -> None:
        """channel.STOPPING or channel.ABORT to every process now running."""
        for helper in self._helpers:
            with helper.send_lock, contextlib.suppress(OSError):
                if helper.control is not None:
                    helper.control.send(message)

    def close(self) -> None:
        """Close every control socket (each process aborts what it still serves and exits), wait for them;
        kill one that does not exit in time."""
        self._closing.set()
        for helper in self._helpers:
            self._shut(helper)
        deadline = time.monotonic() + _STOP_WAIT_S + 1.0
        for thread in self._supervisors:
            thread.join(max(0.0, deadline - time.monotonic()))

    @staticmethod
    def _shut(helper: Helper) -> None:
        """Shut the control socket: the process sees EOF (aborts and exits), the supervisor's read ends."""
        with helper.send_lock:
            if helper.control is not None:
                with contextlib.suppress(OSError):
                    helper.control.shutdown(socket.SHUT_RDWR)

    # -- one slot, on its supervising thread --------------------------------------------------------
    def _supervise(self, helper: Helper) -> None:
        backoff = 1.0
        while not self._closing.is_set():
            started = time.monotonic()
            try:
                self._spawn(helper)
            except OSError as exc:
                logger.error("receiver process %d could not be started (%s); trying again in %.0f s", helper.index,
                             exc.strerror or type(exc).__name__, backoff)
            else:
                self._watch(helper)
                code = self._reap(helper)
                if self._closing.is_set():
                    return
                logger.error("receiver process %d (pid %d) ended with %s; its associations were cut off, nothing "
                             "they had acknowledged is lost; starting a new one", helper.index,
                             helper.proc.pid if helper.proc else 0, _exit_text(code))
            backoff = min(backoff * 2, _MAX_BACKOFF_S) if time.monotonic() - started < _QUICK_DEATH_S else 1.0
            self._closing.wait(backoff)

    def _spawn(self, helper: Helper) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.intake.receiver_process", "--control", str(theirs.fileno()),
                 "--config", self._config], pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _send_timeout(ours, _SEND_TIMEOUT_S)
        with helper.send_lock:
            helper.proc, helper.control = proc, ours
            if self._closing.is_set():                # close() ran while this one was starting: end it too
                with contextlib.suppress(OSError):
                    ours.shutdown(socket.SHUT_RDWR)

    def _watch(self, helper: Helper) -> None:
        """Until the process closes its control socket (it exited or died): mark it ready when it says so."""
        assert helper.control is not None
        while True:
            try:
                message = helper.control.recv(16)
            except OSError:
                message = b""
            if not message:
                break
            if message == channel.READY:
                with self._lock:
                    helper.ready = True
                logger.info("receiver process %d (pid %d) ready", helper.index, helper.proc.pid if helper.proc else 0)
        with self._lock:
            helper.ready = False

    def _reap(self, helper: Helper) -> int | None:
        assert helper.proc is not None
        try:
            code = helper.proc.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            logger.warning("receiver process %d did not exit; killed", helper.index)
            helper.proc.kill()
            code = helper.proc.wait()
        with helper.send_lock:
            if helper.control is not None:
                helper.control.close()
                helper.control = None
        return code


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {-code}"
    return f"exit status {code}"
