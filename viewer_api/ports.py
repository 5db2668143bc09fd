"""What the web layer needs from the node, as Protocols. viewer_api never imports node/."""

from __future__ import annotations

from typing import Any, Protocol


class JobLike(Protocol):
    id: str
    state: str

    def as_dict(self) -> dict[str, Any]: ...


class EventLike(Protocol):
    seq: int
    job_id: str
    study_instance_uid: str

    def as_message(self) -> dict[str, Any]: ...


class JobQueries(Protocol):
    async def get(self, job_id: str) -> JobLike:
        """Raises LookupError when there is no such job."""

    async def list_jobs(self, *, state: str | None = None, study_instance_uid: str | None = None,
                        limit: int = 100, offset: int = 0) -> list[Any]: ...

    async def events(self, job_id: str | None = None, *, since: int = 0, limit: int = 10000) -> list[Any]: ...


class HealthSource(Protocol):
    async def health(self) -> dict[str, Any]:
        """A JSON-able snapshot; key "ok" is False when the node cannot take studies."""


class ModelCatalog(Protocol):
    async def models(self) -> list[dict[str, Any]]:
        """Every model the node can run, with its labels; unusable bundles with the reason."""
