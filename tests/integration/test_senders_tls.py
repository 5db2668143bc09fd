"""The C-STORE sender over DICOM TLS against a real Orthanc with DicomTlsEnabled: results arrive when both sides
trust each other; a PACS certificate that does not verify fails the attempt, retryably, with OpenSSL's reason,
and nothing is ever sent in plain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from ai.ct_basic import CtBasic
from ai.measure import measure
from ai.volume import volume_from_datasets
from node.delivery.destinations import Destination
from node.delivery.senders import make_sender
from node.errors import SendError
from node.results.dicom import encode_checked
from node.results.ids import ResultIds
from node.results.seg import build_segmentation
from node.results.sr import build_report
from node.synth.phantom import Phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.builders.certs import PASSWORD, Identity, TestPKI
from tests.peers.helpers import wait_until
from tests.peers.orthanc import OrthancProcess, TlsFiles

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::UserWarning")]

TLS_ERROR = "Receiving Association failed: TLS error"      # Orthanc's log line for each failed handshake
PLAIN_AT_TLS_PORT = "wrong version number"                # what OpenSSL says when plain DICOM reaches it




@pytest.fixture(scope="module")
def foreign_pacs(pki: TestPKI) -> Identity:
    """A PACS certificate with the right names (localhost, 127.0.0.1) from a CA Segnode does not trust."""
    return pki.other_ca.issue("ORTHANC-ELSEWHERE", sans=("DNS:localhost", "IP:127.0.0.1"))


@pytest.fixture(scope="module")
def results(small_phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A SEG and its TID 1500 SR, as the pipeline writes them."""
    datasets = phantom_datasets(small_phantom, SeriesIds())
    volume = volume_from_datasets(datasets)
    labels = CtBasic().predict(volume)
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    sources = [by_uid[u] for u in volume.source_uids]
    ids = ResultIds.for_series("tls", 1, sources[0].SeriesInstanceUID, 1)
    seg = build_segmentation(sources, labels, CtBasic.card, ids)
    measurements = measure(labels, volume.voxels, volume.spacing_mm, CtBasic.card)
    sr = build_report(seg, sources, measurements, CtBasic.card, ids, "tls", 1)
    folder = tmp_path_factory.mktemp("results")
    paths = [folder / "seg.dcm", folder / "sr.dcm"]
    for path, data in zip(paths, encode_checked(seg, sr, str(sources[0].SeriesInstanceUID), len(measurements)),
                          strict=True):
        path.write_bytes(data)
    return paths


@dataclass(frozen=True)
class Pacs:
    """A running Orthanc, emptied for this test, and where its log stood when the test began."""
    orthanc: OrthancProcess
    log_from: int

    def log(self) -> str:
        return self.orthanc.log()[self.log_from:]


@pytest.fixture(scope="module")
def orthancs(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI,
             foreign_pacs: Identity) -> Iterator[Callable[[str], OrthancProcess]]:
    """One Orthanc per setup, started when a test first asks for it and shared by the module (an Orthanc takes
    3 s to stop). "trusted": our CA's CN=ORTHANC certificate, our client certificate required; "foreign": a
    certificate from another CA; "expired": an expired one from our CA; "plain": no TLS."""
    servers = {"trusted": pki.pacs, "foreign": foreign_pacs, "expired": pki.expired}
    made: dict[str, OrthancProcess] = {}

    def get(setup: str) -> OrthancProcess:
        if setup not in made:
            server = servers.get(setup)
            tls = TlsFiles(server.cert, server.key, pki.ca.cert) if server else None
            made[setup] = OrthancProcess(tmp_path_factory.mktemp(f"orthanc-{setup}"), tls=tls).start()
        return made[setup]
    yield get
    with ThreadPoolExecutor() as pool:          # each takes its 3 s at the same time
        list(pool.map(OrthancProcess.stop, made.values()))


@pytest.fixture
def pacs(orthancs: Callable[[str], OrthancProcess]) -> Callable[[str], Pacs]:
    def get(setup: str) -> Pacs:
        o = orthancs(setup)
        o.delete_all_instances()
        return Pacs(o, len(o.log()))
    return get


def destination(pacs: Pacs, pki: TestPKI, **changes: str) -> Destination:
    o = pacs.orthanc
    keys = {"ca_file": str(pki.ca.cert), "certificate": str(pki.node.cert), "private_key": str(pki.node.key),
            **changes}
    return Destination(name="pacs", kind="dicom", host="127.0.0.1", port=o.dicom_port, ae_title=o.ae_title,
                       tls=True, **keys)


def send(dest: Destination, paths: list[Path]) -> str:
    return make_sender(dest, "SEGNODE", timeout_s=5.0).send(paths)


def stored_sop_instance_uids(o: OrthancProcess) -> set[str]:
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in o.get("/instances?expand")}


