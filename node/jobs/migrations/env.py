"""Alembic's environment: always driven from node/jobs/schema.py with the caller's open connection."""

from __future__ import annotations

from alembic import context

from node.jobs.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `segnode db upgrade` (node/jobs/schema.py), not the alembic CLI")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
