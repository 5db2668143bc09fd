"""Inference runs in model processes: killing one mid-job leaves the node up, and the job is retried
`[compute] max_attempts` times in all before it ends failed with the reason."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.app import Node
from node.compute.process import ProcessBackend, describe_exit
from node.jobs.records import JobEvent
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.builders.stall_bundle import INFERENCE_STAGE, POISON_RULES, build_stall_bundle
from tests.peers.helpers import async_wait_until, scaled
from tests.peers.scu import SCU_HANDLERS, send
from tests.support import running_node

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture
async def pnode(tmp_path: Path):
    build_stall_bundle(tmp_path / "models" / "stall")
    async with running_node(tmp_path, POISON_RULES, models__dir=str(tmp_path / "models")) as n:
        yield n


async def next_inference(sub_queue: asyncio.Queue[JobEvent]) -> JobEvent:
    """The next event saying a network is running (the stall model is then asleep inside it)."""
    async with asyncio.timeout(scaled(60)):
        while (event := await sub_queue.get()).detail != INFERENCE_STAGE:
            pass
    return event


def model_process_pids() -> set[int]:
    """This process's living children that multiprocessing spawned: the node's model processes (the test's
    node runs one worker slot and no receiver processes). A dead child not yet joined has no command line."""
    me, found = str(os.getpid()), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = stat.read_text().rsplit(")", 1)[1].split()[1]     # after "pid (comm)": state, ppid
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):                                   # a process that ended meanwhile
            continue
        if parent == me and b"spawn_main" in command:
            found.add(int(stat.parent.name))
    return found


async def node_answers(node: Node) -> None:
    """C-ECHO and /api/health, both answered."""
    assert node.scp is not None
    def echo() -> int:
        ae = AE(ae_title="ECHOER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="SEGNODE",  # type: ignore[union-attr]
                             evt_handlers=SCU_HANDLERS)
        try:
            return int(assoc.send_c_echo().Status)
        finally:
            assoc.release()
    assert await asyncio.to_thread(echo) == 0
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{node.http_port}/api/health") as rsp:
        assert rsp.status == 200 and (await rsp.json())["ok"]


async def test_a_killed_model_process_is_replaced_and_the_job_fails_after_its_last_attempt(pnode: Node) -> None:
    assert isinstance(pnode.backend, ProcessBackend)
    poison = phantom_datasets(make_phantom(slices=12, rows=32, seed=3), SeriesIds(series_description="poison"))
    sub = pnode.bus.subscribe()
    try:
        await send(pnode, poison)
        pids = []
        for _attempt in (1, 2):
            event = await next_inference(sub.queue)
            [pid] = model_process_pids()
            os.kill(pid, signal.SIGKILL)
            pids.append(pid)
            await node_answers(pnode)
    finally:
        sub.close()
    job = await async_wait_until(lambda: _failed(pnode, event.job_id), 30, "the poison job to fail")
    reason = "the model process died: killed by signal 9 (out of memory?)"
    assert job.detail.startswith(reason) and "gave up after 2 attempt(s)" in job.detail, job.detail
    states = [(e.state, e.detail) for e in await pnode.store.events(job.id)]
    assert ("queued", f"requeued: {reason}") in states
    assert [s for s, _ in states].count("running") >= 2
    fresh = model_process_pids()
    assert len(fresh) == 1 and fresh.isdisjoint(pids)          # a fresh process is ready for the next job
    good = phantom_datasets(make_phantom(slices=12, rows=32, seed=4), SeriesIds())
    await send(pnode, good)
    done = await async_wait_until(lambda: _ended(pnode, good[0].StudyInstanceUID), 60, "the next study")
    assert done.state == "done", done.detail


async def _failed(node: Node, job_id: str):
    job = await node.store.get(job_id)
    return job if job.state == "failed" else None


async def _ended(node: Node, study_instance_uid: str):
    jobs = await node.store.list_jobs(study_instance_uid=study_instance_uid)
    return jobs[0] if jobs and jobs[0].state in ("done", "failed") else None


def test_exit_codes_read_as_causes() -> None:
    assert describe_exit(-9) == "killed by signal 9 (out of memory?)"
    assert describe_exit(-11) == "killed by signal 11 (segmentation fault in native code)"
    assert describe_exit(-15) == "killed by signal 15 (SIGTERM)"
    assert describe_exit(3) == "exited with code 3"


async def test_a_study_too_big_for_a_job_fails_up_front_with_the_reason(tmp_path: Path) -> None:
    async with running_node(tmp_path, compute__max_job_memory_mb="600") as node:    # ct-basic needs 640 MiB + 2.6 x
        ds = phantom_datasets(make_phantom(slices=12, rows=32, seed=5), SeriesIds())
        await send(node, ds)
        job = await async_wait_until(lambda: _ended(node, ds[0].StudyInstanceUID), 60, "the job to end")
    assert job.state == "failed"
    assert ("(12 x 32 x 32 voxels) needs about 0.6 GiB of memory with model ct-basic; this node gives a job "
            "0.6 GiB") in job.detail
