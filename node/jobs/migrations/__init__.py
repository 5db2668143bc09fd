"""Alembic migrations of the job store; run by node/jobs/schema.py (at start and by `segnode db upgrade`)."""
