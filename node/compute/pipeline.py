"""One job's work, the same wherever it runs: load the series, segment, measure, write the results.

JobPipeline is synchronous and runs in a model process of the node (node/compute/process.py, the default)
or inside a Ray actor (node/compute/ray_backend.py); the Worker sees either through the Backend Protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ai.registry import ModelRegistry
from ai.segmenter import ModelCard
from node.compute.series import Progress, SeriesResult, segment_series
from node.jobs.records import JobResults, JobView

ResultWriter = Callable[[JobView, Path, list[SeriesResult], ModelCard], JobResults]


class Requeue(Exception):
    """The job could not run here for a reason that is not the job's fault (its model process or Ray actor died)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    results: JobResults
    detail: str
    inference_s: float


def ready_detail(results: list[SeriesResult], seconds: float) -> str:
    parts = [f"{m.name} {m.volume_ml:.0f} mL" for r in results for m in r.measurements]
    return f"segmented in {seconds:.1f} s: " + (", ".join(parts) or "nothing found")


class JobPipeline:
    """Model + series -> results on disk. Synchronous; runs in a model process or in a Ray actor."""

    def __init__(self, registry: ModelRegistry, writers: Sequence[ResultWriter], max_job_memory_mb: int = 0) -> None:
        self.registry = registry
        self.writers = list(writers)
        self.max_job_memory_mb = max_job_memory_mb     # 0: no check

    def run(self, job: JobView, inputs: dict[str, Sequence[str | Path | bytes]], folder: Path,
            progress: Progress) -> Outcome:
        started = time.monotonic()
        try:
            model = self.registry.get(job.model)
            results = []
            n = len(job.series_instance_uids)
            for i, uid in enumerate(job.series_instance_uids):
                def part(f: float, stage: str, i: int = i) -> None:
                    progress((i + f) / n, (f"series {i + 1}/{n}: " if n > 1 else "") + stage)
                results.append(segment_series(uid, inputs[uid], model, part, self.max_job_memory_mb))
            inference_s = time.monotonic() - started
            written = JobResults()
            for writer in self.writers:
                written = written.merged(writer(job, folder, results, model.card))
            return Outcome(written, ready_detail(results, time.monotonic() - started), inference_s)
        finally:
            if self.registry.device.type == "cuda":
                torch.cuda.empty_cache()


class Backend(Protocol):
    """Where jobs run: ProcessBackend (model processes of this node) or RayBackend (Ray actors); the Worker
    depends on this."""

    device: torch.device

    async def run(self, job: JobView, inputs: dict[str, list[str]], folder: Path, progress: Progress) -> Outcome:
        """Raises UnsuitableSeries / ModelUnavailable (the job fails), Requeue (it goes back to the queue)."""
        ...

    async def close(self) -> None: ...

    def placement(self) -> str:
        """Where jobs run, in words for the admin (status page, /api/health)."""
        ...
