import asyncio
import re
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from node.errors import InvalidTransition, JobNotFound
from node.jobs.models import Instance, utcnow
from node.jobs.records import Delivery, InstanceRecord, JobResults, RecordOutcome, ResultFile
from node.jobs.routing import Rule, route
from node.jobs.states import JobState
from node.jobs.store import JobStore
from tests.builders.records import rec
from tests.peers.helpers import async_wait_until

THREE_COMMITTERS = pytest.mark.parametrize(
    ("store_url", "in_thread_writes"), [("sqlite", True), ("sqlite", False), ("postgresql", True)],
    ids=["sqlite-in-thread", "sqlite-through-the-loop", "postgresql"], indirect=["store_url"])


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    """A new, empty store on each backend (SQLite, PostgreSQL)."""
    s = await JobStore.open(store_url)
    yield s
    await s.close()


async def test_instances_of_a_study_gather_in_one_receiving_job(store: JobStore) -> None:
    first = await store.record_instance(rec("1.1"))
    second = await store.record_instance(rec("1.2"))
    assert first.intake_id == second.intake_id
    assert [e.state for e in first.events] == ["receiving"]
    job = await store.get(first.intake_id)
    assert (job.state, job.instance_count) == ("receiving", 2)


async def test_a_resent_sop_instance_is_recorded_once(store: JobStore) -> None:
    await store.record_instance(rec("1.1"))
    again = await store.record_instance(rec("1.1"))
    assert again.duplicate
    assert await store.instance_count() == 1


async def test_routing_queues_the_job_and_a_late_series_gets_its_own_job(store: JobStore) -> None:
    intake = (await store.record_instance(rec("1.1"))).intake_id
    series = await store.series_of_intake(intake)
    events = await store.route_intake(intake, route(series, [Rule(name="ct", model="ct-basic")]), series)
    assert [e.state for e in events] == ["queued"]
    late = await store.record_instance(rec("2.1", series="1.2.3.5"))
    assert late.intake_id != intake
    assert (await store.get(intake)).instance_count == 1


async def test_unrouted_study_is_ignored_with_the_reason(store: JobStore) -> None:
    intake = (await store.record_instance(rec("1.1", modality="MR"))).intake_id
    series = await store.series_of_intake(intake)
    await store.route_intake(intake, route(series, [Rule(name="ct", model="m", modality=("CT",))]), series)
    job = await store.get(intake)
    assert job.state == "ignored"
    assert "modality MR not in CT" in job.detail


async def test_transitions_are_checked_and_every_change_is_an_event(store: JobStore) -> None:
    intake = (await store.record_instance(rec("1.1"))).intake_id
    with pytest.raises(InvalidTransition, match="is receiving; it cannot become done"):
        await store.transition(intake, JobState.DONE)
    await store.transition(intake, JobState.QUEUED, detail="ok")
    claimed = await store.claim_next()
    assert claimed is not None and claimed[0].id == intake and claimed[0].attempts == 1
    assert claimed[1].state == "running"
    assert await store.claim_next() is None
    states = [e.state for e in await store.events(intake)]
    assert states == ["receiving", "queued", "running"]
    with pytest.raises(JobNotFound):
        await store.transition("nope", JobState.QUEUED)


async def test_a_late_progress_report_never_overwrites_the_failure_reason(store: JobStore) -> None:
    intake = (await store.record_instance(rec("1.1"))).intake_id
    await store.transition(intake, JobState.QUEUED)
    await store.claim_next()
    assert await store.progress(intake, 0.5, "volume 12x32x32") is not None
    await store.transition(intake, JobState.FAILED, detail="model ct-basic segments CT; this series is MR")
    assert await store.progress(intake, 0.6, "segmenting") is None
    job = await store.get(intake)
    assert job.state == "failed" and job.detail == "model ct-basic segments CT; this series is MR"


async def test_the_done_event_says_which_series_each_destination_now_holds(store: JobStore) -> None:
    intake = (await store.record_instance(rec("1.1"))).intake_id
    await store.transition(intake, JobState.QUEUED)
    await store.claim_next()
    seg = ResultFile(kind="seg", file="seg.dcm", sop_instance_uid="9.1.1", series_instance_uid="9.1",
                     source_series_instance_uid="1.2.3.4")
    await store.set_results(intake, JobResults(model="m", files=(seg,)))
    sending = await store.transition(intake, JobState.SENDING)
    assert "delivered" not in sending.as_message()
    await store.record_delivery(intake, "pacs", Delivery(delivered=True, attempts=1))
    sub = store.bus.subscribe(10, "1.2.3")
    done = await store.advance(intake, JobState.DONE, "delivered to pacs")
    series = [{"kind": "seg", "series_instance_uid": "9.1", "sop_instance_uids": ["9.1.1"]}]
    assert done is not None and done.as_message()["delivered"] == {"pacs": series}
    assert sub.queue.get_nowait() == done                            # published to the study's subscriber
    assert (await store.events(intake))[-1].as_message()["delivered"] == {"pacs": series}   # and replayed
    assert (await store.get(intake)).results.as_json()["delivered"] == {"pacs": series}
    sub.close()
    assert store.bus.subscriber_count == 0


