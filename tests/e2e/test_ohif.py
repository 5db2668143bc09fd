"""Segnode inside a real OHIF 3.13.2 (npm build) on a real Orthanc, in Debian's headless Chromium, over HTTPS/WSS.

The viewer is served over HTTPS and Segnode (`[http] https = true`) on its own HTTPS origin, both with
certificates from the test CA, which Chromium trusts through its NSS database as a managed browser
would (no certificate error is ignored); the extension's wsUrl is `wss://`. Every URL the pages
requested is https/wss and none carries the token (the WebSocket opens with a single-use ticket).

What a radiologist sees: the Segnode panel follows the open study's job state by state, a toast
appears, the SEG and SR thumbnails appear in the open study without a reload and the SEG
hydrates with its segments listed; a failed job shows its reason; a WebSocket drop mid-job is
resumed with `since` and nothing is missed; a study with no job says so.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets, write_datasets
from tests.builders.certs import TestPKI
from tests.peers.chromium import ARGS, CHROMIUM, trusting
from tests.peers.dcmtk import storescu
from tests.peers.helpers import REPO, scaled, wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.ohif import OhifServer, app_config, ohif_dist
from tests.peers.orthanc import OrthancProcess

pytestmark = pytest.mark.e2e

VIEWER_TOKEN = "ohif-viewer-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"
ARTIFACTS = REPO / "tests" / "artifacts"
PANEL = "segnode-jobs"


def node_config(orthanc: OrthancProcess) -> str:
    dest = f'kind = "dicom"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}'
    return (f'[outbox]\nretry_initial_s = 0.5\nretry_max_s = 1.0\n\n'
            f'[[destinations]]\nname = "pacs"\n{dest}\nae_title = "{orthanc.ae_title}"\n\n'
            f'[[destinations]]\nname = "old-pacs"\n{dest}\nae_title = "DECOMMISSIONED"\n\n'
            f'[[rules]]\nname = "to-old-pacs"\nmodel = "ct-basic"\ndestinations = ["old-pacs"]\n'
            f'match = {{ modality = ["CT"], series_description = "(?i)old pacs", min_slices = 10 }}\n\n'
            f'[[rules]]\nname = "ct"\nmodel = "ct-basic"\ndestinations = ["pacs"]\n'
            f'match = {{ modality = ["CT"], min_slices = 10 }}\n')


@dataclass
class Site:
    """A hospital in miniature: PACS (Orthanc), its OHIF, Segnode on its own origin, a browser."""
    orthanc: OrthancProcess
    ohif: OhifServer
    node: NodeProcess
    browser: Browser
    workdir: Path
    urls: list[str] = field(default_factory=list)     # every URL the pages requested, WebSockets included

    def api(self, path: str) -> Any:
        return self.node.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def assert_https_only(self) -> None:
        """Every URL the pages requested so far went over TLS (the viewer's, Orthanc's DICOMweb behind it,
        Segnode's API and job stream), and none carried the token."""
        schemes = {urlsplit(url).scheme for url in self.urls}                      # data:, blob: never leave the page
        assert schemes and schemes <= {"https", "wss", "data", "blob"}, sorted(schemes)
        assert not [url for url in self.urls if VIEWER_TOKEN in url or "token=" in url]
        sockets = [url for url in self.urls if url.startswith(f"wss://127.0.0.1:{self.node.http_port}/")]
        assert sockets and all("ticket=" in url for url in sockets)               # a single-use ticket each time
        assert f"{self.node.url}/api/ws-ticket" in self.urls

    def study_in_pacs(self, name: str, description: str) -> tuple[SeriesIds, list[Path]]:
        ids = SeriesIds(series_description=description)
        paths = write_datasets(self.workdir / name, phantom_datasets(make_phantom(slices=24, rows=96, seed=3), ids))
        sent = storescu(self.orthanc.dicom_port, paths, called=self.orthanc.ae_title)
        assert sent.returncode == 0, sent.stderr
        return ids, paths

    def open_study(self, study_instance_uid: str) -> Page:
        page = self.browser.new_page(viewport={"width": 1600, "height": 900})
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("websocket", lambda ws: self.urls.append(ws.url))
        # OHIF's first-visit tour may open at any moment and cover the page: skip it whenever it shows
        page.add_locator_handler(page.get_by_role("button", name="Skip all").first, lambda skip: skip.click())
        page.goto(f"{self.ohif.url}/viewer?StudyInstanceUIDs={study_instance_uid}")
        page.wait_for_selector('[data-cy="study-browser-thumbnail"]', timeout=scaled(90_000))
        page.locator('[data-cy="jobs-btn"]').click()                 # the Segnode tab in the right panel
        page.wait_for_selector(f"{PANEL} section[data-connection=live]", timeout=scaled(30_000))
        page.evaluate("window.segnodeTestNoReload = true")           # gone if the page reloads
        return page


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("ohif")
    orthanc = OrthancProcess(workdir / "orthanc").start()
    viewer_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)           # the hospital's nginx, in short
    viewer_tls.load_cert_chain(pki.node.cert, pki.node.key)                     # SANs localhost, 127.0.0.1
    ohif = OhifServer(ohif_dist(), orthanc.url, ssl_context=viewer_tls).start()
    node = NodeProcess(workdir / "node", node_config(orthanc), ca_file=pki.ca.cert,
                       http__https="true", tls__certificate=str(pki.node.cert), tls__private_key=str(pki.node.key),
                       http__viewer_tokens=f"ohif={VIEWER_TOKEN}",
                       http__admin_tokens=f"admin={ADMIN_TOKEN}", http__cors_origins=ohif.url,
                       dicom__study_quiet_period_s="2")
    try:
        node.start()
        ohif.config_js = app_config(ohif.url, node.url, VIEWER_TOKEN)          # wsUrl wss://127.0.0.1:<port>/ws/jobs
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS,          # trusts the test CA
                                        env=trusting(pki.ca.cert, workdir / "home"))
            yield Site(orthanc, ohif, node, browser, workdir)
            browser.close()
    finally:
        node.stop()
        ohif.stop()
        orthanc.stop()


