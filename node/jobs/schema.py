"""The job store's schema version: Alembic migrations (node/jobs/migrations/versions), applied in place.

`upgrade` runs at every start and from `segnode db upgrade`: a new database gets the tables, a store from
an older release (with or without an alembic_version table) is migrated with its rows kept. A store
upgraded by a newer Segnode is refused with a message, never guessed at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text

from node.errors import ConfigError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK_KEY = 0x5E600DE       # pg_advisory_xact_lock: two nodes starting at once migrate one after the other


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """Where the store's schema was before `upgrade` (None: no Alembic revision yet) and is now."""

    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        if not self.changed:
            return f"schema at revision {self.after} (up to date)"
        return f"schema upgraded from revision {self.before or 'none'} to {self.after}"


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision this Segnode knows."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None, "node/jobs/migrations has no revisions"
    return rev


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection) -> SchemaChange:
    """Migrate the store on `conn` to `head()`, in the caller's transaction; ConfigError if it is newer."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    before = current(conn)
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if before is not None and before not in known:
        raise ConfigError(f"the job store is at revision {before}, made by a newer Segnode than this one "
                          f"(newest known: {head()}); run that version, or restore a backup")
    try:
        command.upgrade(_config(conn), "head")
    except CommandError as exc:
        raise ConfigError(f"cannot upgrade the job store: {exc}") from None
    return SchemaChange(before, head())
