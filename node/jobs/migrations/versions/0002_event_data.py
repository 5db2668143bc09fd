"""job_events.data: extra keys of an event's message (a `done` event lists what was delivered where).

Nullable, so the events already recorded keep their rows as they are. A store that a development build
gave the column before migrations existed is left as it is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("job_events")}
    if "data" not in columns:
        op.add_column("job_events", sa.Column("data", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("job_events", "data")
