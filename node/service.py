"""NodeService: what the web side (viewer_api.ports.NodeOps) may ask of a running node."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ai.registry import ModelRegistry
from node.compute.pipeline import Backend
from node.compute.worker import Worker
from node.delivery.outbox import Outbox
from node.fsutil import free_bytes
from node.intake.door.spool import Spool
from node.intake.ingest import Ingest
from node.intake.server.receiver import StorageSCP
from node.jobs.events import Subscription
from node.jobs.records import JobEvent, JobView
from node.jobs.routing import SeriesInfo, explain, route
from node.jobs.security_log import SecurityLog
from node.jobs.states import JobState
from node.jobs.store import JobStore
from node.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunningParts:
    """The parts Node.start() built, handed to the service in one piece once they all exist."""

    store: JobStore
    spool: Spool
    ingest: Ingest
    scp: StorageSCP
    registry: ModelRegistry
    backend: Backend
    workers: Sequence[Worker]
    outbox: Outbox
    security: SecurityLog


class NodeService:
    """Answers the web side's questions and commands (health, metrics, models, retry, cancel, result files,
    the event stream) from the running parts. Owns nothing: Node starts and stops the parts."""

    def __init__(self, settings: Settings, parts: RunningParts, websockets: Sized) -> None:
        self._settings = settings
        self._p = parts
        self._websockets = websockets

    def _inference_seconds(self) -> float:
        return round(sum(w.inference_seconds for w in self._p.workers), 3)

    async def health(self) -> dict[str, Any]:
        p = self._p
        try:
            counts, store_ok = await p.store.counts_by_state(), True
        except Exception as exc:       # edge: an unreachable database makes the node unhealthy, not the page fail
            logger.warning("health: job store unavailable (%s)", type(exc).__name__)
            counts, store_ok = {}, False
        free = free_bytes(p.spool.root)
        disk_ok = free >= p.spool.min_free_bytes
        scp_ok = p.scp.listening
        return {
            "ok": bool(disk_ok and scp_ok and store_ok),
            "store": {"ok": store_ok, "database": p.store.engine.dialect.name},
            "dicom": {"listening": scp_ok, "ae_title": self._settings.dicom.ae_title,
                      "port": p.scp.ports().get("plain"), "tls_port": p.scp.ports().get("tls")},
            "disk": {"free_bytes": free, "floor_bytes": p.spool.min_free_bytes, "ok": disk_ok},
            "jobs": counts,
            "queue_depth": counts.get("queued", 0),
            "instances_received": p.ingest.instances_received,
            "websocket_clients": len(self._websockets),
            "compute": {"device": str(p.backend.device), "backend": self._settings.compute.backend,
                        "placement": p.backend.placement(),
                        "cuda_available": torch.cuda.is_available(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "inference_seconds": self._inference_seconds()},
        }

    async def metrics(self) -> dict[str, Any]:
        return {"jobs": await self._p.store.counts_by_state(),
                "instances_received_total": self._p.ingest.instances_received,
                "send_failures_total": self._p.outbox.send_failures,
                "inference_seconds_total": self._inference_seconds(),
                "websocket_clients": len(self._websockets),
                "security_events": self._p.security.counts()}

    async def models(self) -> list[dict[str, Any]]:
        statuses = await asyncio.to_thread(self._p.registry.status)
        return [{**st.as_dict(), "error": st.reason} for st in statuses]

    async def retry(self, job_id: str) -> JobEvent:
        return await self._p.store.transition(job_id, JobState.QUEUED, detail="retry requested")

    async def cancel(self, job_id: str) -> JobEvent:
        return await self._p.store.transition(job_id, JobState.CANCELLED, detail="cancelled")

    def result_file(self, job: JobView, kind: str) -> Path:
        found = job.results.file(kind)
        if found is not None:
            path = self._settings.node.data_path / "results" / job.id / found.file
            if path.exists():
                return path
        raise LookupError(f"job {job.id} has no {kind.upper()} result (state {job.state})")

    def preview_file(self, job: JobView, name: str) -> Path:
        if job.results.preview(name) is not None:
            path = self._settings.node.data_path / "results" / job.id / name
            if path.exists():
                return path
        raise LookupError(f"job {job.id} has no preview {name!r} (state {job.state})")

    async def routing(self) -> dict[str, Any]:
        """Rules in the order they are tried (each with its model's state), destinations without secrets."""
        reasons = {r: await asyncio.to_thread(self._p.registry.unavailable_reason, r.model)
                   for r in self._settings.rules}
        return {"rules": [{**r.describe(), "model_state": "unavailable" if reasons[r] else "ready",
                           "model_reason": reasons[r] or ""} for r in self._settings.rules],
                "destinations": [d.describe() for d in self._settings.destinations]}

    def dry_run(self, modality: str, body_part_examined: str = "", series_description: str = "",
                calling_ae: str = "", instance_count: int = 1) -> dict[str, Any]:
        """Which rule would take a series with these header values, and what every rule says about it."""
        series = SeriesInfo("dry-run", modality, body_part_examined, series_description, calling_ae, instance_count)
        outcome = route([series], self._settings.rules)
        decision = outcome.decisions[0] if outcome.decisions else None
        return {"rule": decision.rule if decision else None, "model": decision.model if decision else None,
                "destinations": list(decision.destinations) if decision else [],
                "ignored_reason": outcome.ignored.get("dry-run", ""),
                "verdicts": [v.as_dict() for v in explain(series, self._settings.rules)]}

    async def job_routing(self, job: JobView) -> dict[str, Any]:
        """For each series of the job's study: what each rule (as configured now) says; the rule that took it."""
        series = await self._p.store.series_of_intake(job.intake_id or job.id)
        mine = set(job.series_instance_uids)
        return {"rule": job.rule, "series": [
            {"series_instance_uid": s.series_instance_uid, "in_this_job": s.series_instance_uid in mine,
             "modality": s.modality, "body_part_examined": s.body_part_examined,
             "series_description": s.series_description, "instance_count": s.instance_count,
             "verdicts": [v.as_dict() for v in explain(s, self._settings.rules)]} for s in series]}

    def subscribe(self, maxsize: int, study: str | None = None) -> Subscription:
        return self._p.store.bus.subscribe(maxsize, study)
