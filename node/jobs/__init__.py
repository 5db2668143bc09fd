"""The durable job store: jobs, received instances and the append-only job_events table."""
