"""A node with `[http] https = true`: HTTPS and WSS only, with the [tls] certificate, HSTS on every answer, a
rotated certificate picked up by new connections, and beyond loopback only with HTTPS and tokens together."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest

from node.errors import ConfigError
from node.security import client_context
from tests.builders.certs import TestPKI
from tests.builders.settings import node_settings
from tests.peers.helpers import async_wait_until, scaled
from tests.support import running_node

TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HSTS = "max-age=31536000"


def tls_files(tmp_path: Path, pki: TestPKI) -> dict[str, str]:
    """The node's certificate and key copied where the test may rotate them."""
    folder = tmp_path / "tls"
    folder.mkdir()
    shutil.copy(pki.node.cert, folder / "node.crt")
    shutil.copy(pki.node.key, folder / "node.key")
    return {"http__https": "true", "tls__certificate": str(folder / "node.crt"),
            "tls__private_key": str(folder / "node.key")}


async def served_certificate(port: int, trust: ssl.SSLContext) -> dict:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust, server_hostname="127.0.0.1")
    try:
        return writer.get_extra_info("peercert")
    finally:
        writer.close()


async def reachable(address: str, port: int) -> bool:
    """A TCP connection to `address` is accepted (127.0.0.2 is this machine too, but not 127.0.0.1)."""
    try:
        _, writer = await asyncio.open_connection(address, port)
    except OSError:
        return False
    writer.close()
    return True


def test_https_without_a_certificate_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^\[http\] TLS needs \[tls\] certificate and private_key"):
        node_settings(tmp_path, http__https="true")


async def test_api_status_page_metrics_and_job_stream_over_https_with_hsts_and_no_plain_http(
        tmp_path: Path, pki: TestPKI) -> None:
    trust = client_context(str(pki.ca.cert))
    async with (running_node(tmp_path, http__admin_tokens=f"admin={TOKEN}", **tls_files(tmp_path, pki)) as node,
                aiohttp.ClientSession(f"https://127.0.0.1:{node.http_port}") as https):
        for path, headers, status in (("/api/health", {}, 200), ("/", {}, 200), ("/metrics", {}, 200),
                                      ("/api/jobs", ADMIN, 200), ("/api/jobs", {}, 401), ("/nope", ADMIN, 404),
                                      ("/api/jobs?token=x", {}, 400)):
            rsp = await https.get(path, headers=headers, ssl=trust)
            assert (rsp.status, rsp.headers.get("Strict-Transport-Security")) == (status, HSTS), path
        ticket = (await (await https.post("/api/ws-ticket", headers=ADMIN, ssl=trust)).json())["ticket"]
        async with https.ws_connect(f"/ws/jobs?ticket={ticket}", ssl=trust) as ws:   # wss://
            assert (await ws.receive_json())["type"] == "snapshot"
        with pytest.raises(aiohttp.ClientConnectorCertificateError):           # the node's own certificate, really
            await https.get("/api/health", ssl=ssl.create_default_context())
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):                              # no plain HTTP on that port
                await plain.get(f"http://127.0.0.1:{node.http_port}/api/health")


async def test_a_rotated_certificate_serves_new_connections_and_a_broken_rotation_keeps_the_last_good_one(
        tmp_path: Path, pki: TestPKI, caplog: pytest.LogCaptureFixture) -> None:
    files = tls_files(tmp_path, pki)
    trust = client_context(str(pki.ca.cert))
    async with running_node(tmp_path, http__admin_tokens=f"admin={TOKEN}", **files) as node:
        assert (await served_certificate(node.http_port, trust))["subject"] == ((("commonName", "segnode"),),)
        rotated = pki.ca.issue(f"segnode-rotated-{os.getpid()}", sans=("DNS:localhost", "IP:127.0.0.1"))
        for source, target in ((rotated.key, files["tls__private_key"]), (rotated.cert, files["tls__certificate"])):
            shutil.copy(source, target + ".new")
            os.replace(target + ".new", target)                                # as certbot and friends do

        async def rotated_served() -> bool:
            cert = await served_certificate(node.http_port, trust)
            return cert["subject"] == (((("commonName", rotated.subject_cn),),))
        await async_wait_until(rotated_served, 10, "the rotated certificate on a new connection", interval_s=0.2)

        Path(files["tls__certificate"]).write_text("not a certificate\n")        # a botched rotation
        caplog.set_level(logging.WARNING, logger="node.app")

        async def refusal_audited() -> bool:
            assert await rotated_served()                                         # still served, every time
            rows = await node.store.audit_log()
            return any(r["role"] == "security" and r["action"] == "https certificate not reloaded" for r in rows)
        await async_wait_until(refusal_audited, 10, "the failed reload to be audited", interval_s=0.2)
        assert any("HTTPS keeps its current certificate" in r.getMessage() for r in caplog.records)
        async with aiohttp.ClientSession() as https:
            rsp = await https.get(f"https://127.0.0.1:{node.http_port}/api/health", ssl=trust,
                                  timeout=aiohttp.ClientTimeout(total=scaled(10)))
            assert rsp.status == 200


@pytest.mark.parametrize(("https", "tokens", "listens_on", "missing"), [
    (True, True, "0.0.0.0", None),
    (True, False, "127.0.0.1", "[http] admin_tokens or viewer_tokens"),
    (False, True, "127.0.0.1", "[http] https = true"),
])
async def test_beyond_loopback_only_with_https_and_tokens(tmp_path: Path, pki: TestPKI,
                                                         caplog: pytest.LogCaptureFixture, https: bool, tokens: bool,
                                                         listens_on: str, missing: str | None) -> None:
    caplog.set_level(logging.WARNING, logger="node.app")
    settings = {"http__host": "0.0.0.0", **(tls_files(tmp_path, pki) if https else {}),
                **({"http__admin_tokens": f"admin={TOKEN}"} if tokens else {})}
    async with running_node(tmp_path, **settings) as node:
        assert await reachable("127.0.0.1", node.http_port)
        assert await reachable("127.0.0.2", node.http_port) == (listens_on == "0.0.0.0")   # another address
    warned = [r.getMessage() for r in caplog.records if "beyond loopback" in r.getMessage()]
    if missing is None:
        assert warned == []
    else:
        assert warned == [f"HTTP listens on 127.0.0.1 only, not on 0.0.0.0: beyond loopback it needs {missing}"]
