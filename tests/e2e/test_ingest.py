"""Ingest end to end: `segnode serve` as a subprocess, DCMTK storescu/echoscu as the scanner."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless, RLELossless
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage

from node.synth.series import TRANSFER_SYNTAXES, SeriesIds, write_series
from node.tcp import on_conn_open
from tests.peers.dcmtk import echoscu, storescu
from tests.peers.helpers import wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import OrthancProcess
from tests.peers.scu import sending

PHI_NAME, PHI_ID = "Xyzzy^Plugh", "PHI-MARKER-4711"


def test_storescu_series_in_six_transfer_syntaxes_are_stored_as_received_and_segmented(
        start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    node = start_node()
    assert echoscu(node.dicom_port).returncode == 0
    sent: dict[str, tuple[str, int]] = {}          # study UID -> (transfer syntax UID, instances)
    for ts, slices in (("explicit", 100), ("implicit", 12), ("deflated", 12), ("rle", 12), ("jpeg-ls", 12),
                       ("jpeg2000", 12)):
        ids = SeriesIds(patient_name=PHI_NAME, patient_id=PHI_ID)
        folder = write_series(tmp_path / ts, slices=slices, rows=128, transfer_syntax=ts, ids=ids)[0].parent
        result = storescu(node.dicom_port, folder, transfer_syntax=ts)
        assert result.returncode == 0, result.stderr
        sent[ids.study_instance_uid] = (TRANSFER_SYNTAXES[ts], slices)

    jobs = node.wait_jobs("done", len(sent))
    assert {j["study_instance_uid"]: j["instance_count"] for j in jobs} == {k: v[1] for k, v in sent.items()}
    assert all(j["model"] == "ct-basic" and j["calling_ae"] == "SCANNER" for j in jobs)
    files = node.spooled()
    assert len(files) == sum(n for _, n in sent.values())
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == sent[ds.StudyInstanceUID][0], "not stored as received"
    health = node.get("/api/health")
    assert health["ok"] and health["jobs"] == {"done": len(sent)}
    assert PHI_NAME.split("^")[0] not in node.log() and PHI_ID not in node.log()


def test_a_calling_ae_not_on_the_allow_list_is_rejected(start_node: Callable[..., NodeProcess]) -> None:
    node = start_node(dicom__allowed_calling_aes="PACS")
    assert echoscu(node.dicom_port, calling="PACS").returncode == 0
    refused = echoscu(node.dicom_port, calling="STRANGER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    wrong = echoscu(node.dicom_port, calling="PACS", called="NOTME")
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr


def test_an_unsupported_sop_class_is_refused_at_negotiation(start_node: Callable[..., NodeProcess],
                                                            tmp_path: Path) -> None:
    node = start_node()
    path = write_series(tmp_path / "x", slices=1, rows=32)[0]
    ds = dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"   # RT Plan
    ds.save_as(path, enforce_file_format=True)
    result = storescu(node.dicom_port, [path], extra=["-R"])
    assert result.returncode != 0
    assert "No presentation context" in result.stdout + result.stderr or "no acceptable" in result.stderr.lower()
    assert node.spooled() == []


def test_kill_9_right_after_success_loses_nothing(start_node: Callable[..., NodeProcess], tmp_path: Path,
                                                 store_url: str) -> None:
    node = start_node(dicom__study_quiet_period_s="30", store__url=store_url)
    ids = SeriesIds()
    folder = write_series(tmp_path / "ct", slices=100, rows=96, ids=ids)[0].parent
    assert storescu(node.dicom_port, folder).returncode == 0
    assert node.kill(signal.SIGKILL) == -signal.SIGKILL          # no chance to flush anything
    node.env["SEGNODE_DICOM__STUDY_QUIET_PERIOD_S"] = "1"
    node.start()
    jobs = node.wait_jobs("done", 1)
    assert [(j["study_instance_uid"], j["instance_count"]) for j in jobs] == [(ids.study_instance_uid, 100)]
    assert len(node.spooled()) == 100


def test_500_instances_over_4_parallel_associations(start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    node = start_node()
    folders = []
    for study in range(2):
        paths = write_series(tmp_path / f"s{study}", slices=250, rows=64, ids=SeriesIds())
        folders += [paths[:125], paths[125:]]
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda f=f: results.append(storescu(node.dicom_port, f))) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    jobs = node.wait_jobs("done", 2)
    assert sorted(j["instance_count"] for j in jobs) == [250, 250]
    assert len(node.spooled()) == 500
    assert node.get("/api/health")["instances_received"] == 500


def lenient_scanner_sends(port: int, datasets: list[Dataset]) -> list[Dataset]:
    """A scanner that sends whatever UIDs its files hold: pynetdicom's SCU in this test process is told not to
    judge them (its process-wide UID validator; the node under test runs in its own process)."""
    saved = _config.VALIDATORS["UI"]
    _config.VALIDATORS["UI"] = lambda _value: (True, "")
    try:
        ae = AE(ae_title="SCANNER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE", evt_handlers=[(evt.EVT_CONN_OPEN, on_conn_open)])
        assert assoc.is_established
        try:
            return [assoc.send_c_store(ds) for ds in datasets]
        finally:
            assoc.release()
    finally:
        _config.VALIDATORS["UI"] = saved


def test_sigterm_mid_transfer_keeps_every_acknowledged_instance(start_node: Callable[..., NodeProcess],
                                                                tmp_path: Path) -> None:
    node = start_node(dicom__study_quiet_period_s="30")
    acknowledged: list[str] = []
    t = sending(node.dicom_port, write_series(tmp_path / "ct", slices=300, rows=64), acknowledged)
    wait_until(lambda: len(acknowledged) >= 40, 30, "40 acknowledged instances")
    assert node.kill(signal.SIGTERM) == 0
    t.join(30)
    assert 40 <= len(acknowledged) < 300, "the stop should have come mid-transfer"
    assert "segnode stopped" in node.log()
    node.start()
    stored = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in node.spooled()}
    assert set(acknowledged) <= stored
    job = node.jobs("receiving")[0]
    assert job["instance_count"] == len(stored)


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEGLSLossless])
def test_compressed_instances_keep_their_pixels_bit_for_bit(start_node: Callable[..., NodeProcess],
                                                             tmp_path: Path, transfer_syntax: str) -> None:
    name = {RLELossless: "rle", JPEGLSLossless: "jpeg-ls"}[transfer_syntax]
    node = start_node()
    paths = write_series(tmp_path / name, slices=3, rows=64, transfer_syntax=name)
    assert storescu(node.dicom_port, paths, transfer_syntax=name).returncode == 0
    by_uid = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    for stored in node.spooled():
        got = dcmread(stored)
        assert (got.pixel_array == by_uid[got.SOPInstanceUID].pixel_array).all()




def test_orthanc_forwarding_a_study_is_received_whole(start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    node = start_node()
    orthanc = OrthancProcess(tmp_path / "orthanc")
    orthanc.config["DicomModalities"] = {"segnode": ["SEGNODE", "127.0.0.1", node.dicom_port]}
    orthanc.start()
    try:
        paths = write_series(tmp_path / "s", slices=40, rows=64, ids=SeriesIds())
        assert storescu(orthanc.dicom_port, paths, called="ORTHANC").returncode == 0
        study_id = orthanc.get("/studies")[0]
        job = orthanc.post("/modalities/segnode/store", {"Resources": [study_id], "Synchronous": True})
        assert job["InstancesCount"] == 40 and job["FailedInstancesCount"] == 0
    finally:
        orthanc.stop()
    wait_until(lambda: node.get("/api/health")["instances_received"] == 40, 20, "every forwarded instance")
    assert len(node.spooled()) == 40


def test_kill_9_of_the_node_mid_transfer_loses_nothing(start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """kill -9 while an association is being served: the sender is cut off (not left waiting), and every
    instance acknowledged before is in the spool and the store after the restart."""
    node = start_node(dicom__study_quiet_period_s="30")
    acknowledged: list[str] = []
    t = sending(node.dicom_port, write_series(tmp_path / "ct", slices=300, rows=64), acknowledged)
    wait_until(lambda: len(acknowledged) >= 40, 30, "40 acknowledged instances")
    assert node.kill(signal.SIGKILL) == -signal.SIGKILL
    t.join(30)
    assert not t.is_alive(), "the sender was left waiting on an association nobody serves"
    assert 40 <= len(acknowledged) < 300, "the kill should have come mid-transfer"
    node.start()
    stored = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in node.spooled()}
    assert set(acknowledged) <= stored
    assert node.jobs("receiving")[0]["instance_count"] == len(stored)


def test_a_93_character_sop_instance_uid_is_refused_by_name_in_the_node_s_own_process(
        start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """The node as `segnode serve` (its own interpreter: nothing a test imported decides for it) answers an
    over-long UID in the C-STORE command with a named 0xC000, not an A-ABORT, and goes on with the next."""
    node = start_node()
    good, long_uid = write_series(tmp_path / "ct", slices=2, rows=64)
    bad = dcmread(long_uid)
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = "1.2." + "3" * 89
    statuses = lenient_scanner_sends(node.dicom_port, [bad, dcmread(good)])
    assert [(s.Status, s.get("ErrorComment")) for s in statuses] == [
        (0xC000, "SOPInstanceUID is longer than 64 characters"), (0x0000, None)]
    assert len(node.spooled()) == 1
