"""The DICOM TLS port, in this process: real TLS (OpenSSL through `ssl`) from pynetdicom SCUs and raw TLS
clients, with the certificates of a test PKI made by the openssl CLI. Every refusal is checked from the
sender's side and in the audit trail, and the node keeps serving everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from node.app import Node
from node.errors import ConfigError
from node.intake.wire.dimse import StoreStatus
from node.security import client_context
from tests.builders.certs import PASSWORD, Identity, TestPKI
from tests.peers.helpers import async_wait_until, scaled
from tests.peers.raw_dicom import associate_rq
from tests.peers.scu import SCU_HANDLERS
from tests.support import running_node


def tls_env(pki: TestPKI, **more: str) -> dict[str, str]:
    return {"dicom__tls_enabled": "true", "tls__certificate": str(pki.node.cert), "tls__private_key": str(pki.node.key),
            "tls__ca_file": str(pki.ca.cert), "tls__crl_file": str(pki.crl),
            "tls__peers": "SCANNER=CN:SCANNER,PACS=CN:ORTHANC", "tls__handshake_timeout_s": "1", **more}


@pytest.fixture
async def tls_node(tmp_path: Path, pki: TestPKI) -> AsyncIterator[Node]:
    async with running_node(tmp_path, **tls_env(pki)) as node:
        yield node


def client(identity: Identity | None, pki: TestPKI, **ctx: Any) -> ssl.SSLContext:
    context = client_context(str(pki.ca.cert), str(identity.cert) if identity else "",
                             str(identity.key) if identity else "")
    for key, value in ctx.items():
        if key == "ciphers":
            context.set_ciphers(value)
        else:
            setattr(context, key, value)
    return context


def associate(port: int, context: ssl.SSLContext | None, calling: str = "SCANNER") -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = scaled(10)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="SEGNODE", evt_handlers=SCU_HANDLERS,
                        tls_args=(context, "localhost") if context is not None else None)


def store_over(port: int, context: ssl.SSLContext | None, datasets: list[Dataset], calling: str = "SCANNER",
               ) -> list[int]:
    assoc = associate(port, context, calling)
    assert assoc.is_established, "association not established"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def rq_over_tls(port: int, context: ssl.SSLContext, calling: str) -> bytes:
    """An A-ASSOCIATE-RQ over TLS and every byte of the answer, read from the wire (a pynetdicom SCU can report
    a fast rejection as an abort)."""
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(associate_rq(calling=calling))
        chunks = []
        with contextlib.suppress(ssl.SSLError, OSError):
            while chunk := tls.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


async def audit_of(node: Node, action: str) -> list[dict[str, Any]]:
    assert node.store is not None

    async def rows() -> list[dict[str, Any]] | None:
        found = [r for r in await node.store.audit_log() if r["action"] == action]
        return found or None
    return await async_wait_until(rows, 10, f"an audit row {action!r}")


def raw_tls(port: int, context: ssl.SSLContext) -> bytes:
    """Open TLS to `port` and read what the node says: b"" if it closed, or the error the client saw."""
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock:
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(b"\x01\x00\x00\x00\x00\x04")          # a PDU header: the server's verdict follows
                return tls.recv(64)
        except (ssl.SSLError, OSError) as exc:
            return repr(exc).encode()


async def test_a_scanner_with_its_certificate_stores_and_echoes_over_tls(tls_node: Node, pki: TestPKI,
                                                                         ct_series: list[Dataset]) -> None:
    assert tls_node.scp is not None and tls_node.store is not None
    statuses = await asyncio.to_thread(store_over, tls_node.scp.tls_port, client(pki.scanner, pki), ct_series[:4])
    assert statuses == [StoreStatus.SUCCESS] * 4
    assert await tls_node.store.instance_count() == 4

    def echo() -> int:
        assoc = associate(tls_node.scp.tls_port, client(pki.scanner, pki))
        try:
            return int(assoc.send_c_echo().Status)
        finally:
            assoc.release()
    assert await asyncio.to_thread(echo) == 0
    health = await tls_node.health()
    assert health["dicom"]["tls_port"] == tls_node.scp.tls_port          # type: ignore[index]


async def test_a_certificate_presented_for_another_ae_is_rejected_by_name(tls_node: Node, pki: TestPKI,
                                                                          ct_series: list[Dataset]) -> None:
    assert tls_node.scp is not None
    answer = await asyncio.to_thread(rq_over_tls, tls_node.scp.tls_port, client(pki.scanner, pki), "PACS")
    assert answer[0] == 0x03 and answer[7:10] == bytes((1, 1, 3))      # A-ASSOCIATE-RJ, calling AE not recognised
    [row] = await audit_of(tls_node, "refused ae/certificate")
    assert (row["actor"], row["role"]) == ("PACS", "dicom")
    assert "CN=SCANNER" in row["detail"] and "'PACS'" in row["detail"] and row["remote"].startswith("127.0.0.1:")
    answer = await asyncio.to_thread(rq_over_tls, tls_node.scp.tls_port, client(pki.scanner, pki), "NOBODY")
    assert answer[0] == 0x03 and answer[7:10] == bytes((1, 1, 3))
    assert tls_node.service is not None
    assert (await tls_node.service.metrics())["security_events"] == {"refused ae/certificate": 2}
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{tls_node.http_port}/metrics") as rsp:
        assert 'segnode_security_events_total{kind="refused ae/certificate"} 2' in await rsp.text()
    statuses = await asyncio.to_thread(store_over, tls_node.scp.tls_port, client(pki.scanner, pki), ct_series[:1])
    assert statuses == [StoreStatus.SUCCESS]                               # the right one still gets in


@pytest.mark.parametrize(("who", "reason"), [
    ("expired", "certificate has expired"),
    ("not_yet_valid", "certificate is not yet valid"),
    ("stranger", "unable to get local issuer certificate"),
    ("revoked", "certificate revoked"),
    (None, "sent no certificate"),
])
async def test_a_client_certificate_the_node_cannot_trust_ends_the_handshake(
        tls_node: Node, pki: TestPKI, ct_series: list[Dataset], who: str | None, reason: str) -> None:
    assert tls_node.scp is not None
    identity = getattr(pki, who) if who else None
    answer = await asyncio.to_thread(raw_tls, tls_node.scp.tls_port, client(identity, pki))
    assert not answer.startswith(b"\x02"), "an association was accepted"
    rows = await audit_of(tls_node, "refused tls handshake")
    assert reason in rows[0]["detail"]
    assert rows[0]["remote"].startswith("127.0.0.1:")
    statuses = await asyncio.to_thread(store_over, tls_node.scp.tls_port, client(pki.scanner, pki), ct_series[:1])
    assert statuses == [StoreStatus.SUCCESS]


@pytest.mark.parametrize(("offer", "reason"), [
    ({"maximum_version": ssl.TLSVersion.TLSv1_1, "minimum_version": ssl.TLSVersion.TLSv1,
      "ciphers": "DEFAULT:@SECLEVEL=0"}, "TLS version below the minimum"),
    ({"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "NULL-SHA256:eNULL:@SECLEVEL=0"}, "no cipher in common"),
    ({"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "AES128-SHA256:@SECLEVEL=0"}, "no cipher in common"),
])
async def test_an_old_protocol_or_a_weak_cipher_is_refused(tls_node: Node, pki: TestPKI, offer: dict[str, Any],
                                                           reason: str) -> None:
    assert tls_node.scp is not None
    context = client(pki.scanner, pki)
    try:
        for key, value in offer.items():
            context.set_ciphers(value) if key == "ciphers" else setattr(context, key, value)
    except (ValueError, ssl.SSLError) as exc:
        pytest.fail(f"this OpenSSL cannot even offer {offer}: {exc}")
    answer = await asyncio.to_thread(raw_tls, tls_node.scp.tls_port, context)
    assert not answer.startswith(b"\x02")
    rows = await audit_of(tls_node, "refused tls handshake")
    assert reason in rows[0]["detail"]


async def test_plain_dicom_on_the_tls_port_and_tls_on_the_plain_port_are_refused_by_name(
        tls_node: Node, pki: TestPKI, caplog: pytest.LogCaptureFixture, ct_series: list[Dataset]) -> None:
    assert tls_node.scp is not None
    plain = await asyncio.to_thread(associate, tls_node.scp.tls_port, None)
    assert not plain.is_established
    rows = await audit_of(tls_node, "refused tls handshake")
    assert "plain DICOM on the TLS port" in rows[0]["detail"]
    answer = await asyncio.to_thread(raw_tls, tls_node.scp.port, client(pki.scanner, pki))
    assert b"SSL" in answer or answer == b""                          # no TLS comes back from the plain port

    async def named() -> bool:
        return "a TLS handshake on the plain DICOM port" in caplog.text
    await async_wait_until(named, 10, "the plain port to name the TLS handshake")
    statuses = await asyncio.to_thread(store_over, tls_node.scp.port, None, ct_series[:1])
    assert statuses == [StoreStatus.SUCCESS]


async def test_a_handshake_that_never_ends_is_cut_off_and_holds_up_nobody(tls_node: Node, pki: TestPKI,
                                                                          ct_series: list[Dataset]) -> None:
    assert tls_node.scp is not None
    port = tls_node.scp.tls_port

    def silent() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock:
            start = time.monotonic()
            sock.sendall(b"\x16\x03\x01")                           # the start of a ClientHello, then nothing
            try:
                return sock.recv(16), time.monotonic() - start
            except ConnectionResetError:
                return b"", time.monotonic() - start
    stalled = asyncio.create_task(asyncio.to_thread(silent))
    statuses = await asyncio.to_thread(store_over, port, client(pki.scanner, pki), ct_series[:2])
    assert statuses == [StoreStatus.SUCCESS] * 2                       # served while the other one stalls
    answer, waited = await stalled
    assert answer == b"" and waited < scaled(5)
    rows = await audit_of(tls_node, "refused tls handshake")
    assert "did not end within 1 s" in rows[0]["detail"]


async def test_artim_holds_on_the_tls_port_too(tmp_path: Path, pki: TestPKI) -> None:
    async with running_node(tmp_path, **tls_env(pki, dicom__acse_timeout_s="0.5")) as node:
        assert node.scp is not None
        port = node.scp.tls_port

        def idle_after_handshake() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock, \
                    client(pki.scanner, pki).wrap_socket(sock, server_hostname="localhost") as tls:
                start = time.monotonic()
                try:
                    return tls.recv(16), time.monotonic() - start
                except (ssl.SSLError, OSError):
                    return b"", time.monotonic() - start
        answer, waited = await asyncio.to_thread(idle_after_handshake)
    assert answer[:1] in (b"\x07", b"") and waited < scaled(3)         # A-ABORT (or closed) after ARTIM


async def test_a_rotated_certificate_is_served_to_new_connections_and_open_ones_go_on(
        tmp_path: Path, pki: TestPKI, ct_series: list[Dataset]) -> None:
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    shutil.copy(pki.node.cert, cert)
    shutil.copy(pki.node.key, key)
    rotated = pki.ca.issue("segnode-rotated", sans=("DNS:localhost", "IP:127.0.0.1"))
    async with running_node(tmp_path, **tls_env(pki, tls__certificate=str(cert), tls__private_key=str(key))) as node:
        assert node.scp is not None
        port = node.scp.tls_port

        def served_cn() -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock, \
                    client(pki.scanner, pki).wrap_socket(sock, server_hostname="localhost") as tls:
                return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
        assert await asyncio.to_thread(served_cn) == "segnode"
        assoc = await asyncio.to_thread(associate, port, client(pki.scanner, pki))
        assert assoc.is_established
        try:
            shutil.copy(rotated.key, key)
            shutil.copy(rotated.cert, cert)

            async def rotated_in_use() -> bool:
                return await asyncio.to_thread(served_cn) == "segnode-rotated"
            await async_wait_until(rotated_in_use, 10, "the rotated certificate on new connections")
            assert int((await asyncio.to_thread(assoc.send_c_store, ct_series[0])).Status) == 0
        finally:
            await asyncio.to_thread(assoc.release)


async def test_an_encrypted_key_needs_its_password_from_the_environment(tmp_path: Path, pki: TestPKI) -> None:
    locked = {"tls__certificate": str(pki.encrypted_key.cert), "tls__private_key": str(pki.encrypted_key.key)}
    with pytest.raises(ConfigError, match=r"encrypted and no password was given .*SEGNODE_TLS__KEY_PASSWORD"):
        async with running_node(tmp_path / "a", **tls_env(pki, **locked)):
            pass
    async with running_node(tmp_path / "b", **tls_env(pki, **locked, tls__key_password=PASSWORD)) as node:
        assert node.scp is not None and node.scp.tls_port > 0
