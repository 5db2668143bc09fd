"""The PostgreSQL server restarts while studies arrive: refused C-STOREs say why, nothing acknowledged is
lost, and the node carries on by itself once the database is back."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.intake.wire.dimse import StoreStatus
from tests.peers.helpers import async_wait_until, scaled
from tests.peers.postgres import PostgresServer
from tests.peers.scu import SCU_HANDLERS, scu, send
from tests.support import running_node


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started mid-test."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


def _another_study(series: list[Dataset]) -> list[Dataset]:
    study = generate_uid()
    out = []
    for ds in series:
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


class PacedSender:
    """One association, like a modality that retries what failed: it waits before instance `pause_at` until
    the database is down, before `resume_at` until it is back, then resends the refused ones first."""

    def __init__(self, port: int, datasets: list[Dataset], pause_at: int, resume_at: int) -> None:
        self.port, self.datasets = port, datasets
        self.pause_at, self.resume_at = pause_at, resume_at
        self.paused, self.go, self.outage_sent, self.go_on = (threading.Event() for _ in range(4))
        self.statuses: list[Dataset] = []
        self.resent: list[Dataset] = []

    def run(self) -> None:
        assoc = scu().associate("127.0.0.1", self.port, evt_handlers=SCU_HANDLERS, ae_title="SEGNODE")
        assert assoc.is_established
        try:
            for i, ds in enumerate(self.datasets):
                if i == self.pause_at:
                    self.paused.set()
                    assert self.go.wait(scaled(30))
                if i == self.resume_at:
                    self.outage_sent.set()
                    assert self.go_on.wait(scaled(30))
                    refused = [d for d, s in zip(self.datasets, self.statuses, strict=False) if s.Status != 0]
                    self.resent = [assoc.send_c_store(d) for d in refused]
                self.statuses.append(assoc.send_c_store(ds))
        finally:
            assoc.release()


async def test_a_database_restart_while_studies_arrive_loses_nothing_and_the_node_recovers(
        tmp_path: Path, ct_series: list[Dataset], own_postgres: PostgresServer,
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_node(tmp_path, store__url=own_postgres.new_database(), dicom__study_quiet_period_s="2",
                            dicom__record_timeout_s="5", compute__workers="1") as node:
        complete = ct_series                                   # all sent before the outage: routed after it
        assert {s.Status for s in await send(node, complete)} == {StoreStatus.SUCCESS}
        arriving = _another_study(ct_series)                   # sent across the outage
        sender = PacedSender(node.scp.port, arriving, pause_at=8, resume_at=16)
        thread = threading.Thread(target=sender.run)
        thread.start()
        assert await asyncio.to_thread(sender.paused.wait, scaled(30))
        await asyncio.to_thread(own_postgres.stop)              # the database goes down mid-study
        sender.go.set()
        assert await asyncio.to_thread(sender.outage_sent.wait, scaled(60))

        async def routing_failed() -> bool:                    # the first study went quiet during the outage
            return "routing stable studies failed" in caplog.text
        await async_wait_until(routing_failed, 10, "routing to fail while the database is down")
        health = await node.health()
        assert (health["ok"], health["store"]) == (False, {"ok": False, "database": "postgresql"})
        await asyncio.to_thread(own_postgres.start)
        sender.go_on.set()
        await asyncio.to_thread(thread.join, scaled(60))

        during = sender.statuses[8:16]
        assert {s.Status for s in during} == {StoreStatus.OUT_OF_RESOURCES}
        assert {s.ErrorComment for s in during} == {"job store unavailable; send again later"}
        assert {s.Status for s in sender.statuses[:8] + sender.statuses[16:] + sender.resent} == {
            StoreStatus.SUCCESS}
        assert len(sender.resent) == 8

        async def both_done() -> list | None:
            jobs = await node.store.list_jobs(state="done")
            return jobs if len(jobs) == 2 else None
        # done after the restart: the background tasks came through the outage (ingest routed the study that
        # went quiet during it, the one worker ran both jobs, the outbox finished them)
        jobs = await async_wait_until(both_done, 60, "both studies segmented after the restart")
        assert {j.study_instance_uid: j.instance_count for j in jobs} == {
            complete[0].StudyInstanceUID: len(complete), arriving[0].StudyInstanceUID: len(arriving)}
        assert await node.store.instance_count() == len(complete) + len(arriving)
        assert len(await node.store.list_jobs()) == 2
        assert (await node.health())["store"] == {"ok": True, "database": "postgresql"}
