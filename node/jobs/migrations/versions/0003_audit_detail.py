"""audit_events.detail: why, for a security event (a refused certificate, a bad token, an AE that does not
match its certificate). Empty for the reads of results that the table held before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("detail", sa.String(256), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("audit_events", "detail")