async def test_running_jobs_are_requeued_after_a_restart(store_url: str) -> None:
    url = store_url
    s = await JobStore.open(url)
    intake = (await s.record_instance(rec("1.1"))).intake_id
    await s.transition(intake, JobState.QUEUED)
    await s.claim_next()
    await s.close()
    s = await JobStore.open(url)
    events = await s.requeue_interrupted()
    assert [(e.job_id, e.state) for e in events] == [(intake, "queued")]
    await s.close()


async def test_event_seq_is_strictly_increasing_for_replay(store: JobStore) -> None:
    for i in range(5):
        await store.record_instance(rec(f"1.{i}", study=f"9.{i}"))
    seqs = [e.seq for e in await store.events()]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [e.seq for e in await store.events(since=seqs[2])] == seqs[3:]


async def test_a_writer_cancelled_while_waiting_for_the_lock_does_not_keep_it(store: JobStore) -> None:
    held, release = threading.Event(), threading.Event()

    def other_writer() -> None:                 # e.g. an association thread committing a row
        with store.writer_lock.hold_blocking(timeout_s=5):
            held.set()
            release.wait(5)
    t = threading.Thread(target=other_writer)
    t.start()
    assert await asyncio.to_thread(held.wait, 5)

    async def write() -> None:
        async with store.writer_lock.hold():
            raise AssertionError("the cancelled writer must never get to write")
    waiting = asyncio.create_task(write())
    await asyncio.sleep(0)                      # the writer starts and waits for the lock
    waiting.cancel()
    release.set()
    await asyncio.to_thread(t.join, 5)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    outcome = await asyncio.wait_for(store.record_instance(rec("1.2")), 5)   # only possible if the lock came back
    assert not outcome.duplicate
    assert (await asyncio.to_thread(store.record_instance_blocking, rec("1.3"))).intake_id == outcome.intake_id


@THREE_COMMITTERS
async def test_an_association_thread_records_and_the_loop_hears_of_it(store_url: str, in_thread_writes: bool) -> None:
    """Both ways an association thread records an instance (in the thread with SQLite; through the loop
    otherwise, always with PostgreSQL) commit the row before returning and publish its events on the loop."""
    store = await JobStore.open(store_url, in_thread_writes=in_thread_writes)
    sub = store.bus.subscribe()
    try:
        first = await asyncio.to_thread(store.record_instance_blocking, rec("1.1"))
        assert (await store.get(first.intake_id)).instance_count == 1
        again = await asyncio.to_thread(store.record_instance_blocking, rec("1.1"))
        assert again.duplicate and again.intake_id == first.intake_id
        event = await asyncio.wait_for(sub.queue.get(), 5)
        assert (event.job_id, event.state) == (first.intake_id, "receiving")
        assert [e.seq for e in first.events] == [event.seq] and again.events == ()
        assert (await store.get(first.intake_id)).instance_count == 1
    finally:
        sub.close()
        await store.close()


async def _queued_jobs(store: JobStore, n: int) -> set[str]:
    ids = set()
    for i in range(n):
        intake = (await store.record_instance(rec(f"5.{i}", study=f"8.{i}"))).intake_id
        await store.transition(intake, JobState.QUEUED)
        ids.add(intake)
    return ids


async def _claim_all(store: JobStore) -> list[str]:
    got = []
    while (claimed := await store.claim_next()) is not None:
        got.append(claimed[0].id)
    return got


async def test_two_workers_racing_never_claim_the_same_job(store: JobStore) -> None:
    queued = await _queued_jobs(store, 12)
    first, second = await asyncio.gather(_claim_all(store), _claim_all(store))
    assert sorted(first + second) == sorted(queued)          # each job exactly once
    assert {(await store.get(j)).attempts for j in queued} == {1}


async def test_two_node_processes_on_one_postgresql_never_claim_the_same_job(postgres) -> None:
    """Two stores with their own engines and locks stand for two node processes sharing the database."""
    url = postgres.new_database()
    one, two = await JobStore.open(url), await JobStore.open(url)
    try:
        queued = await _queued_jobs(one, 16)
        claims = await asyncio.gather(_claim_all(one), _claim_all(two), _claim_all(one), _claim_all(two))
        everything = [j for c in claims for j in c]
        assert sorted(everything) == sorted(queued)
        assert all(claims), "both processes should have claimed some jobs"
        running = [e for e in await one.events() if e.state == "running"]
        assert len(running) == 16
        seqs = [e.seq for e in await two.events()]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        await one.close()
        await two.close()


async def test_audit_rows_are_kept_newest_first(store: JobStore) -> None:
    await store.audit("alice", "admin", "download seg", job_id="j1", study_instance_uid="1.2", remote="127.0.0.1")
    await store.audit("ohif", "viewer", "list jobs")
    log = await store.audit_log()
    assert [(r["actor"], r["role"], r["action"]) for r in log] == [("ohif", "viewer", "list jobs"),
                                                                   ("alice", "admin", "download seg")]
    assert log[1]["job_id"] == "j1" and log[1]["at"].endswith("+00:00")


