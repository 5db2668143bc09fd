"""Jobs in model processes: one spawned process per worker slot, supervised by the node.

A model that runs out of memory, segfaults in a native library or trips a CUDA driver fault kills its
own process, never the node's: the node keeps its DICOM port, API and event stream, starts a fresh
process and hands the job back to the Worker (`ModelProcessDied`, a Requeue) with the reason.

What crosses the process boundary is small: the job, the spool paths of its series and the results
folder go in; progress tuples and the Outcome (file names, measurements) come back. The volume, the
model and the label maps live only in the model process, which keeps its model loaded between jobs.
Processes are spawned, never forked: the node has threads (pynetdicom, the SQLite writer, executors).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ai.bundle import SlidingWindow
from ai.device import choose_device
from ai.registry import ModelRegistry
from node.compute.memory import return_freed_memory_promptly
from node.compute.pipeline import JobPipeline, Outcome, Progress, Requeue, ResultWriter
from node.compute.slots import FreeSlots
from node.jobs.records import JobView

logger = logging.getLogger(__name__)
_CONTEXT = multiprocessing.get_context("spawn")


class ModelProcessDied(Requeue):
    """The model process running the job died (killed, crashed); a fresh one has been started."""


@dataclass(frozen=True, slots=True)
class ModelProcessSpec:
    """What a model process needs to build its pipeline (pickled once, at spawn)."""

    models_dir: Path
    device: str
    window: SlidingWindow | None
    writers: tuple[ResultWriter, ...]
    max_job_memory_mb: int
    log_level: int = logging.INFO


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, in words an admin can act on."""
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        sig = -exitcode
        hint = {signal.SIGKILL: "out of memory?", signal.SIGSEGV: "segmentation fault in native code",
                signal.SIGABRT: "aborted by a native library", signal.SIGBUS: "bus error"}.get(sig)
        try:
            hint = hint or signal.Signals(sig).name
        except ValueError:
            hint = hint or "unknown signal"
        return f"killed by signal {sig} ({hint})"
    return f"exited with code {exitcode}"


# -- in the model process -----------------------------------------------------------------------------
def _exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """A model process never outlives its node (a node killed with SIGKILL cannot stop it)."""
    while True:
        time.sleep(interval_s)
        if os.getppid() != parent_pid:
            os._exit(1)


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {str(exc)[:300]}")


def serve(conn: Connection, spec: ModelProcessSpec, parent_pid: int) -> None:
    """The model process's main loop: one job at a time from `conn`, until the node closes it."""
    logging.basicConfig(level=spec.log_level, format="%(asctime)s %(levelname)s [model %(process)d] %(name)s: "
                                                     "%(message)s")
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    return_freed_memory_promptly()
    registry = ModelRegistry(spec.models_dir, choose_device(spec.device), spec.window)
    pipeline = JobPipeline(registry, spec.writers, max_job_memory_mb=spec.max_job_memory_mb)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        job, inputs, folder = request

        def progress(fraction: float, stage: str) -> None:
            conn.send(("progress", fraction, stage))
        try:
            conn.send(("done", pipeline.run(job, inputs, folder, progress)))
        except Exception as exc:            # edge: the node turns it into the job's reason
            logger.warning("job %s: %s: %s", job.id, type(exc).__name__, str(exc)[:300],
                           exc_info=not isinstance(exc, (ValueError, LookupError)))
            conn.send(("error", _portable(exc)))


# -- in the node ----------------------------------------------------------------------------------------
class ModelProcess:
    """One worker slot's process; `run_job` blocks (call it on a thread) and restarts a dead process."""

    def __init__(self, spec: ModelProcessSpec, slot: int) -> None:
        self._spec, self._slot = spec, slot
        self._process: Any = None
        self._conn: Connection | None = None
        self._closed = False

    def start(self) -> None:
        ours, theirs = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(target=serve, args=(theirs, self._spec, os.getpid()),
                                         name=f"segnode-model-{self._slot}", daemon=True)
        self._process.start()
        theirs.close()
        self._conn = ours
        logger.info("model process %d started for worker slot %d", self._process.pid, self._slot)

    def run_job(self, job: JobView, inputs: dict[str, list[str]], folder: Path, progress: Progress) -> Outcome:
        if self._process is None or not self._process.is_alive():
            self._replace()
        assert self._conn is not None
        try:
            self._conn.send((job, inputs, folder))
            while True:
                kind, *rest = self._conn.recv()
                if kind == "progress":
                    progress(*rest)
                elif kind == "done":
                    return rest[0]             # type: ignore[no-any-return]
                else:
                    raise rest[0]
        except (EOFError, OSError, BrokenPipeError):
            raise self._died(job) from None

    def _died(self, job: JobView) -> ModelProcessDied:
        assert self._process is not None
        self._process.join(5)
        reason = f"the model process died: {describe_exit(self._process.exitcode)}"
        logger.warning("job %s: %s (pid %s)", job.id, reason, self._process.pid)
        if not self._closed:
            self._replace()
        return ModelProcessDied(reason)

    def _replace(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self.start()

    def close(self) -> None:
        """Stop the process (a job it runs is abandoned; the Worker gives it back to the queue)."""
        self._closed = True
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
        if self._process is not None:
            self._process.join(2)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)


class ProcessBackend:
    """The default backend ([compute] backend = "local"): jobs run in `workers` model processes of this
    node, one job each at a time."""

    def __init__(self, spec: ModelProcessSpec, workers: int) -> None:
        self.device = choose_device(spec.device)
        self._slots = FreeSlots(workers)
        self.processes = [ModelProcess(spec, slot) for slot in range(workers)]
        for p in self.processes:
            p.start()

    async def run(self, job: JobView, inputs: dict[str, list[str]], folder: Path, progress: Progress) -> Outcome:
        async with self._slots.hold() as slot:
            return await asyncio.to_thread(self.processes[slot].run_job, job, inputs, folder, progress)

    def placement(self) -> str:
        n = len(self.processes)
        return f"in {n} model process{'es' if n > 1 else ''} of this node on {self.device}"

    async def close(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(p.close) for p in self.processes))
