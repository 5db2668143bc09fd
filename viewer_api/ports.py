"""What the web layer needs from the node, as Protocols. viewer_api never imports node/."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol


class Subscription(Protocol):
    queue: asyncio.Queue[Any]
    overflowed: bool

    def close(self) -> None: ...


class JobQueries(Protocol):
    async def get(self, job_id: str) -> Any:
        """Raises LookupError when there is no such job."""

    async def list_jobs(self, *, state: str | None = None, study_instance_uid: str | None = None,
                        limit: int = 100, offset: int = 0, modality: str | None = None, model: str | None = None,
                        text: str | None = None) -> list[Any]:
        """Newest first; `text` is a substring of the study UID, patient ID or patient name."""

    async def hourly(self, hours: int = 24) -> list[dict[str, Any]]:
        """Per hour, oldest first: {"hour", "instances", "finished", "failed", "latency_p50_s",
        "latency_p95_s", "latency_n"} (latency: last instance received -> result delivered)."""

    async def events(self, job_id: str | None = None, *, since: int = 0, limit: int = 10000) -> list[Any]: ...

    async def max_seq(self) -> int: ...

    async def audit(self, actor: str, role: str, action: str, job_id: str = "", study_instance_uid: str = "",
                    remote: str = "", detail: str = "") -> None: ...

    async def audit_log(self, limit: int = 200, *, security: bool = False) -> list[dict[str, Any]]: ...


class NodeOps(Protocol):
    async def health(self) -> dict[str, Any]:
        """A JSON-able snapshot; key "ok" is False when the node cannot take studies."""

    async def models(self) -> list[dict[str, Any]]: ...

    async def retry(self, job_id: str) -> Any:
        """failed -> queued. Raises LookupError (no job) or ValueError (not allowed now)."""

    async def cancel(self, job_id: str) -> Any:
        """-> cancelled. Raises LookupError or ValueError."""

    def result_file(self, job: Any, kind: str) -> Path:
        """The job's SEG or SR file. Raises LookupError when there is none."""

    def preview_file(self, job: Any, name: str) -> Path:
        """A preview PNG the job recorded in results.previews. Raises LookupError when there is none."""

    async def routing(self) -> dict[str, Any]:
        """{"rules": [...], "destinations": [...]}: the rules in order, destinations without secrets."""

    def dry_run(self, modality: str, body_part_examined: str = "", series_description: str = "",
                calling_ae: str = "", instance_count: int = 1) -> dict[str, Any]:
        """Which rule would take a series with these header values ("rule": None if none), and every
        rule's verdict."""

    async def job_routing(self, job: Any) -> dict[str, Any]:
        """Per series of the job's study, each rule's verdict; "rule": the rule that took the job."""

    def subscribe(self, maxsize: int, study: str | None = None) -> Subscription:
        """Job events as they are published: all of them, or only those of one study."""

    async def metrics(self) -> dict[str, Any]:
        """Counters and gauges for /metrics."""
