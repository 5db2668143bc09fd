"""Schema migrations (Alembic) on both backends: stores left by older releases are upgraded in place."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from node.errors import ConfigError
from node.jobs.schema import head
from node.jobs.store import JobStore
from tests.builders.records import rec
from tests.peers.helpers import REPO, free_port, scaled

# The tables exactly as Segnode 0.1.0 (the last release before Alembic) created them, frozen here.
OLD = sa.MetaData()
TZ = sa.DateTime(timezone=True)
sa.Table("jobs", OLD, sa.Column("id", sa.String(32), primary_key=True),
         *(sa.Column(c, sa.String(64), nullable=False, index=True) for c in ("study_instance_uid", "intake_id")),
         sa.Column("state", sa.String(16), nullable=False, index=True), sa.Column("detail", sa.String(2000)),
         sa.Column("progress", sa.Float), sa.Column("rule", sa.String(128)), sa.Column("model", sa.String(128)),
         sa.Column("destinations", sa.JSON), sa.Column("series_instance_uids", sa.JSON),
         sa.Column("calling_ae", sa.String(16)), sa.Column("modality", sa.String(16)),
         sa.Column("series_description", sa.String(64)), sa.Column("instance_count", sa.Integer),
         sa.Column("patient_name", sa.String(200)), sa.Column("patient_id", sa.String(64)),
         sa.Column("attempts", sa.Integer), sa.Column("results", sa.JSON), sa.Column("created_at", TZ),
         sa.Column("updated_at", TZ))
sa.Table("instances", OLD, sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
         *(sa.Column(c, sa.String(64), index=True) for c in ("study_instance_uid", "series_instance_uid")),
         *(sa.Column(c, sa.String(64)) for c in ("sop_class_uid", "transfer_syntax_uid")),
         sa.Column("intake_id", sa.ForeignKey("jobs.id"), index=True), sa.Column("path", sa.String(1024)),
         sa.Column("size", sa.Integer), sa.Column("calling_ae", sa.String(16)), sa.Column("modality", sa.String(16)),
         sa.Column("body_part_examined", sa.String(64)), sa.Column("series_description", sa.String(64)),
         sa.Column("received_at", TZ))
sa.Table("job_events", OLD, sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("job_id", sa.ForeignKey("jobs.id")), sa.Column("study_instance_uid", sa.String(64)),
         sa.Column("state", sa.String(16)), sa.Column("progress", sa.Float), sa.Column("detail", sa.String(2000)),
         sa.Column("at", TZ), sa.Index("ix_job_events_job_seq", "job_id", "seq"))
sa.Table("audit_events", OLD, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("at", TZ), *(sa.Column(c, sa.String(64)) for c in ("actor", "role", "action", "job_id",
                                                                      "study_instance_uid", "remote")))
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
JOB = {"id": "a" * 32, "study_instance_uid": "1.2.3", "intake_id": "a" * 32, "state": "done", "detail": "sent",
       "progress": None, "rule": "ct", "model": "ct-basic", "destinations": ["pacs"],
       "series_instance_uids": ["1.2.3.4"], "calling_ae": "SCANNER", "modality": "CT", "series_description": "",
       "instance_count": 1, "patient_name": "Doe^Jane", "patient_id": "P1", "attempts": 1,
       "results": {"model": "ct-basic", "model_version": "1", "series": []}, "created_at": NOW, "updated_at": NOW}


async def _old_store(url: str, *, earliest: bool = False) -> None:
    """A store as 0.1.0 left it, with a finished job; `earliest`: as the first releases (no patient
    columns, no audit table)."""
    engine = create_async_engine(url)
    t = OLD.tables
    async with engine.begin() as conn:
        await conn.run_sync(OLD.create_all)
        if earliest:
            await conn.execute(sa.text("DROP TABLE audit_events"))
            for column in ("patient_name", "patient_id"):
                await conn.execute(sa.text(f"ALTER TABLE jobs DROP COLUMN {column}"))
        job = {k: v for k, v in JOB.items() if not (earliest and k.startswith("patient_"))}
        await conn.execute(t["jobs"].insert().values(**job))
        await conn.execute(t["instances"].insert().values(
            sop_instance_uid="1.1", intake_id=JOB["id"], **{k: v for k, v in rec("1.1").instance_values().items()
                                                           if k != "sop_instance_uid"}, received_at=NOW))
        for state in ("receiving", "queued", "running", "sending", "done"):
            await conn.execute(t["job_events"].insert().values(job_id=JOB["id"], study_instance_uid="1.2.3",
                                                                state=state, detail=state, at=NOW))
        if not earliest:
            await conn.execute(t["audit_events"].insert().values(at=NOW, actor="alice", role="admin",
                                                                  action="download seg", job_id=JOB["id"],
                                                                  study_instance_uid="1.2.3", remote=""))
    await engine.dispose()


@pytest.mark.parametrize("earliest", [False, True], ids=["release-0.1.0", "earliest-release"])
async def test_a_store_from_an_older_release_is_upgraded_in_place_with_its_rows(
        store_url: str, earliest: bool, caplog: pytest.LogCaptureFixture) -> None:
    await _old_store(store_url, earliest=earliest)
    caplog.set_level(logging.INFO, "node.jobs.store")
    store = await JobStore.open(store_url)
    try:
        assert f"schema upgraded from revision none to {head()}" in caplog.text
        job = await store.get(JOB["id"])
        assert (job.state, job.instance_count, job.destinations, job.results.model) == ("done", 1, ("pacs",),
                                                                                         "ct-basic")
        assert job.patient_name == ("" if earliest else "Doe^Jane")
        old_events = await store.events(JOB["id"])
        assert [e.state for e in old_events] == ["receiving", "queued", "running", "sending", "done"]
        assert await store.instance_count() == 1 and (await store.record_instance(rec("1.1"))).duplicate
        new = await store.record_instance(rec("2.1", study="7.7"))           # writes go on after the upgrade
        assert new.events[0].seq > old_events[-1].seq                        # replay by seq stays in order
        await store.audit("bob", "viewer", "list jobs")
        assert [r["actor"] for r in await store.audit_log()] == ["bob"] + ([] if earliest else ["alice"])
    finally:
        await store.close()


async def test_a_current_store_is_left_as_it_is_and_says_so(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    await (await JobStore.open(store_url)).close()
    caplog.set_level(logging.INFO, "node.jobs.store")
    await (await JobStore.open(store_url)).close()
    assert f"schema at revision {head()} (up to date)" in caplog.text


async def test_a_store_from_a_newer_segnode_is_refused(store_url: str) -> None:
    await (await JobStore.open(store_url)).close()
    engine = create_async_engine(store_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    await engine.dispose()
    with pytest.raises(ConfigError, match="revision 9999, made by a newer Segnode"):
        await JobStore.open(store_url)


def test_segnode_db_upgrade_migrates_an_old_store_and_names_the_revision(store_url: str, tmp_path: Path) -> None:
    asyncio.run(_old_store(store_url))
    env = {**os.environ, "SEGNODE_STORE__URL": store_url, "SEGNODE_NODE__DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "node.cli", "db", "upgrade"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=scaled(120))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"schema at revision {head()}")
    assert f"schema upgraded from revision none to {head()}" in proc.stderr      # the log line

    async def kept() -> tuple[str, int]:
        store = await JobStore.open(store_url)
        try:
            return (await store.get(JOB["id"])).state, await store.instance_count()
        finally:
            await store.close()
    assert asyncio.run(kept()) == ("done", 1)


def test_an_unreachable_database_stops_db_upgrade_with_one_line_and_the_password_masked(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://segnode:s3cret-pw@127.0.0.1:{free_port()}/segnode"
    env = {**os.environ, "SEGNODE_STORE__URL": url, "SEGNODE_NODE__DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "node.cli", "db", "upgrade"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=scaled(120))
    assert proc.returncode == 2
    assert proc.stderr.startswith("segnode: cannot open the job store postgresql+asyncpg://segnode:***@127.0.0.1:")
    assert "s3cret-pw" not in proc.stderr + proc.stdout
