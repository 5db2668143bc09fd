"""The status page over HTTPS in a real headless Chromium that trusts the test CA (an NSS database, as a managed
browser would; no certificate error is ignored): the page asks for the token once, sends it only in headers,
opens the job stream over WSS with a single-use ticket, follows a study to done, and shows an admin the
security events. No token in any URL the page requested."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Dialog, WebSocket, async_playwright

from node.security import client_context
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.builders.certs import TestPKI
from tests.peers.chromium import ARGS, CHROMIUM, trusting
from tests.peers.helpers import REPO, scaled
from tests.peers.scu import send
from tests.support import running_node

pytestmark = pytest.mark.e2e

TOKEN = "status-page-admin-token-0123"


async def test_the_status_page_over_https_follows_a_job_over_wss_with_no_token_in_any_url(
        tmp_path: Path, pki: TestPKI) -> None:
    tls = {"http__https": "true", "tls__certificate": str(pki.node.cert), "tls__private_key": str(pki.node.key)}
    async with (running_node(tmp_path, http__admin_tokens=f"admin={TOKEN}", **tls) as node,
                async_playwright() as p):
        base = f"https://127.0.0.1:{node.http_port}"
        async with aiohttp.ClientSession() as http:             # someone tries a wrong token first
            rsp = await http.get(f"{base}/api/jobs", headers={"Authorization": "Bearer guessed-0123456789"},
                                 ssl=client_context(str(pki.ca.cert)))
            assert rsp.status == 401
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, env=trusting(pki.ca.cert,
                                                                                             tmp_path / "home"))
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        requested: list[str] = []
        sockets: list[str] = []
        page.on("request", lambda request: requested.append(request.url))

        def opened(ws: WebSocket) -> None:
            sockets.append(ws.url)
        page.on("websocket", opened)

        async def log_in(dialog: Dialog) -> None:                # the page's prompt for the access token
            await dialog.accept(TOKEN)
        page.on("dialog", log_in)

        response = await page.goto(f"{base}/")
        assert response is not None and response.headers["strict-transport-security"] == "max-age=31536000"
        await page.wait_for_selector("#live.on", timeout=scaled(10_000))              # WSS connected
        assert await page.locator("#jobs tbody tr").count() == 0
        await send(node, phantom_datasets(make_phantom(slices=12, rows=32), SeriesIds(series_description="TLS")))
        await page.wait_for_selector("#jobs tbody tr[data-state='done']", timeout=scaled(60_000))   # via events
        await page.wait_for_selector("#security-events tbody tr[data-kind='refused token']", timeout=scaled(10_000))
        assert "unknown bearer token" in await page.locator("#security-events").inner_text()
        out = REPO / "tests" / "artifacts"
        out.mkdir(exist_ok=True)
        await page.screenshot(path=str(out / "status-page-https.png"), full_page=True)
        await browser.close()

    assert sockets and all(url.startswith(f"{base.replace('https', 'wss', 1)}/ws/jobs?ticket=") for url in sockets)
    assert requested and all(url.startswith("https://") for url in requested)
    assert not [url for url in requested + sockets if TOKEN in url or "token=" in url]
    assert f"{base}/api/ws-ticket" in requested
