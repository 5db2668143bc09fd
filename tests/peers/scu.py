"""A pynetdicom SCU for in-process tests: what a scanner sends, answered by a running Node, and the job it ends in."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, RTPlanStorage, Verification

from node.app import Node
from node.jobs.records import JobView
from node.tcp import on_conn_open
from tests.peers.helpers import async_wait_until, scaled


def _scu_connection(event: evt.Event) -> None:
    """At connection open: TCP_NODELAY (the SCU side of the trap), and no response taken by the reactor.

    pynetdicom 3.0.4's SCU pauses its reactor thread before each request, but can see a stale "paused"
    flag and send while the reactor is about to poll the message queue once more; a response that
    arrives inside that window is taken by the reactor, logged as "unexpected C-STORE service message",
    and dropped, and the SCU then waits out its DIMSE timeout. A node answering in ~1 ms in this same
    process (sharing the GIL, so the reactor thread can stall in that window) hits it. A test SCU serves
    no requests, so its reactor never needs a message: only the SCU's own blocking reads get them.
    """
    on_conn_open(event)
    dimse = event.assoc.dimse
    blocking_get = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[int | None, object | None]:
        return blocking_get(block=True) if block else (None, None)
    dimse.get_msg = get_msg


SCU_HANDLERS = [(evt.EVT_CONN_OPEN, _scu_connection)]
# 30 s (times TIME_SCALE): on a loaded 2-core CI machine an answer can take well over 10 s, and a sender
# that gives up aborts the association, which a test would misread as the node's doing.
SCU_TIMEOUT_S = scaled(30)


def scu(calling: str = "SCANNER", timeout_s: float = SCU_TIMEOUT_S) -> AE:
    """A scanner-like SCU (ACSE, DIMSE and network timeouts `timeout_s`)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop in (CTImageStorage, MRImageStorage, RTPlanStorage):
        ae.add_requested_context(sop, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    return ae


async def send(node: Node, datasets: list[Dataset], calling: str = "SCANNER", called: str = "SEGNODE") -> list[Dataset]:
    """C-STORE every dataset on one association; the responses, in order."""
    assert node.scp is not None, "the node is not started"
    port = node.scp.port

    def run() -> list[Dataset]:
        assoc = scu(calling).associate("127.0.0.1", port, evt_handlers=SCU_HANDLERS, ae_title=called)
        assert assoc.is_established, "association was not accepted"
        try:
            return [assoc.send_c_store(ds) for ds in datasets]
        finally:
            assoc.release()
    return await asyncio.to_thread(run)


def send_files_to(port: int, paths: list[Path], called: str = "SEGNODE", calling: str = "SCANNER",
                  timeout_s: float = SCU_TIMEOUT_S) -> list[Dataset | None]:
    """C-STORE each file's bytes exactly as they are on disk (no decode, no re-encode), blocking.

    None for a file the association could not carry (it was aborted); the next file gets a new one.
    """
    saved, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    out: list[Dataset | None] = []
    assoc = None
    try:
        for path in paths:
            if assoc is None or not assoc.is_established:
                assoc = scu(calling, timeout_s).associate("127.0.0.1", port, evt_handlers=SCU_HANDLERS, ae_title=called)
                assert assoc.is_established, "association was not accepted"
            status = assoc.send_c_store(path)
            out.append(status if status else None)
        return out
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        if assoc is not None and assoc.is_established:
            assoc.release()


async def send_files(node: Node, paths: list[Path], calling: str = "SCANNER") -> list[Dataset | None]:
    """`send_files_to` the running node, off the event loop."""
    assert node.scp is not None, "the node is not started"
    return await asyncio.to_thread(send_files_to, node.scp.port, paths, "SEGNODE", calling)


async def final_job(node: Node, study_instance_uid: str, timeout_s: float = 30) -> JobView:
    """The study's job once it is done or failed."""
    async def ended() -> JobView | None:
        jobs = await node.store.list_jobs(study_instance_uid=study_instance_uid)
        return jobs[0] if jobs and jobs[0].state in ("done", "failed") else None
    return await async_wait_until(ended, timeout_s, f"study {study_instance_uid[-8:]} to finish")


def sending(port: int, paths: list[Path], acknowledged: list[str],
            tls: ssl.SSLContext | None = None) -> threading.Thread:
    """A pynetdicom scanner sending `paths` on one association (over TLS with `tls`, to host "localhost"), on
    a thread; each SOP Instance UID answered Success is appended to `acknowledged`. It stops at the first
    instance after the association is gone (a connection closed without an A-ABORT can leave pynetdicom
    waiting for its DIMSE timeout: 10 s here)."""
    datasets = [dcmread(p) for p in paths]

    def sender() -> None:
        ae = AE(ae_title="SCANNER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE", evt_handlers=[(evt.EVT_CONN_OPEN, on_conn_open)],
                             tls_args=(tls, "localhost") if tls is not None else None)
        for ds in datasets:
            if not assoc.is_established:
                break
            if getattr(assoc.send_c_store(ds), "Status", None) == 0:
                acknowledged.append(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.release()
    thread = threading.Thread(target=sender)
    thread.start()
    return thread
