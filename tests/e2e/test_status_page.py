"""The admin status page in a real headless Chromium: a study moves to done without a reload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from node.synth.series import SeriesIds, write_series
from tests.peers.bundle_layouts import build_btcv_on_old_monai, build_layout_bundle
from tests.peers.chromium import ARGS, CHROMIUM
from tests.peers.dcmtk import storescu
from tests.peers.helpers import REPO
from tests.peers.node_process import NodeProcess


def test_a_study_sent_to_the_node_moves_to_done_on_the_page(start_node: Callable[..., NodeProcess],
                                                            tmp_path: Path) -> None:
    node = start_node()
    folder = write_series(tmp_path / "ct", slices=16, rows=64, ids=SeriesIds(series_description="Page test"))[0].parent
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 600})
        page.goto(f"http://127.0.0.1:{node.http_port}/")
        page.wait_for_selector("#live.on", timeout=10_000)             # the WebSocket is connected
        assert page.locator("#jobs tbody tr").count() == 0
        assert storescu(node.dicom_port, folder).returncode == 0
        page.wait_for_selector("#jobs tbody tr[data-state='done']", timeout=60_000)
        row = page.locator("#jobs tbody tr").first
        assert "Page test" in row.inner_text() and "CT" in row.inner_text()
        health = page.locator("#health").inner_text()
        assert health.startswith("healthy")
        placement = node.get("/api/health")["compute"]["placement"]    # e.g. "in 1 model process of this node on cpu"
        assert placement.startswith("in 1 model process of this node on ") and f"inference {placement}" in health
        row.click()
        page.wait_for_selector("#detail-events li")
        assert "receiving" in page.locator("#detail-events").inner_text()
        out = REPO / "tests" / "artifacts"
        out.mkdir(exist_ok=True)
        page.screenshot(path=str(out / "status-page.png"), full_page=True)
        browser.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_page_shows_each_model_ready_or_unavailable_with_the_reason_and_warnings(
        start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_layout_bundle(models / "odd-labels", names=["background", "liver", "frobnicator_zone", "bone"], soft=1,
                        lung=2, bone=3)
    build_btcv_on_old_monai(models / "swin-unetr-btcv")
    node = start_node(models__dir=str(models))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 600})
        page.goto(f"http://127.0.0.1:{node.http_port}/")
        page.wait_for_selector("#models tbody tr[data-model='swin-unetr-btcv']", timeout=10_000)
        rows = {name: page.locator(f"#models tbody tr[data-model='{name}']")
                for name in ("ct-basic", "odd-labels", "swin-unetr-btcv")}
        assert {name: row.get_attribute("data-state") for name, row in rows.items()} == {
            "ct-basic": "ready", "odd-labels": "ready", "swin-unetr-btcv": "unavailable"}
        bad = rows["swin-unetr-btcv"].locator(".reason").inner_text()
        assert "img_size" in bad and "MONAI version mismatch" in bad
        warning = rows["odd-labels"].locator(".warning").inner_text()
        assert "frobnicator_zone" in warning and "no standard code" in warning
        assert rows["odd-labels"].locator("td").nth(4).inner_text() == "3"
        assert rows["ct-basic"].locator(".reason, .warning").count() == 0
        browser.close()
