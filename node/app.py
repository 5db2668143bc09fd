"""The composition root: the only module that wires node/, ai/ and viewer_api/ together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from aiohttp import web

from ai.bundle import SlidingWindow
from ai.device import choose_device
from ai.registry import ModelRegistry
from node.assembly import StudyAssembler
from node.bridge import LoopBridge
from node.compute import Backend, JobPipeline, LocalBackend, RayBackend
from node.dicom_out.writer import write_dicom_results
from node.errors import ConfigError
from node.events import EventBus, Subscription
from node.fsutil import free_bytes, make_dirs
from node.ingest import Ingest
from node.jobs.states import JobState
from node.jobs.store import InstanceRecord, JobEvent, JobStore, JobView, RecordOutcome
from node.outbox import Outbox
from node.scp import StorageSCP
from node.senders import make_sender
from node.settings import Settings
from node.spool import Spool
from node.worker import Worker, write_basic_results
from viewer_api.app import init_app
from viewer_api.auth import TokenAuth
from viewer_api.keys import WEBSOCKETS

logger = logging.getLogger(__name__)


class Node:
    """One running Segnode: SCP, ingest, job store, web API. `start()` then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.store: JobStore | None = None
        self.scp: StorageSCP | None = None
        self.bus = EventBus()
        self._executor: ThreadPoolExecutor | None = None
        self.workers: list[Worker] = []

    async def start(self) -> None:
        s = self.settings
        data = s.node.data_path
        make_dirs(data)
        self.store = await JobStore.open(s.store_url)
        self.spool = Spool(data / "spool", s.dicom.min_free_disk_mb * 2**20)
        self.assembler = StudyAssembler(s.dicom.study_quiet_period_s)
        self.ingest = Ingest(self.store, self.spool, self.assembler, s.rules, self.bus)
        await self.ingest.recover()
        self._tasks.append(asyncio.create_task(self.ingest.run(), name="ingest"))

        try:
            device = choose_device(s.compute.device)
        except ValueError as exc:
            raise ConfigError(f"[compute] device: {exc}") from None
        m = s.models
        window = SlidingWindow(roi_size=tuple(m.sw_roi_size) if m.sw_roi_size else None,  # type: ignore[arg-type]
                               overlap=m.sw_overlap if m.sw_overlap >= 0 else None,
                               sw_batch_size=m.sw_batch_size or None)
        self.registry = ModelRegistry(m.path, device, window)
        writers = [write_basic_results, write_dicom_results]
        c = s.compute
        if c.backend == "ray":
            self.backend: Backend = await asyncio.to_thread(functools.partial(
                RayBackend, address=c.ray_address, num_cpus=c.ray_num_cpus, actors=c.workers,
                gpus_per_actor=c.ray_gpus_per_actor, cpus_per_actor=c.actor_cpus(), models_dir=m.path,
                device=c.device, window=window, writers=writers))
        else:
            self._executor = ThreadPoolExecutor(max_workers=c.workers, thread_name_prefix="inference")
            self.backend = LocalBackend(JobPipeline(self.registry, writers), self._executor)
        n_workers = len(self.backend.actors) if isinstance(self.backend, RayBackend) else c.workers
        for i in range(n_workers):
            worker = Worker(self.store, self.backend, self.bus, data / "results")
            self.workers.append(worker)
            self._tasks.append(asyncio.create_task(worker.run(), name=f"worker-{i}"))

        senders = {d.name: make_sender(d, s.dicom.ae_title, s.outbox.send_timeout_s) for d in s.destinations}
        self.outbox = Outbox(self.store, self.bus, senders, data / "results",
                             retry_initial_s=s.outbox.retry_initial_s, retry_max_s=s.outbox.retry_max_s,
                             retry_deadline_s=s.outbox.retry_deadline_s)
        self._tasks.append(asyncio.create_task(self.outbox.run(), name="outbox"))

        auth = TokenAuth(s.http.admin_tokens, s.http.viewer_tokens, s.http.cors_origins)
        host = s.http.host
        if not auth.enabled and host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("no [http] admin_tokens or viewer_tokens configured: HTTP listens on 127.0.0.1 only, "
                           "not on %s", host)
            host = "127.0.0.1"
        elif not auth.enabled:
            logger.info("no HTTP tokens configured: the API is open to local users only (loopback)")
        app = init_app(self.store, self, auth, ws_queue_size=s.http.ws_queue_size, ws_heartbeat_s=s.http.ws_heartbeat_s)
        self._ws_clients = app[WEBSOCKETS]
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, s.http.port)
        await site.start()

        bridge = LoopBridge(asyncio.get_running_loop(), s.dicom.record_timeout_s)
        if self.store.records_in_thread:
            # SQLite: the association thread commits its row itself, then tells the loop; two thread hops
            # fewer per instance than going through the loop (one association, A/B: median +8 %, best +35 %)
            store, ingest, timeout_s = self.store, self.ingest, s.dicom.record_timeout_s

            def record(rec: InstanceRecord) -> RecordOutcome:
                outcome = store.record_instance_blocking(rec, timeout_s)
                bridge.notify(ingest.recorded, outcome)
                return outcome
        else:
            record = functools.partial(bridge.call, self.ingest.record)
        self.scp = StorageSCP(s.dicom, self.spool, record)
        await asyncio.to_thread(self.scp.start)
        logger.info("segnode ready: DICOM %s on port %d, HTTP http://%s:%d, data in %s", s.dicom.ae_title,
                    self.scp.port, s.http.host, self.http_port, data)

    @property
    def http_port(self) -> int:
        assert self._runner is not None
        for addr in self._runner.addresses:
            return int(addr[1])
        raise RuntimeError("HTTP server is not listening")

    async def stop(self) -> None:
        """Stop accepting associations, let in-flight stores finish, then close everything."""
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)      # the loop keeps running so in-flight records commit
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        if getattr(self, "backend", None) is not None:
            await self.backend.close()
        if self._executor is not None:
            # inference threads cannot be interrupted; the job they ran is requeued at the next start
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            await self.store.close()
        logger.info("segnode stopped")

    async def health(self) -> dict[str, Any]:
        assert self.store is not None
        counts = await self.store.counts_by_state()
        free = free_bytes(self.spool.root)
        disk_ok = free >= self.spool.min_free_bytes
        scp_ok = self.scp is not None and self.scp._server is not None
        return {
            "ok": bool(disk_ok and scp_ok),
            "dicom": {"listening": scp_ok, "ae_title": self.settings.dicom.ae_title,
                      "port": self.scp.port if scp_ok and self.scp else None},
            "disk": {"free_bytes": free, "floor_bytes": self.spool.min_free_bytes, "ok": disk_ok},
            "jobs": counts,
            "queue_depth": counts.get("queued", 0),
            "instances_received": self.ingest.instances_received,
            "websocket_clients": len(self._ws_clients),
            "compute": {"device": str(self.backend.device), "backend": self.settings.compute.backend,
                        "placement": self.backend.placement(),
                        "cuda_available": torch.cuda.is_available(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "inference_seconds": round(sum(w.inference_seconds for w in self.workers), 3)},
        }

    async def retry(self, job_id: str) -> JobEvent:
        event = await self.store.transition(job_id, JobState.QUEUED, detail="retry requested")   # type: ignore[union-attr]
        self.bus.publish([event])
        return event

    async def cancel(self, job_id: str) -> JobEvent:
        event = await self.store.transition(job_id, JobState.CANCELLED, detail="cancelled")   # type: ignore[union-attr]
        self.bus.publish([event])
        return event

    def result_file(self, job: JobView, kind: str) -> Path:
        for f in job.results.get("files", []):
            if f["kind"] == kind:
                path = self.settings.node.data_path / "results" / job.id / f["file"]
                if path.exists():
                    return path
        raise LookupError(f"job {job.id} has no {kind.upper()} result (state {job.state})")

    def subscribe(self, maxsize: int, study: str | None = None) -> Subscription:
        return self.bus.subscribe(maxsize, study)

    async def metrics(self) -> dict[str, Any]:
        assert self.store is not None
        return {"jobs": await self.store.counts_by_state(),
                "instances_received_total": self.ingest.instances_received,
                "send_failures_total": self.outbox.send_failures,
                "inference_seconds_total": round(sum(w.inference_seconds for w in self.workers), 3),
                "websocket_clients": len(self._ws_clients)}

    async def models(self) -> list[dict[str, Any]]:
        cards = await asyncio.to_thread(self.registry.cards)
        return [{**card.as_dict(), "available": True} if card else {"available": False, "error": error}
                for card, error in cards]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    node = Node(settings)
    try:
        await node.start()
        await stop.wait()
        logger.info("stop requested: closing the DICOM port, finishing in-flight work")
    finally:
        await node.stop()