def assert_nothing_sent_in_plain(pacs: Pacs) -> None:
    """Orthanc logged one failed TLS handshake in this test, no plain DICOM at its TLS port, and holds nothing."""
    wait_until(lambda: TLS_ERROR in pacs.log(), 10, "Orthanc to log the failed handshake")
    log = pacs.log()
    assert log.count(TLS_ERROR) == 1, log
    assert PLAIN_AT_TLS_PORT not in log
    assert pacs.orthanc.get("/instances") == []


@pytest.mark.parametrize("key", ["plain key", "encrypted key"])
def test_seg_and_sr_arrive_over_tls_orthanc_requiring_our_client_certificate(
        pki: TestPKI, results: list[Path], pacs: Callable[[str], Pacs], key: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    trusted = pacs("trusted")
    if key == "encrypted key":
        monkeypatch.setenv("SEGNODE_PACS_KEY_PASSWORD", PASSWORD)
        locked = pki.encrypted_key
        dest = destination(trusted, pki, certificate=str(locked.cert), private_key=str(locked.key),
                           key_password_env="SEGNODE_PACS_KEY_PASSWORD")
    else:
        dest = destination(trusted, pki)
    confirmation = send(dest, results)
    assert "2 object(s) stored by pacs" in confirmation and "over TLS" in confirmation
    expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in results}
    o = trusted.orthanc
    assert stored_sop_instance_uids(o) == expected
    assert {o.get(f"/series/{s}")["MainDicomTags"].get("Modality") for s in o.get("/series")} == {"SEG", "SR"}
    assert TLS_ERROR not in trusted.log()


def test_a_pacs_certificate_from_another_ca_fails_retryably_and_nothing_goes_in_plain(
        pki: TestPKI, foreign_pacs: Identity, results: list[Path], pacs: Callable[[str], Pacs]) -> None:
    foreign = pacs("foreign")
    with pytest.raises(SendError) as info:
        send(destination(foreign, pki), results)
    assert info.value.retryable
    message = str(info.value)
    assert "TLS: certificate verify failed: unable to get local issuer certificate" in message, message
    assert "nothing was sent" in message
    assert_nothing_sent_in_plain(foreign)


def test_a_wrong_server_name_fails_retryably_naming_the_mismatch(
        pki: TestPKI, results: list[Path], pacs: Callable[[str], Pacs]) -> None:
    trusted = pacs("trusted")
    with pytest.raises(SendError) as info:
        send(destination(trusted, pki, server_name="pacs.example.org"), results)
    assert info.value.retryable
    assert "TLS: certificate verify failed: Hostname mismatch, certificate is not valid for 'pacs.example.org'" \
        in str(info.value)
    assert_nothing_sent_in_plain(trusted)


def test_an_expired_pacs_certificate_fails_retryably(
        pki: TestPKI, results: list[Path], pacs: Callable[[str], Pacs]) -> None:
    expired = pacs("expired")
    with pytest.raises(SendError) as info:
        send(destination(expired, pki, server_name="expired"), results)      # its name is right, its dates not
    assert info.value.retryable
    assert "TLS: certificate verify failed: certificate has expired" in str(info.value)
    assert_nothing_sent_in_plain(expired)


def test_orthanc_refusing_a_missing_client_certificate_is_named(
        pki: TestPKI, results: list[Path], pacs: Callable[[str], Pacs]) -> None:
    trusted = pacs("trusted")
    with pytest.raises(SendError) as info:
        send(destination(trusted, pki, certificate="", private_key=""), results)
    assert info.value.retryable
    assert "TLS: tlsv13 alert certificate required" in str(info.value)
    assert "none is configured (certificate)" in str(info.value)
    assert_nothing_sent_in_plain(trusted)


def test_a_tls_destination_at_a_plain_dicom_port_never_falls_back(
        pki: TestPKI, results: list[Path], pacs: Callable[[str], Pacs]) -> None:
    plain = pacs("plain")
    with pytest.raises(SendError) as info:
        send(destination(plain, pki), results)
    assert info.value.retryable
    assert "TLS: " in str(info.value) and "a DICOM TLS port?" in str(info.value)
    assert plain.orthanc.get("/instances") == []


def test_a_plain_destination_at_a_tls_port_is_refused_by_orthanc(
        pki: TestPKI, results: list[Path], pacs: Callable[[str], Pacs]) -> None:
    """The other way round, to show what a plain association looks like in Orthanc's log (see above)."""
    trusted = pacs("trusted")
    o = trusted.orthanc
    plain = Destination(name="pacs", kind="dicom", host="127.0.0.1", port=o.dicom_port, ae_title=o.ae_title)
    with pytest.raises(SendError) as info:
        send(plain, results)
    assert info.value.retryable
    wait_until(lambda: PLAIN_AT_TLS_PORT in trusted.log(), 10, "Orthanc to log a plain association at its TLS port")
    assert o.get("/instances") == []
