"""The attempt limit ([compute] max_attempts) on the store's side, and the memory check before a job runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai.errors import UnsuitableSeries
from node.compute.memory import check_fits, job_memory_limit_mb, job_need_mb
from node.errors import ConfigError
from node.jobs.records import InstanceRecord
from node.jobs.states import JobState
from node.jobs.store import JobStore
from tests.builders.settings import node_settings


async def running_job(store: JobStore) -> str:
    rec = InstanceRecord(sop_instance_uid="1.1", study_instance_uid="1.2", series_instance_uid="1.3",
                         sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                         path="/spool/1.dcm", size=10, calling_ae="SCANNER", modality="CT")
    job_id = (await store.record_instance(rec)).intake_id
    await store.transition(job_id, JobState.QUEUED)
    await store.claim_next()
    return job_id


async def test_a_job_a_crash_interrupted_on_its_last_attempt_ends_failed(tmp_path: Path) -> None:
    store = await JobStore.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    try:
        job_id = await running_job(store)
        assert [e.state for e in await store.requeue_interrupted(max_attempts=2)] == ["queued"]
        await store.claim_next()                                      # attempt 2
        [event] = await store.requeue_interrupted(max_attempts=2)
        assert event.state == "failed" and "stopped while it was running, 2 times" in event.detail
        assert (await store.get(job_id)).attempts == 2
    finally:
        await store.close()


async def test_a_job_given_back_at_a_clean_stop_keeps_its_attempts(tmp_path: Path) -> None:
    store = await JobStore.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    try:
        job_id = await running_job(store)
        event = await store.give_back(job_id, "requeued: the node stopped while it was running")
        assert event is not None and event.state == "queued"
        assert (await store.get(job_id)).attempts == 0
        assert await store.give_back(job_id, "again") is None       # only a running job is given back
    finally:
        await store.close()


def test_a_study_too_big_for_the_job_memory_is_refused_with_the_figures() -> None:
    need = job_need_mb(800 * 512 * 512)
    assert need == 2000 + 1024
    check_fits(800, 512, 512, need)
    with pytest.raises(UnsuitableSeries, match=r"800 x 512 x 512 voxels\) needs about 3.0 GiB.*gives a job 2.0 GiB"):
        check_fits(800, 512, 512, 2048)
    assert job_memory_limit_mb(4096, 2) == 4096
    assert 0 < job_memory_limit_mb(0, 2) < job_memory_limit_mb(0, 1)


def test_attempt_and_memory_settings_are_checked(tmp_path: Path) -> None:
    assert node_settings(tmp_path).compute.max_attempts == 2
    with pytest.raises(ConfigError, match="max_attempts must be 1-20"):
        node_settings(tmp_path, compute__max_attempts="0")
    with pytest.raises(ConfigError, match="max_job_memory_mb must be 0"):
        node_settings(tmp_path, compute__max_job_memory_mb="-1")
