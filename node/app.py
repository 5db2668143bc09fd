"""The composition root: the only module that wires node/, ai/ and viewer_api/ together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import ssl
import weakref

from aiohttp import web

from ai.bundle import SlidingWindow
from ai.device import choose_device
from ai.registry import ModelRegistry
from node.bridge import LoopBridge
from node.compute.memory import job_memory_limit_mb
from node.compute.pipeline import Backend
from node.compute.process import ModelProcessSpec, ProcessBackend
from node.compute.ray_backend import RayBackend
from node.compute.worker import Worker
from node.delivery.outbox import Outbox
from node.delivery.senders import make_sender
from node.errors import ConfigError
from node.fsutil import make_dirs
from node.intake.assembly import StudyAssembler
from node.intake.door.spool import Spool
from node.intake.ingest import Ingest
from node.intake.server.receiver import StorageSCP
from node.jobs.events import EventBus
from node.jobs.schema import head as schema_head
from node.jobs.security_log import SecurityLog
from node.jobs.store import JobStore
from node.results.basic import write_basic_results
from node.results.dicom import write_dicom_results
from node.results.preview import write_previews
from node.security import ReloadingContext
from node.service import NodeService, RunningParts
from node.settings import Settings, mask_url
from viewer_api.app import init_app
from viewer_api.auth import TokenAuth

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Node:
    """One running Segnode. Builds every part from the settings in `start()` (job store, intake, compute,
    delivery, web, then the DICOM port last) and owns them: `stop()` closes them in reverse order.
    The web side talks to `service` (a NodeService), never to this class."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = EventBus()
        self.store: JobStore | None = None
        self.spool: Spool | None = None
        self.ingest: Ingest | None = None
        self.scp: StorageSCP | None = None
        self.registry: ModelRegistry | None = None
        self._window = SlidingWindow()
        self.backend: Backend | None = None
        self.workers: list[Worker] = []
        self.outbox: Outbox | None = None
        self.service: NodeService | None = None
        self.security: SecurityLog | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _spawn(self, coro: object, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def start(self) -> None:
        s = self.settings
        make_dirs(s.node.data_path)
        self.store = await JobStore.open(s.store_url, self.bus, record_timeout_s=s.dicom.record_timeout_s)
        registry = await self._start_models()
        ingest = await self._start_intake(self.store, registry)
        backend = await self._start_compute(self.store, registry)
        outbox = self._start_delivery(self.store)
        assert self.spool is not None and self.registry is not None
        self.security = SecurityLog(self.store)
        self.security.bind(LoopBridge(asyncio.get_running_loop()))
        self.scp = StorageSCP(s.dicom, self.spool, ingest.record, tls=s.tls, on_security_event=self.security.record)
        websockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.service = NodeService(s, RunningParts(self.store, self.spool, ingest, self.scp, self.registry, backend,
                                                   self.workers, outbox, self.security), websockets)
        await self._start_web(self.store, self.service, websockets)
        await self.scp.start()
        logger.info("segnode ready: DICOM %s on %s, HTTP on %s:%d, data in %s", s.dicom.ae_title,
                    ", ".join(f"{kind} port {port}" for kind, port in self.scp.ports().items()), s.http.host,
                    self.http_port, s.node.data_path)

    async def _start_models(self) -> ModelRegistry:
        """Build every model once, so an unusable one is reported at start and its jobs fail at routing."""
        c, m = self.settings.compute, self.settings.models
        try:
            device = choose_device(c.device)
        except ValueError as exc:
            raise ConfigError(f"[compute] device: {exc}") from None
        self._window = SlidingWindow(roi_size=tuple(m.sw_roi_size) if m.sw_roi_size else None,  # type: ignore[arg-type]
                                     overlap=m.sw_overlap if m.sw_overlap >= 0 else None,
                                     sw_batch_size=m.sw_batch_size or None)
        self.registry = ModelRegistry(m.path, device, self._window)
        for status in await asyncio.to_thread(self.registry.check):
            logger.info("model %s: %s", status.name, "ready" if status.ready else f"unavailable: {status.reason}")
        self.registry.unload()              # models run in the model processes (or Ray actors), not here
        return self.registry

    async def _start_intake(self, store: JobStore, registry: ModelRegistry) -> Ingest:
        d = self.settings.dicom
        self.spool = Spool(self.settings.node.data_path / "spool", d.min_free_disk_mb * 2**20)
        self.ingest = Ingest(store, self.spool, StudyAssembler(d.study_quiet_period_s), self.settings.rules,
                             model_unavailable=registry.unavailable_reason)
        await self.ingest.recover()
        self._spawn(self.ingest.run(), "ingest")
        return self.ingest

    async def _start_compute(self, store: JobStore, registry: ModelRegistry) -> Backend:
        c, m, window = self.settings.compute, self.settings.models, self._window
        writers = [write_basic_results, write_dicom_results, write_previews]
        if c.backend == "ray":
            self.backend = await asyncio.to_thread(functools.partial(
                RayBackend, address=c.ray_address, num_cpus=c.ray_num_cpus, actors=c.workers,
                gpus_per_actor=c.ray_gpus_per_actor, cpus_per_actor=c.actor_cpus(), models_dir=m.path,
                device=c.device, window=window, writers=writers))
            n_workers = len(self.backend.actors)
        else:
            spec = ModelProcessSpec(m.path, c.device, window, tuple(writers),
                                    job_memory_limit_mb(c.max_job_memory_mb, c.workers), logging.getLogger().level)
            self.backend = await asyncio.to_thread(ProcessBackend, spec, c.workers)
            n_workers = c.workers
        await store.requeue_interrupted(c.max_attempts)
        for i in range(n_workers):
            worker = Worker(store, self.backend, self.settings.node.data_path / "results",
                            max_attempts=c.max_attempts)
            self.workers.append(worker)
            self._spawn(worker.run(), f"worker-{i}")
        return self.backend

    def _start_delivery(self, store: JobStore) -> Outbox:
        s = self.settings
        senders = {d.name: make_sender(d, s.dicom.ae_title, s.outbox.send_timeout_s) for d in s.destinations}
        self.outbox = Outbox(store, senders, s.node.data_path / "results", retry_initial_s=s.outbox.retry_initial_s,
                             retry_max_s=s.outbox.retry_max_s, retry_deadline_s=s.outbox.retry_deadline_s)
        self._spawn(self.outbox.run(), "outbox")
        return self.outbox

    async def _start_web(self, store: JobStore, service: NodeService,
                         websockets: weakref.WeakSet[web.WebSocketResponse]) -> None:
        h = self.settings.http
        auth = TokenAuth(h.admin_tokens, h.viewer_tokens, h.cors_origins)
        host = h.host
        missing = [what for what, ok in (("[http] https = true", h.https),
                                         ("[http] admin_tokens or viewer_tokens", auth.enabled)) if not ok]
        if host not in LOOPBACK and missing:
            logger.warning("HTTP listens on 127.0.0.1 only, not on %s: beyond loopback it needs %s", host,
                           " and ".join(missing))
            host = "127.0.0.1"
        elif not auth.enabled:
            logger.info("no HTTP tokens configured: the API is open to local users only (loopback)")
        ssl_context = None
        if h.https:
            def rotation_failed(reason: str) -> None:        # in a handshake, on the loop: the old certificate stays
                logger.warning("HTTPS keeps its current certificate: the changed [tls] files do not load: %s", reason)
                self._spawn(store.audit("-", "security", "https certificate not reloaded", detail=reason),
                            "audit-https-certificate")
            certificates = ReloadingContext(self.settings.tls, client_certificate="none", on_error=rotation_failed)
            ssl_context = certificates.get()

            def newest_certificate(connection: ssl.SSLObject, server_name: str | None,
                                   listening: ssl.SSLContext) -> None:
                current = certificates.get()                # the files are looked at once a second at most
                if current is not listening:                # a rotated certificate, for this new connection
                    connection.context = current
            ssl_context.sni_callback = newest_certificate    # called on every handshake, with SNI or without
        app = init_app(store, service, auth, ws_queue_size=h.ws_queue_size, ws_heartbeat_s=h.ws_heartbeat_s,
                       websockets=websockets, https=h.https)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, h.port, ssl_context=ssl_context).start()
        if h.https:
            logger.info("HTTPS only on https://%s:%d (Strict-Transport-Security; certificate %s, picked up again "
                        "when it changes)", host, self.http_port, self.settings.tls.certificate)

    @property
    def http_port(self) -> int:
        assert self._runner is not None
        for addr in self._runner.addresses:
            return int(addr[1])
        raise RuntimeError("HTTP server is not listening")

    def reload_tls(self) -> None:
        """SIGHUP: read the TLS certificate, key, CAs and CRL again; open connections keep their session."""
        if self.scp is not None and self.settings.dicom.tls_enabled:
            logger.info("TLS files %s", "reloaded" if self.scp.reload_tls() else "not reloaded (see the error above)")

    async def health(self) -> dict[str, object]:
        assert self.service is not None, "the node is not started"
        return await self.service.health()

    async def stop(self) -> None:
        """Stop accepting associations, let in-flight stores finish, then close everything."""
        if self.scp is not None:
            await self.scp.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        if self.backend is not None:
            await self.backend.close()
        if self.store is not None:
            await self.store.close()
        logger.info("segnode stopped")


async def upgrade_store(settings: Settings) -> str:
    """`segnode db upgrade`: migrate the configured job store to the newest schema; say what happened."""
    make_dirs(settings.node.data_path)
    store = await JobStore.open(settings.store_url, record_timeout_s=settings.dicom.record_timeout_s)
    await store.close()
    return f"job store {mask_url(settings.store_url)}: schema at revision {schema_head()}"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    node = Node(settings)
    try:
        await node.start()
        with contextlib.suppress(NotImplementedError, RuntimeError):     # no signals off the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, node.reload_tls)
        await stop.wait()
        logger.info("stop requested: closing the DICOM port, finishing in-flight work")
    finally:
        await node.stop()
