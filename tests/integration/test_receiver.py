"""The receiver's upper layer (a thread per association) against raw sockets and a pynetdicom SCU: ARTIM,
DIMSE and idle timeouts, peers that vanish mid-PDU or abort, oversized PDUs, PDU sizes, the association limit."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.app import Node
from node.intake.wire.dimse import StoreStatus
from tests.peers.helpers import wait_until
from tests.peers.raw_dicom import associate_rq, established, raw, read_all
from tests.peers.scu import SCU_HANDLERS, scu, send
from tests.support import running_node

TIMEOUTS = {"dicom__acse_timeout_s": "0.5", "dicom__dimse_timeout_s": "0.5",
            "dicom__network_timeout_s": "0.8"}


@pytest.fixture
async def quick_node(tmp_path: Path) -> AsyncIterator[Node]:
    """Short timeouts."""
    async with running_node(tmp_path, **TIMEOUTS) as node:
        yield node


async def test_artim_closes_a_connection_that_never_asks(quick_node: Node) -> None:
    sock = await asyncio.to_thread(raw, quick_node.scp.port)
    data = await asyncio.to_thread(read_all, sock)          # the node closes it after acse_timeout_s
    assert data == b"" or data[0] == 0x07


async def test_an_idle_association_is_aborted(quick_node: Node) -> None:
    sock = await asyncio.to_thread(established, quick_node.scp.port)
    assert (await asyncio.to_thread(read_all, sock))[:1] == b"\x07"     # A-ABORT after network_timeout_s


async def test_a_message_left_half_sent_is_aborted_after_the_dimse_timeout(quick_node: Node) -> None:
    sock = await asyncio.to_thread(established, quick_node.scp.port)
    pdv = b"\x01" + b"\x00" * 10                            # a command fragment, not the last one
    item = (len(pdv) + 1).to_bytes(4, "big") + b"\x01" + pdv
    sock.sendall(b"\x04\x00" + len(item).to_bytes(4, "big") + item)
    assert (await asyncio.to_thread(read_all, sock))[:1] == b"\x07"


async def test_a_peer_vanishing_mid_pdu_leaves_the_node_serving(quick_node: Node, ct_series: list[Dataset]) -> None:
    sock = await asyncio.to_thread(established, quick_node.scp.port)
    sock.sendall(b"\x04\x00\x00\x01\x00\x00" + b"\x00" * 100)  # says 65536 bytes, sends 100, goes away
    sock.close()
    assert {s.Status for s in await send(quick_node, ct_series[:2])} == {StoreStatus.SUCCESS}
    assert await quick_node.store.instance_count() == 2


async def test_a_pdu_above_the_limit_is_aborted(tmp_path: Path) -> None:
    async with running_node(tmp_path, dicom__max_pdu_bytes="4096") as node:
        sock = await asyncio.to_thread(established, node.scp.port)
        sock.sendall(b"\x04\x00" + (10**6).to_bytes(4, "big"))
        assert (await asyncio.to_thread(read_all, sock))[:1] == b"\x07"


async def test_an_sender_abort_keeps_what_was_acknowledged(quick_node: Node, ct_series: list[Dataset]) -> None:
    def run() -> list[int]:
        assoc = scu().associate("127.0.0.1", quick_node.scp.port, evt_handlers=SCU_HANDLERS, ae_title="SEGNODE")
        statuses = [int(assoc.send_c_store(ds).Status) for ds in ct_series[:3]]
        assoc.abort()
        return statuses
    assert await asyncio.to_thread(run) == [0, 0, 0]
    assert {s.Status for s in await send(quick_node, ct_series[3:5])} == {StoreStatus.SUCCESS}
    assert await quick_node.store.instance_count() == 5


@pytest.mark.parametrize("max_pdu", ["4096", "16384", "1048576", "0"])
async def test_every_pdu_size_stores_the_same_bytes(tmp_path: Path, ct_series: list[Dataset], max_pdu: str) -> None:
    async with running_node(tmp_path, dicom__max_pdu_bytes=max_pdu) as node:
        assert {s.Status for s in await send(node, ct_series[:3])} == {StoreStatus.SUCCESS}
        stored = sorted(node.spool.iter_instances())
    assert len(stored) == 3


async def test_one_association_stores_refuses_and_echoes(tmp_path: Path, ct_series: list[Dataset]) -> None:
    async with running_node(tmp_path) as node:
        bad = Dataset()
        bad.update(ct_series[0])
        bad.file_meta = ct_series[0].file_meta
        del bad.PixelData
        statuses = await send(node, [*ct_series[:2], bad])

        def echo() -> int:
            assoc = scu().associate("127.0.0.1", node.scp.port, evt_handlers=SCU_HANDLERS, ae_title="SEGNODE")
            try:
                return int(assoc.send_c_echo().Status)
            finally:
                assoc.release()
        assert await asyncio.to_thread(echo) == 0
        assert await node.store.instance_count() == 2
    assert [s.Status for s in statuses[:2]] == [StoreStatus.SUCCESS] * 2
    assert statuses[2].Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert statuses[2].ErrorComment == "image without Pixel Data"


async def test_a_sender_s_second_association_gets_the_first_one_s_answer(quick_node: Node,
                                                                        ct_series: list[Dataset]) -> None:
    """The same A-ASSOCIATE-RQ gets the same answer (the receiver keeps accepted negotiations); a rejected
    one stays rejected however often it is sent."""
    first = await send(quick_node, ct_series[:1])
    second = await send(quick_node, ct_series[1:2])
    assert [s.Status for s in first + second] == [StoreStatus.SUCCESS] * 2

    def rejected() -> bytes:
        sock = raw(quick_node.scp.port)
        sock.sendall(associate_rq(called="SOMEONE_ELSE"))
        return read_all(sock)
    for _ in range(2):
        answer = await asyncio.to_thread(rejected)
        assert answer[0] == 0x03 and answer[7:10] == bytes((1, 1, 7))    # A-ASSOCIATE-RJ, called AE not known
    assert [s.Status for s in await send(quick_node, ct_series[2:3])] == [StoreStatus.SUCCESS]


async def test_a_peer_trickling_its_request_is_cut_off_at_the_deadline(quick_node: Node) -> None:
    """ARTIM bounds the whole A-ASSOCIATE-RQ, not each read: one byte every 0.2 s (a read never waits
    0.5 s) is aborted within twice acse_timeout_s = 0.5 s, not kept for the ~15 s the request would take."""
    def trickle() -> float:
        sock = raw(quick_node.scp.port)
        start = time.monotonic()
        try:
            for byte in associate_rq():
                sock.sendall(bytes((byte,)))
                time.sleep(0.2)
                if select.select([sock], [], [], 0)[0]:
                    break                                   # the node answered (A-ABORT) or closed it
        except OSError:
            pass
        return time.monotonic() - start
    assert await asyncio.to_thread(trickle) < 3.0


async def test_an_association_idle_between_messages_waits_the_network_timeout_not_the_dimse_one(
        tmp_path: Path, ct_series: list[Dataset]) -> None:
    """After a reply the idle wait is network_timeout_s: a reply sent with the DIMSE timeout must not leave
    that shorter timeout on the socket for the wait between messages (a C-ECHO comes in one PDU, read with
    the network timeout, so nothing else resets it)."""
    async with running_node(tmp_path, **{**TIMEOUTS, "dicom__dimse_timeout_s": "0.3",
                                        "dicom__network_timeout_s": "5"}) as n:
        assert n.scp is not None
        port = n.scp.port

        def pause_between_stores() -> list[int]:
            assoc = scu("SCANNER").associate("127.0.0.1", port, evt_handlers=SCU_HANDLERS, ae_title="SEGNODE")
            assert assoc.is_established
            try:
                first = assoc.send_c_echo()
                time.sleep(1.0)             # idle: longer than the DIMSE timeout, well within the network one
                assert assoc.is_established, "the node aborted an association idle for less than network_timeout_s"
                second = assoc.send_c_store(ct_series[1])
                return [first.Status, second.Status]
            finally:
                if assoc.is_established:
                    assoc.release()
        assert await asyncio.to_thread(pause_between_stores) == [StoreStatus.SUCCESS, StoreStatus.SUCCESS]


async def test_max_associations_rejects_the_next_until_one_has_ended(tmp_path: Path) -> None:
    """max_associations 2: the third association is rejected (transient, local limit), and is accepted again
    once one of the two has ended."""
    async with running_node(tmp_path, **{**TIMEOUTS, "dicom__network_timeout_s": "30"},
                            dicom__max_associations="2") as node:
        port = node.scp.port if node.scp else 0
        first, second = [await asyncio.to_thread(established, port) for _ in range(2)]

        def third() -> bytes:
            sock = raw(port)
            sock.sendall(associate_rq())
            return read_all(sock)
        answer = await asyncio.to_thread(third)
        assert answer[0] == 0x03 and answer[7:10] == bytes((2, 3, 2))     # A-ASSOCIATE-RJ, local limit exceeded
        first.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")          # A-RELEASE-RQ
        assert (await asyncio.to_thread(read_all, first))[:1] == b"\x06"   # A-RELEASE-RP, then closed

        def accepted_again() -> bool:
            sock = raw(port)
            try:
                sock.sendall(associate_rq())
                return sock.recv(1)[:1] == b"\x02"
            finally:
                sock.close()
        await asyncio.to_thread(wait_until, accepted_again, 10, "an association accepted again")
        second.close()