def job_card(page: Page) -> Any:
    return page.locator(f"{PANEL} article.segnode-job")


def panel_states(page: Page) -> list[str]:
    return job_card(page).first.locator("ol.segnode-states li").all_inner_texts()


def thumbnail(page: Page, modality: str) -> Any:
    return page.locator('[data-cy^="study-browser-thumbnail"]').filter(
        has=page.locator('[data-cy="series-modality-label"]', has_text=modality))


def test_results_appear_in_the_open_study_without_a_reload(site: Site) -> None:
    ids, paths = site.study_in_pacs("ct-a", "Chest for OHIF")
    page = site.open_study(ids.study_instance_uid)
    assert "No Segnode job for this study." in page.locator(PANEL).inner_text()
    assert thumbnail(page, "SEG").count() == 0 and thumbnail(page, "SR").count() == 0

    assert storescu(site.node.dicom_port, paths).returncode == 0     # the PACS routes the study to Segnode
    toast = page.locator("[data-sonner-toast]", has_text="Segnode: ")
    toast.first.wait_for(timeout=scaled(60_000))
    page.wait_for_selector(f"{PANEL} article[data-state=done]", timeout=scaled(120_000))
    assert panel_states(page) == ["receiving", "queued", "running", "sending", "done"]
    card = job_card(page).first
    assert "Lungs" in card.inner_text() and "mL" in card.inner_text()           # measurements when done

    page.wait_for_selector(f"{PANEL} article[data-results=shown]", timeout=scaled(60_000))
    thumbnail(page, "SEG").first.wait_for(timeout=scaled(10_000))
    thumbnail(page, "SR").first.wait_for(timeout=scaled(10_000))
    assert page.evaluate("window.segnodeTestNoReload === true")                # same page, never reloaded
    page.screenshot(path=str(ARTIFACTS / "ohif-results-in-study.png"))

    thumbnail(page, "SEG").first.dblclick()                                     # what a radiologist does
    page.get_by_role("button", name="Yes").click(timeout=scaled(30_000))                # "open this Segmentation?"
    page.locator('[data-cy="panelSegmentation-btn"]').click()                  # OHIF's segmentation panel
    for name in ("Body soft tissue", "Lungs", "Bone"):                          # the SEG's segments, listed
        page.get_by_text(name, exact=True).locator("visible=true").first.wait_for(timeout=scaled(30_000))
    assert page.locator(PANEL).locator("visible=true").count() == 0            # it is OHIF's list, not ours
    page.screenshot(path=str(ARTIFACTS / "ohif-seg-hydrated.png"))
    page.close()
    site.assert_https_only()


def test_a_failed_job_shows_its_reason(site: Site) -> None:
    ids, paths = site.study_in_pacs("ct-b", "Chest for the old PACS")
    page = site.open_study(ids.study_instance_uid)
    assert storescu(site.node.dicom_port, paths).returncode == 0
    page.wait_for_selector(f"{PANEL} article[data-state=failed]", timeout=scaled(120_000))
    job = site.api(f"/api/jobs/{job_card(page).first.get_attribute('data-job-id')}")
    assert job["state"] == "failed" and job["detail"]
    assert job_card(page).first.locator(".segnode-reason").inner_text() == job["detail"]
    assert job_card(page).first.locator(".segnode-state").inner_text() == "ct-basic: failed"
    page.locator("[data-sonner-toast]", has_text="failed").first.wait_for(timeout=scaled(10_000))
    assert thumbnail(page, "SEG").count() == 0
    page.screenshot(path=str(ARTIFACTS / "ohif-failed-job.png"))
    page.close()
    site.assert_https_only()


def test_a_dropped_socket_resumes_with_since_and_misses_nothing(site: Site) -> None:
    ids, paths = site.study_in_pacs("ct-c", "Chest across a restart")
    page = site.open_study(ids.study_instance_uid)
    assert storescu(site.node.dicom_port, paths).returncode == 0
    page.wait_for_selector(f"{PANEL} article[data-state=receiving]", timeout=scaled(30_000))
    site.node.stop()                                   # the node goes away mid-job: the socket drops
    page.wait_for_selector(f"{PANEL} section[data-connection=reconnecting]", timeout=scaled(30_000))
    site.node.start()
    page.wait_for_selector(f"{PANEL} article[data-state=done][data-results=shown]", timeout=scaled(120_000))
    section = page.locator(f"{PANEL} section")
    assert int(section.get_attribute("data-connections") or 0) >= 2

    card = job_card(page).first
    job = site.api(f"/api/jobs/{card.get_attribute('data-job-id')}")
    sent = [e["seq"] for e in job["events"]]
    seen = [int(s) for s in (card.get_attribute("data-seqs") or "").split(",") if s]
    assert seen == sent                                # every event, once, in order, across the drop
    states = [e["state"] for i, e in enumerate(job["events"]) if i == 0 or job["events"][i - 1]["state"] != e["state"]]
    assert panel_states(page) == states and states[-1] == "done"
    wait_until(lambda: thumbnail(page, "SEG").count() == 1, 10, "the SEG thumbnail")
    page.screenshot(path=str(ARTIFACTS / "ohif-after-drop.png"))
    page.close()
    site.assert_https_only()
