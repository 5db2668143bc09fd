"""Jobs on an executor thread of the calling process (tests and tools; the node runs jobs in model
processes, node/compute/process.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from pathlib import Path

from node.compute.pipeline import JobPipeline, Outcome, Progress
from node.jobs.records import JobView


class LocalBackend:
    """Runs the JobPipeline on an executor thread of this process (no isolation: a crash takes the caller)."""

    def __init__(self, pipeline: JobPipeline, executor: Executor) -> None:
        self.pipeline = pipeline
        self.executor = executor
        self.device = pipeline.registry.device

    async def run(self, job: JobView, inputs: dict[str, list[str]], folder: Path, progress: Progress) -> Outcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.pipeline.run, job, inputs, folder, progress)

    async def close(self) -> None:
        return None

    def placement(self) -> str:
        return f"in this process on {self.device}"
