"""Bring a job store made by an older Segnode up to the current tables: additive changes only.

New tables are created; a column a newer Segnode added is added with its default, so the data
already recorded (instances, jobs, events, audit) stays where it is. Anything else (a column
removed or changed) is refused with a message that says what to do, never guessed at.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Column, Connection, inspect, text
from sqlalchemy.schema import CreateColumn

from node.errors import ConfigError
from node.jobs.models import Base

logger = logging.getLogger(__name__)


def _literal(column: Column[Any]) -> str | None:
    """The SQL default for an added NOT NULL column, from the model's Python default; None if there is none."""
    default = column.default
    if default is None:
        return None
    value = default.arg
    if callable(value):                  # SQLAlchemy wraps `default=list` as a one-argument callable
        try:
            value = value(None)
        except TypeError:
            return None
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None


def upgrade(conn: Connection) -> list[str]:
    """Create missing tables and add missing columns; return what was added ("table.column")."""
    Base.metadata.create_all(conn)
    insp = inspect(conn)
    added = []
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            ddl = str(CreateColumn(column).compile(dialect=conn.dialect))
            if not column.nullable:
                literal = _literal(column)
                if literal is None:
                    raise ConfigError(f"the job store lacks {table.name}.{column.name}, which has no default to fill "
                                      f"old rows with; move the [store] database aside to start a new one")
                ddl += f" DEFAULT {literal}"
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
            added.append(f"{table.name}.{column.name}")
    if added:
        logger.warning("job store made by an older Segnode: added column(s) %s", ", ".join(added))
    return added
