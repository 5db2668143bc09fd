"""Jobs on Ray actors: the node stays the DICOM endpoint and ships each series' bytes to an actor (so the
cluster needs no shared filesystem), which runs the same JobPipeline and sends the result files back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ai.bundle import SlidingWindow
from ai.device import choose_device
from ai.registry import ModelRegistry
from node.compute.memory import return_freed_memory_promptly
from node.compute.pipeline import JobPipeline, Outcome, Progress, Requeue, ResultWriter
from node.compute.slots import FreeSlots
from node.errors import ComputeUnavailable
from node.fsutil import make_dirs, write_atomic
from node.jobs.records import JobView
from node.settings import ray_address_parts

logger = logging.getLogger(__name__)


def _actor_class() -> Any:
    import ray

    @ray.remote
    class SegnodeActor:
        """One model loaded once per actor; gets series bytes, returns result files as bytes."""

        def __init__(self, models_dir: str, device: str, window: SlidingWindow | None,
                     writers: Sequence[ResultWriter]) -> None:
            return_freed_memory_promptly()
            self.pipeline = JobPipeline(ModelRegistry(Path(models_dir), choose_device(device), window), writers)

        def process(self, job: JobView, inputs: dict[str, list[bytes]]) -> tuple[Outcome, dict[str, bytes]]:
            with tempfile.TemporaryDirectory(prefix="segnode-") as tmp:
                outcome = self.pipeline.run(job, inputs, Path(tmp), lambda _f, _s: None)
                return outcome, {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}

        def pid(self) -> int:
            return os.getpid()

        def threads(self) -> int:
            return torch.get_num_threads()

    return SegnodeActor


def probe_ray_head(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one sentence, when nothing listens at the Ray head's address."""
    host, port = ray_address_parts(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ComputeUnavailable(f"cannot reach the Ray cluster at {address} ({exc.strerror or type(exc).__name__});"
                                 " start it, or fix [compute] ray_address") from None


class RayBackend:
    """Inference on Ray actors (a local `ray.init` or the cluster at `address`); the node stays the
    DICOM endpoint and keeps claiming jobs from its store."""

    def __init__(self, *, address: str, num_cpus: int, actors: int, gpus_per_actor: float, cpus_per_actor: int,
                 models_dir: Path, device: str, window: SlidingWindow | None, writers: Sequence[ResultWriter]) -> None:
        import ray
        if not ray.is_initialized():
            if address:
                probe_ray_head(address)     # ray.init itself waits minutes on an address nobody answers
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            else:
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                # "local": always our own instance, never a cluster some other program left on this host
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         logging_level=logging.WARNING)
        self._ray = ray
        # Ray sets OMP_NUM_THREADS to an actor's num_cpus, so this is also how many threads torch uses in it
        self._cls = _actor_class().options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
        self._args = (str(models_dir), device, window, list(writers))
        self.device = torch.device("cuda" if gpus_per_actor > 0 else "cpu")
        resources = ray.cluster_resources()
        if actors == 0:                    # one actor per GPU the cluster has
            actors = int(resources.get("GPU", 0) // gpus_per_actor)
            if actors == 0:
                ray.shutdown()
                raise ComputeUnavailable(f"{'the Ray cluster at ' + address if address else 'the local Ray'} has no "
                                         f"GPU for an actor of {gpus_per_actor:g} GPU(s); set [compute] workers")
        self.actors = [self._cls.remote(*self._args) for _ in range(actors)]
        self._slots = FreeSlots(actors)
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        self._placement = (f"{where} ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs): "
                           f"{actors} actor(s) of {cpus_per_actor} CPU(s), {gpus_per_actor:g} GPU(s)")
        logger.info("inference on %s", self._placement)

    async def run(self, job: JobView, inputs: dict[str, list[str]], folder: Path, progress: Progress) -> Outcome:
        async with self._slots.hold() as slot:
            try:
                payload = await asyncio.to_thread(lambda: {uid: [Path(p).read_bytes() for p in paths]
                                                           for uid, paths in inputs.items()})
                progress(0.05, "sent to a Ray actor")
                outcome, files = await self.actors[slot].process.remote(job, payload)
            except self._ray.exceptions.RayActorError as exc:
                logger.warning("job %s: Ray actor died (%s); starting a new one", job.id, type(exc).__name__)
                self.actors[slot] = self._cls.remote(*self._args)
                raise Requeue(f"the Ray actor running it died ({type(exc).__name__})") from None
        make_dirs(folder)
        for name, data in files.items():
            await asyncio.to_thread(write_atomic, folder / name, data)
        return outcome

    def placement(self) -> str:
        return self._placement

    async def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self._ray.shutdown()
