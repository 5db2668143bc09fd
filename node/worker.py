"""The worker: claims queued jobs, runs inference in the executor, records results and states."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.errors import ModelUnavailable, UnsuitableSeries
from ai.segmenter import ModelCard
from node.compute import Backend, Requeue
from node.errors import InvalidTransition
from node.events import EventBus
from node.fsutil import make_dirs, write_atomic
from node.inference import SeriesResult
from node.jobs.states import JobState
from node.jobs.store import JobStore, JobView

logger = logging.getLogger(__name__)



class ProgressReporter:
    """Thread-safe progress callback: throttled job events, scheduled on the loop from executor threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, store: JobStore, bus: EventBus, job_id: str,
                 min_step: float = 0.05, min_interval_s: float = 0.5) -> None:
        self._loop, self._store, self._bus, self._job_id = loop, store, bus, job_id
        self._last = (-1.0, "", 0.0)
        self._min_step, self._min_interval_s = min_step, min_interval_s
        self.inference_s = 0.0

    def __call__(self, fraction: float, stage: str) -> None:
        last_f, last_stage, last_t = self._last
        now = time.monotonic()
        if stage == last_stage and (fraction - last_f < self._min_step or now - last_t < self._min_interval_s):
            return
        self._last = (fraction, stage, now)
        asyncio.run_coroutine_threadsafe(self._emit(round(min(max(fraction, 0.0), 1.0), 3), stage), self._loop)

    def part(self, index: int, count: int) -> Callable[[float, str], None]:
        prefix = f"series {index + 1}/{count}: " if count > 1 else ""
        return lambda f, stage: self((index + f) / count, prefix + stage)

    async def _emit(self, fraction: float, stage: str) -> None:
        try:
            self._bus.publish([await self._store.progress(self._job_id, fraction, stage)])
        except Exception:           # progress is best effort; the state change is what counts
            logger.debug("progress event for job %s dropped", self._job_id, exc_info=True)


def write_basic_results(job: JobView, folder: Path, results: list[SeriesResult], card: ModelCard) -> dict[str, Any]:
    """Label maps (npz) and measurements (JSON), written atomically into the job's folder."""
    make_dirs(folder)
    series = []
    for r in results:
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=r.labels, spacing_mm=np.array(r.volume.spacing_mm),
                            affine=r.volume.affine)
        name = f"labels-{r.series_instance_uid}.npz"
        write_atomic(folder / name, buf.getvalue())
        series.append({"series_instance_uid": r.series_instance_uid, "labels": name,
                       "shape": list(r.labels.shape),
                       "measurements": [m.as_dict() for m in r.measurements]})
    summary = {"model": card.name, "model_version": card.version, "series": series}
    write_atomic(folder / "measurements.json", json.dumps(summary, indent=1).encode())
    return summary


class Worker:
    def __init__(self, store: JobStore, backend: Backend, bus: EventBus, results_root: Path,
                 poll_s: float = 5.0) -> None:
        self._store, self._backend, self._bus = store, backend, bus
        self._results_root = results_root
        self._poll_s = poll_s
        self.inference_seconds = 0.0
        self.jobs_finished = 0

    async def run(self) -> None:
        bell = self._bus.doorbell()
        while True:
            bell.clear()             # before the claim, so a job queued meanwhile rings it again
            claimed = await self._store.claim_next()
            if claimed is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(bell.wait(), timeout=self._poll_s)
                continue
            job, event = claimed
            self._bus.publish([event])
            await self.process(job)

    async def process(self, job: JobView) -> None:
        loop = asyncio.get_running_loop()
        progress = ProgressReporter(loop, self._store, self._bus, job.id)
        try:
            inputs = {uid: await self._store.instance_paths(job.intake_id, uid) for uid in job.series_instance_uids}
            outcome = await self._backend.run(job, inputs, self._results_root / job.id, progress)
        except Requeue as exc:
            await self._advance(job, JobState.QUEUED, f"requeued: {exc}")
            return
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
        await self._store.set_results(job.id, outcome.summary)
        await self._advance(job, JobState.SENDING, outcome.detail)
        if not job.destinations:
            await self._advance(job, JobState.DONE, "no destination configured: results kept in the outbox",
                                {"delivered": {}})
        self.jobs_finished += 1

    async def _advance(self, job: JobView, to: JobState, detail: str, data: dict[str, Any] | None = None) -> None:
        try:
            self._bus.publish([await self._store.transition(job.id, to, detail=detail, data=data)])
        except InvalidTransition:
            logger.info("job %s changed state while running (cancelled?); not moved to %s", job.id, to.value)

    async def _fail(self, job: JobView, reason: str) -> None:
        logger.warning("job %s failed: %s", job.id, reason)
        await self._advance(job, JobState.FAILED, reason)
