"""Baseline: the job store of Segnode 0.1.0, the last release before Alembic.

A new database gets these four tables. A store made by a release before Alembic (no alembic_version
table) is adopted in place: the tables it has are kept with their rows, and what the earliest
releases lacked (the patient columns on jobs, the audit table) is added.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("intake_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(2000), nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("destinations", sa.JSON, nullable=False),
        sa.Column("series_instance_uids", sa.JSON, nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_description", sa.String(64), nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("patient_name", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("results", sa.JSON, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    for column in ("study_instance_uid", "intake_id", "state"):
        op.create_index(f"ix_jobs_{column}", "jobs", [column])


def _instances() -> None:
    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("intake_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("body_part_examined", sa.String(64), nullable=False),
        sa.Column("series_description", sa.String(64), nullable=False),
        sa.Column("received_at", TZ, nullable=False),
    )
    for column in ("study_instance_uid", "series_instance_uid", "intake_id"):
        op.create_index(f"ix_instances_{column}", "instances", [column])


def _job_events() -> None:
    op.create_table(
        "job_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("detail", sa.String(2000), nullable=False),
        sa.Column("at", TZ, nullable=False),
    )
    op.create_index("ix_job_events_job_seq", "job_events", ["job_id", "seq"])


def _audit_events() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("remote", sa.String(64), nullable=False),
    )


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "jobs" in present:                # a store from before Alembic: keep it, add what early releases lacked
        columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
        for name, length in (("patient_name", 200), ("patient_id", 64)):
            if name not in columns:
                op.add_column("jobs", sa.Column(name, sa.String(length), nullable=False, server_default=""))
    for table, create in (("jobs", _jobs), ("instances", _instances), ("job_events", _job_events),
                          ("audit_events", _audit_events)):
        if table not in present:
            create()


def downgrade() -> None:
    raise NotImplementedError("the baseline cannot be undone; restore a backup of the job store instead")
