"""The Storage SCP against a real pynetdicom SCU on loopback: every answer checked from the sender's side."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, RTPlanStorage, Verification

from node.app import Node
from node.intake.wire.dimse import StoreStatus
from tests.peers.helpers import async_wait_until
from tests.peers.raw_dicom import associate_rq, raw, read_all
from tests.peers.scu import SCU_HANDLERS, scu, send
from tests.support import running_node


async def test_a_series_is_stored_recorded_queued_and_segmented(store_node: Node, ct_series: list[Dataset]) -> None:
    node = store_node
    statuses = await send(node, ct_series)
    assert {s.Status for s in statuses} == {StoreStatus.SUCCESS}
    spooled = sorted(node.spool.iter_instances())
    assert len(spooled) == len(ct_series)
    stored = dcmread(spooled[0])
    assert stored.StudyInstanceUID == ct_series[0].StudyInstanceUID
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    async def done():
        return await node.store.list_jobs(state="done")
    jobs = await async_wait_until(done, 20, "the study to be segmented")
    assert len(jobs) == 1 and jobs[0].instance_count == len(ct_series)
    assert jobs[0].model == "ct-basic" and jobs[0].calling_ae == "SCANNER"
    states = [e.state for e in await node.store.events(jobs[0].id)]
    assert states[0] == "receiving" and states[-3:] == ["running", "sending", "done"]
    assert "queued" in states


async def test_a_resent_instance_is_acknowledged_and_kept_once(store_node: Node, ct_series: list[Dataset]) -> None:
    node = store_node
    statuses = await send(node, ct_series[:2] + ct_series[:2])
    assert [s.Status for s in statuses] == [0, 0, 0, 0]
    assert await node.store.instance_count() == 2
    assert len(list(node.spool.iter_instances())) == 2


def _with(ds: Dataset, **changes: object) -> Dataset:
    out = copy.deepcopy(ds)
    for k, v in changes.items():
        if v is None:
            delattr(out, k)
        else:
            setattr(out, k, v)
    return out


@pytest.mark.parametrize(("changes", "status", "comment"), [
    ({"StudyInstanceUID": None}, StoreStatus.CANNOT_UNDERSTAND, "StudyInstanceUID is missing"),
    ({"SeriesInstanceUID": "1." + "9" * 70}, StoreStatus.CANNOT_UNDERSTAND, "SeriesInstanceUID is longer than 64"),
    ({"StudyInstanceUID": "../../etc"}, StoreStatus.CANNOT_UNDERSTAND, "StudyInstanceUID has characters other"),
    ({"SeriesInstanceUID": "1.2/3"}, StoreStatus.CANNOT_UNDERSTAND, "SeriesInstanceUID has characters other"),
    ({"PixelData": None}, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "image without Pixel Data"),
    ({"SOPClassUID": MRImageStorage}, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
     "SOPClassUID differs from the negotiated SOP class"),
])
@pytest.mark.filterwarnings("ignore:The value length:UserWarning", "ignore:Invalid value for VR UI:UserWarning")
async def test_bad_datasets_get_a_named_status_and_comment(node: Node, ct_series: list[Dataset], tmp_path: Path,
                                                           changes: dict, status: StoreStatus, comment: str) -> None:
    bad = _with(ct_series[0], **changes)
    # The file meta keeps CT Image Storage, so pynetdicom sends the bytes, as they are, under the CT context.
    path = tmp_path / "bad.dcm"
    bad.file_meta.MediaStorageSOPClassUID = CTImageStorage
    bad.file_meta.MediaStorageSOPInstanceUID = ct_series[0].SOPInstanceUID
    bad.preamble = b"\0" * 128
    bad.save_as(path, enforce_file_format=False)
    rsp = await send_file(node, path)
    assert rsp.Status == status
    assert comment in rsp.ErrorComment
    assert list(node.spool.iter_instances()) == []
    assert await node.store.instance_count() == 0


@pytest.fixture(autouse=True)
def stream_files_undecoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom send a file's dataset bytes as they are, so a test can send what pydicom would not."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


async def send_file(node: Node, path: Path) -> Dataset:
    def run() -> Dataset:
        assoc = scu().associate("127.0.0.1", node.scp.port, evt_handlers=SCU_HANDLERS, ae_title="SEGNODE")
        try:
            return assoc.send_c_store(path)        # pynetdicom streams the file's dataset bytes undecoded
        finally:
            assoc.release()
    return await asyncio.to_thread(run)


async def test_undecodable_bytes_are_refused_with_cannot_understand(node: Node, ct_files: list[Path],
                                                                    tmp_path: Path) -> None:
    good = ct_files[0].read_bytes()
    ds = dcmread(ct_files[0])
    broken = tmp_path / "broken.dcm"
    meta_end = good.index(b"\x08\x00\x05\x00")    # first dataset element after the file meta
    broken.write_bytes(good[:meta_end] + b"\x08\x00\x16\x00UI\xff\xff" + b"garbage" * 10)

    rsp = await send_file(node, broken)
    assert rsp.Status in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert rsp.ErrorComment
    assert not (node.spool.root / ds.StudyInstanceUID).exists()


async def test_disk_below_the_floor_answers_out_of_resources(tmp_path: Path, ct_series: list[Dataset]) -> None:
    async with running_node(tmp_path, dicom__min_free_disk_mb=str(10**9)) as node:
        rsp = (await send(node, ct_series[:1]))[0]
    assert rsp.Status == StoreStatus.OUT_OF_RESOURCES
    assert "out of disk space" in rsp.ErrorComment


async def test_an_sop_class_we_do_not_store_is_refused_at_negotiation(node: Node) -> None:
    def run():
        assoc = scu().associate("127.0.0.1", node.scp.port, evt_handlers=SCU_HANDLERS, ae_title="SEGNODE")
        try:
            return ({c.abstract_syntax for c in assoc.accepted_contexts},
                    {c.abstract_syntax for c in assoc.rejected_contexts})
        finally:
            assoc.release()
    accepted, rejected = await asyncio.to_thread(run)
    assert CTImageStorage in accepted and Verification in accepted
    assert RTPlanStorage in rejected


async def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(tmp_path: Path) -> None:
    """Read from the wire (a pynetdicom SCU can report a fast rejection as an abort: its reactor may close the
    socket on the A-ASSOCIATE-RJ before its association thread looks): AC for a known AE, RJ with the reason
    for an unknown calling AE (1, 1, 3) and for another called AE (1, 1, 7)."""
    async with running_node(tmp_path, dicom__allowed_calling_aes="SCANNER,PACS") as node:
        def answer(calling: str, called: str) -> bytes:
            sock = raw(node.scp.port)
            try:
                sock.sendall(associate_rq(called=called, calling=calling))
                if calling == "PACS" and called == "SEGNODE":
                    return sock.recv(1)
                return read_all(sock)
            finally:
                sock.close()
        assert await asyncio.to_thread(answer, "PACS", "SEGNODE") == b"\x02"            # A-ASSOCIATE-AC
        intruder = await asyncio.to_thread(answer, "INTRUDER", "SEGNODE")
        assert intruder[0] == 0x03 and intruder[7:10] == bytes((1, 1, 3))               # calling AE not recognised
        elsewhere = await asyncio.to_thread(answer, "PACS", "SOMEONEELSE")
        assert elsewhere[0] == 0x03 and elsewhere[7:10] == bytes((1, 1, 7))             # called AE not recognised


async def test_echo_answers_success(node: Node) -> None:
    def run() -> int:
        assoc = scu().associate("127.0.0.1", node.scp.port, evt_handlers=SCU_HANDLERS, ae_title="SEGNODE")
        try:
            return int(assoc.send_c_echo().Status)
        finally:
            assoc.release()
    assert await asyncio.to_thread(run) == 0


async def test_instances_of_two_studies_make_two_jobs(node: Node, ct_series: list[Dataset]) -> None:
    other_study = generate_uid()
    second = [_with(ds, StudyInstanceUID=other_study, SOPInstanceUID=generate_uid()) for ds in ct_series]
    await send(node, ct_series + second)

    async def done():
        jobs = await node.store.list_jobs(state="done")
        return jobs if len(jobs) == 2 else None
    jobs = await async_wait_until(done, 20, "two segmented jobs")
    assert {j.study_instance_uid for j in jobs} == {ct_series[0].StudyInstanceUID, other_study}


async def test_a_busy_job_store_answers_out_of_resources_and_the_resend_is_kept(
        tmp_path: Path, ct_series: list[Dataset], store_url: str) -> None:
    async with running_node(tmp_path, dicom__record_timeout_s="0.5", store__url=store_url) as node:
        async with node.store.writer_lock.hold():             # another writer holds the store past the timeout
            busy = (await send(node, ct_series[:1]))[0]
        again = (await send(node, ct_series[:1]))[0]
        jobs = await node.store.list_jobs()
    assert busy.Status == StoreStatus.OUT_OF_RESOURCES
    assert "job store unavailable" in busy.ErrorComment
    assert again.Status == StoreStatus.SUCCESS
    assert [j.instance_count for j in jobs] == [1]