async def test_sqlite_instance_rows_written_directly_equal_sqlalchemy_s(tmp_path: Path) -> None:
    """The in-thread SQLite path writes the instance row and count through the DB-API connection; they
    must be the rows SQLAlchemy's statement writes (same columns, types and datetime format)."""
    store = await JobStore.open(f"sqlite+aiosqlite:///{tmp_path}/jobs.db")
    try:
        direct = await asyncio.to_thread(store.record_instance_blocking, rec("1.1"))
        twin = {**rec("1.2").instance_values(), "intake_id": direct.intake_id, "received_at": utcnow()}
        async with store.engine.begin() as conn:
            await conn.execute(insert(Instance), twin)              # SQLAlchemy's own statement: the oracle
        async with store.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT *, typeof(received_at), typeof(size) FROM instances ORDER BY sop_instance_uid"))).all()
            by_uid = select(Instance.received_at).order_by(Instance.sop_instance_uid)
            stamps = (await conn.execute(by_uid)).scalars().all()
        (a, b) = [dict(r._mapping) for r in rows]
        assert {k: v for k, v in a.items() if k not in ("sop_instance_uid", "path", "received_at")} == \
               {k: v for k, v in b.items() if k not in ("sop_instance_uid", "path", "received_at")}
        stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
        assert stamp.fullmatch(a["received_at"]) and stamp.fullmatch(b["received_at"])
        assert isinstance(stamps[0], datetime) and stamps[0].tzinfo == stamps[1].tzinfo
        assert (await store.get(direct.intake_id)).instance_count == 1     # the count: the direct row only
    finally:
        await store.close()


async def _while_the_writer_is_busy(store: JobStore, recs: Sequence[InstanceRecord]) -> list[RecordOutcome | str]:
    """Record each of `recs` from an association thread of its own while another writer (this test) holds
    the store; let go once every row waits. Returns each outcome, or the name of the error raised."""
    def attempt(r: InstanceRecord) -> RecordOutcome | str:
        try:
            return store.record_instance_blocking(r)
        except Exception as exc:
            return type(exc).__name__

    async def all_waiting() -> bool:
        return store.group_commit.waiting == len(recs)
    with ThreadPoolExecutor(len(recs)) as pool:
        async with store.writer_lock.hold():
            answers = [asyncio.wrap_future(pool.submit(attempt, r)) for r in recs]
            await async_wait_until(all_waiting, 10, f"{len(recs)} rows waiting for the writer lock")
        return list(await asyncio.gather(*answers))


async def _refuse_instance_rows(store: JobStore) -> None:
    """From now on every instance row fails its transaction, as on a full disk."""
    if store.engine.dialect.name == "sqlite":
        statements = ["CREATE TRIGGER refuse BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'refused'); END"]
    else:
        statements = ["CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ "
                      "LANGUAGE plpgsql",
                      "CREATE TRIGGER refuse BEFORE INSERT ON instances FOR EACH ROW EXECUTE FUNCTION refuse()"]
    async with store.engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


@THREE_COMMITTERS
async def test_rows_that_wait_for_the_writer_are_committed_together(store_url: str, in_thread_writes: bool) -> None:
    """Group commit: the rows that queue while the store is busy go into one transaction once it is free,
    each with its own outcome; a failed transaction fails every row in it, and none is acknowledged."""
    store = await JobStore.open(store_url, in_thread_writes=in_thread_writes)
    try:
        before = store.group_commit
        outcomes = await _while_the_writer_is_busy(store, [rec(f"1.{i}") for i in range(8)])
        after = store.group_commit
        assert (after.transactions - before.transactions, after.rows - before.rows, after.waiting) == (1, 8, 0)
        assert all(isinstance(o, RecordOutcome) and not o.duplicate for o in outcomes)
        intakes = {o.intake_id for o in outcomes if isinstance(o, RecordOutcome)}
        assert len(intakes) == 1 and (await store.get(intakes.pop())).instance_count == 8

        await _refuse_instance_rows(store)
        answers = await _while_the_writer_is_busy(store, [rec(f"2.{i}") for i in range(4)])
        assert answers == ["RecordFailed"] * 4
        assert store.group_commit.transactions == after.transactions
        assert await store.instance_count() == 8
    finally:
        await store.close()


@THREE_COMMITTERS
async def test_a_row_whose_wait_timed_out_is_never_committed(store_url: str, in_thread_writes: bool) -> None:
    """The sender was told the store is unavailable: the row must not appear later either (its resend is
    then new, not a duplicate of a row it was never told about)."""
    store = await JobStore.open(store_url, record_timeout_s=0.2, in_thread_writes=in_thread_writes)
    try:
        async with store.writer_lock.hold():
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(store.record_instance_blocking, rec("1.1"))
        assert store.group_commit.waiting == 0
        resent = await asyncio.to_thread(store.record_instance_blocking, rec("1.1"))
        assert not resent.duplicate and await store.instance_count() == 1
    finally:
        await store.close()
