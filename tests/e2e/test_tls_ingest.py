"""DICOM over TLS end to end: `segnode serve` as a subprocess with its TLS port, DCMTK `storescu +tls` and
`echoscu +tls` as the scanner (OpenSSL in DCMTK, BCP 195 non-downgrading profile), certificates from the
test PKI; every answer read from DCMTK's side, every refusal from the audit trail."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread

from node.security import client_context
from node.synth.series import SeriesIds, write_series
from tests.builders.certs import Identity, TestPKI
from tests.peers.dcmtk import echoscu, storescu, tls_flags
from tests.peers.helpers import wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import OrthancProcess, TlsFiles
from tests.peers.scu import sending

PHI_NAME, PHI_ID = "Tlsname^Marker", "PHI-TLS-4242"


def tls_settings(pki: TestPKI, **more: str) -> dict[str, str]:
    return {"dicom__tls_enabled": "true", "tls__certificate": str(pki.node.cert),
            "tls__private_key": str(pki.node.key), "tls__ca_file": str(pki.ca.cert), "tls__crl_file": str(pki.crl),
            "tls__peers": "SCANNER=CN:SCANNER,ORTHANC=CN:ORTHANC", **more}


def as_scanner(identity: Identity, pki: TestPKI) -> list[str]:
    return tls_flags(identity.key, identity.cert, pki.ca.cert)


def security_rows(node: NodeProcess, action: str) -> list[dict[str, Any]]:
    return wait_until(lambda: [r for r in node.get("/api/audit")["audit"] if r["action"] == action] or None, 20,
                      f"an audit row {action!r}")


def test_storescu_over_tls_is_stored_segmented_and_no_phi_is_logged(start_node: Callable[..., NodeProcess],
                                                                     tmp_path: Path, pki: TestPKI) -> None:
    node = start_node(**tls_settings(pki))
    assert echoscu(node.tls_port, extra=as_scanner(pki.scanner, pki)).returncode == 0
    ids = SeriesIds(patient_name=PHI_NAME, patient_id=PHI_ID)
    folder = write_series(tmp_path / "ct", slices=40, rows=64, ids=ids)[0].parent
    result = storescu(node.tls_port, folder, extra=as_scanner(pki.scanner, pki))
    assert result.returncode == 0, result.stderr
    [job] = node.wait_jobs("done", 1)
    assert (job["study_instance_uid"], job["instance_count"], job["calling_ae"]) == (ids.study_instance_uid, 40,
                                                                                      "SCANNER")
    assert node.get("/api/health")["dicom"]["tls_port"] == node.tls_port
    assert PHI_NAME.split("^")[0] not in node.log() and PHI_ID not in node.log()


def test_the_plain_port_can_be_turned_off(start_node: Callable[..., NodeProcess], pki: TestPKI) -> None:
    node = start_node(**tls_settings(pki, dicom__plain_enabled="false"))
    assert echoscu(node.tls_port, extra=as_scanner(pki.scanner, pki)).returncode == 0
    assert echoscu(node.dicom_port).returncode != 0                    # nothing listens there
    assert node.get("/api/health")["dicom"]["port"] is None


def test_a_certificate_for_another_ae_and_an_expired_one_are_refused_and_audited(
        start_node: Callable[..., NodeProcess], tmp_path: Path, pki: TestPKI) -> None:
    node = start_node(**tls_settings(pki))
    wrong_ae = echoscu(node.tls_port, calling="ORTHANC", extra=as_scanner(pki.scanner, pki))
    assert wrong_ae.returncode != 0
    assert "Calling AE Title Not Recognized" in wrong_ae.stdout + wrong_ae.stderr
    [row] = security_rows(node, "refused ae/certificate")
    assert row["actor"] == "ORTHANC" and "CN=SCANNER" in row["detail"]
    expired = echoscu(node.tls_port, extra=as_scanner(pki.expired, pki))
    assert expired.returncode != 0
    assert "certificate has expired" in security_rows(node, "refused tls handshake")[0]["detail"]
    assert echoscu(node.tls_port, extra=as_scanner(pki.scanner, pki)).returncode == 0
    assert node.get("/api/health")["dicom"]["listening"]


def test_kill_9_mid_transfer_over_tls_loses_nothing_acknowledged(start_node: Callable[..., NodeProcess],
                                                                  tmp_path: Path, pki: TestPKI) -> None:
    """A pynetdicom scanner over TLS (it says which SOP instances were answered Success): kill -9 of the node
    mid-association; after a restart every acknowledged instance is in the spool and the store."""
    node = start_node(**tls_settings(pki, dicom__study_quiet_period_s="30"))
    acknowledged: list[str] = []
    context = client_context(str(pki.ca.cert), str(pki.scanner.cert), str(pki.scanner.key))
    thread = sending(node.tls_port, write_series(tmp_path / "ct", slices=300, rows=64), acknowledged, tls=context)
    wait_until(lambda: len(acknowledged) >= 40, 60, "40 acknowledged instances")
    assert node.kill(signal.SIGKILL) == -signal.SIGKILL
    thread.join(60)
    assert not thread.is_alive(), "the sender was left waiting on a TLS association nobody serves"
    assert 40 <= len(acknowledged) < 300, "the kill should have come mid-transfer"
    node.start()
    stored = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in node.spooled()}
    assert set(acknowledged) <= stored
    assert node.jobs("receiving")[0]["instance_count"] == len(stored)


def test_orthanc_forwards_a_study_to_segnode_over_tls(start_node: Callable[..., NodeProcess], tmp_path: Path,
                                                      pki: TestPKI) -> None:
    """Orthanc 1.10 with DicomTlsEnabled, Segnode registered with UseDicomTls: the study crosses in TLS, Orthanc
    presenting its own certificate (CN=ORTHANC), which [tls] peers binds to its AE title."""
    node = start_node(**tls_settings(pki))
    orthanc = OrthancProcess(tmp_path / "orthanc", tls=TlsFiles(pki.pacs.cert, pki.pacs.key, pki.ca.cert))
    orthanc.forward_to(node.tls_port, tls=True)
    orthanc.config["LuaScripts"] = []                       # forwarded by hand below, once stored
    orthanc.start()
    try:
        paths = write_series(tmp_path / "s", slices=20, rows=64, ids=SeriesIds())
        stored = storescu(orthanc.dicom_port, paths, called="ORTHANC", extra=as_scanner(pki.scanner, pki))
        assert stored.returncode == 0, stored.stderr
        study_id = orthanc.get("/studies")[0]
        job = orthanc.post("/modalities/segnode/store", {"Resources": [study_id], "Synchronous": True})
        assert job["InstancesCount"] == 20 and job["FailedInstancesCount"] == 0
    finally:
        orthanc.stop()
    [job] = node.wait_jobs("done", 1)
    assert (job["calling_ae"], job["instance_count"]) == ("ORTHANC", 20)
