"""The worker: claims queued jobs, runs them on the compute backend, records results and states."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import torch

from ai.errors import ModelUnavailable, UnsuitableSeries
from node.bridge import LoopBridge
from node.compute.pipeline import Backend, Requeue
from node.jobs.records import JobView
from node.jobs.states import NO_DESTINATION, JobState
from node.jobs.store import JobStore

logger = logging.getLogger(__name__)

STORE_RETRY_S = 1.0          # how often a worker tries an unreachable job store again


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ProgressReporter:
    """Thread-safe progress callback: throttled progress events, handed to the loop through the bridge."""

    def __init__(self, bridge: LoopBridge, store: JobStore, job_id: str, min_step: float = 0.05,
                 min_interval_s: float = 0.5) -> None:
        self._bridge, self._store, self._job_id = bridge, store, job_id
        self._last = (-1.0, "", 0.0)
        self._min_step, self._min_interval_s = min_step, min_interval_s

    def __call__(self, fraction: float, stage: str) -> None:
        last_f, last_stage, last_t = self._last
        now = time.monotonic()
        if stage == last_stage and (fraction - last_f < self._min_step or now - last_t < self._min_interval_s):
            return
        self._last = (fraction, stage, now)
        self._bridge.submit(self._emit, round(min(max(fraction, 0.0), 1.0), 3), stage)

    async def _emit(self, fraction: float, stage: str) -> None:
        try:
            await self._store.progress(self._job_id, fraction, stage)
        except Exception:           # progress is best effort; the state change is what counts
            logger.debug("progress event for job %s dropped", self._job_id, exc_info=True)


class Worker:
    """Owns one claim-run-record loop: `queued -> running -> sending` (or `failed` with the reason, or back
    to `queued` when the backend lost the job, at most `max_attempts` runs in all); jobs with no destination go
    on to `done`."""

    def __init__(self, store: JobStore, backend: Backend, results_root: Path, poll_s: float = 5.0,
                 max_attempts: int = 2) -> None:
        self._store, self._backend = store, backend
        self._results_root = results_root
        self._poll_s = poll_s
        self._max_attempts = max_attempts
        self.inference_seconds = 0.0

    async def run(self) -> None:
        bell = self._store.bus.doorbell()
        while True:
            bell.clear()             # before the claim, so a job queued meanwhile rings it again
            try:
                claimed = await self._store.claim_next()
            except Exception as exc:   # edge: the job store is unreachable (a database restart); try again
                logger.warning("worker: cannot claim a job (%s); retrying", _reason(exc))
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if claimed is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(bell.wait(), timeout=self._poll_s)
                continue
            try:
                await self.process(claimed[0])
            except Exception as exc:   # edge: the store failed while recording the outcome
                logger.warning("job %s: the job store failed while recording it (%s); requeueing it",
                               claimed[0].id, _reason(exc))
                await self._requeue_when_the_store_is_back(claimed[0])

    async def _requeue_when_the_store_is_back(self, job: JobView) -> None:
        """Back to the queue (or left as it is, if it got further), retrying until the store answers."""
        while True:
            try:
                await self._store.advance(job.id, JobState.QUEUED, "requeued: the job store was unavailable")
                return
            except Exception as exc:   # edge: still unreachable
                logger.debug("job %s: requeue failed (%s); retrying", job.id, _reason(exc))
                await asyncio.sleep(STORE_RETRY_S)

    async def process(self, job: JobView) -> None:
        progress = ProgressReporter(LoopBridge(asyncio.get_running_loop()), self._store, job.id)
        try:
            inputs = {uid: await self._store.instance_paths(job.intake_id, uid) for uid in job.series_instance_uids}
            outcome = await self._backend.run(job, inputs, self._results_root / job.id, progress)
        except Requeue as exc:
            await self._requeue(job, str(exc))
            return
        except asyncio.CancelledError:      # the node is stopping: the job goes back, and this run does not count
            await asyncio.shield(self._store.give_back(job.id, "requeued: the node stopped while it was running"))
            raise
        except (UnsuitableSeries, ModelUnavailable) as exc:
            await self._fail(job, str(exc))
            return
        except torch.cuda.OutOfMemoryError:
            await self._fail(job, "the GPU ran out of memory on this series; retry later or run on a larger "
                                  "GPU / on CPU ([compute] device)")
            return
        except Exception as exc:     # edge: whatever happened, the job ends failed with the reason
            logger.exception("job %s: inference failed", job.id)
            await self._fail(job, f"internal error during inference: {type(exc).__name__}: {str(exc)[:300]}")
            return
        self.inference_seconds += outcome.inference_s
        await self._store.set_results(job.id, outcome.results)
        await self._store.advance(job.id, JobState.SENDING, outcome.detail)
        if not job.destinations:
            await self._store.advance(job.id, JobState.DONE, NO_DESTINATION)

    async def _requeue(self, job: JobView, reason: str) -> None:
        """Back to the queue after a lost run (a dead model process or Ray actor), or failed after the last one."""
        if job.attempts >= self._max_attempts:
            await self._fail(job, f"{reason}; gave up after {job.attempts} attempt(s) ([compute] max_attempts)")
        else:
            await self._store.advance(job.id, JobState.QUEUED, f"requeued: {reason}")

    async def _fail(self, job: JobView, reason: str) -> None:
        logger.warning("job %s failed: %s", job.id, reason)
        await self._store.advance(job.id, JobState.FAILED, reason)
