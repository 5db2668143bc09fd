"""The Ray backend on a local Ray with 2 CPUs: a job runs to done on an actor; a dead actor requeues its job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import ray

from node.app import Node
from node.compute.ray_backend import RayBackend
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.peers.helpers import async_wait_until, scaled
from tests.peers.scu import send
from tests.support import running_node

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


@pytest.fixture
async def ray_node(tmp_path: Path):
    async with running_node(tmp_path, compute__backend="ray", compute__ray_num_cpus="2") as node:
        yield node
    assert not ray.is_initialized()


async def test_a_job_runs_to_done_on_a_ray_actor(ray_node: Node) -> None:
    assert isinstance(ray_node.backend, RayBackend)
    ds = phantom_datasets(make_phantom(slices=16, rows=64, seed=1), SeriesIds())
    await send(ray_node, ds)
    job = (await async_wait_until(lambda: ray_node.store.list_jobs(state="done"), 90, "a done job"))[0]
    kinds = sorted(f.kind for f in job.results.files)
    assert kinds == ["seg", "sr"]
    folder = ray_node.settings.node.data_path / "results" / job.id
    assert all((folder / f.file).exists() for f in job.results.files)
    actor_pid = await ray_node.backend.actors[0].pid.remote()
    import os
    assert actor_pid != os.getpid()                      # it really ran in another process
    assert await ray_node.backend.actors[0].threads.remote() == 2     # both local CPUs, not Ray's default 1
    assert (await ray_node.health())["compute"]["placement"] == \
        "a local Ray (2 CPUs, 0 GPUs): 1 actor(s) of 2 CPU(s), 0 GPU(s)"


async def test_a_dead_actor_puts_its_job_back_in_the_queue(ray_node: Node) -> None:
    backend = ray_node.backend
    assert isinstance(backend, RayBackend)
    await backend.actors[0].pid.remote()                # the actor is up (and its model not yet loaded)
    ds = phantom_datasets(make_phantom(slices=80, rows=256, seed=2), SeriesIds())
    sub = ray_node.bus.subscribe()
    try:
        await send(ray_node, ds)
        async with asyncio.timeout(scaled(60)):          # the actor has the job: kill it mid-inference
            while (event := await sub.queue.get()).detail != "sent to a Ray actor":
                pass
    finally:
        sub.close()
    ray.kill(backend.actors[0])
    job = await ray_node.store.get(event.job_id)
    await async_wait_until(lambda: ray_node.store.list_jobs(state="done"), 120, "the job to finish on a new actor")
    states = [(e.state, e.detail) for e in await ray_node.store.events(job.id)]
    assert any(s == "queued" and "Ray actor running it died" in d for s, d in states), states
    assert [s for s, _ in states].count("running") >= 2


async def test_one_actor_per_gpu_on_a_ray_without_gpus_is_a_clear_start_failure(tmp_path: Path) -> None:
    from node.errors import ComputeUnavailable
    with pytest.raises(ComputeUnavailable, match="the local Ray has no GPU for an actor of 1 GPU"):
        async with running_node(tmp_path, compute__backend="ray", compute__workers="0",
                                compute__ray_gpus_per_actor="1"):
            pass
    assert not ray.is_initialized()
