"""The job store's database engine: SQLite (WAL) in the data folder, or a PostgreSQL server by URL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

_PG_WRITERS_KEY = 0x5E60DE1      # pg_advisory_xact_lock: one writer at a time, across node processes too


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL survives a process crash; after a power cut the spool files (fsynced before
    # the row) are reconciled into the store at start-up.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, connect_timeout_s: float) -> AsyncEngine:
    """An engine for `url`. PostgreSQL: a pooled connection the server dropped (a restart) is found by the
    ping at checkout and replaced, and an unreachable server fails within `connect_timeout_s`."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=8,
                               connect_args={"timeout": connect_timeout_s})


def one_writer_sync(conn: Connection) -> None:
    """PostgreSQL: wait for the other writers' transactions (this node's and any other's) to end first.

    Event seqs then commit in seq order, so a WebSocket client replaying `since=N` never misses one that
    a slower transaction committed later with a smaller seq. SQLite has one writer anyway.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_WRITERS_KEY})


async def one_writer(session: AsyncSession) -> None:
    """`one_writer_sync` for an ORM session, at the start of its write transaction."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_WRITERS_KEY})
