"""The admin status page in a real headless Chromium: a study moves to done without a reload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from node.synth.series import SeriesIds, write_series
from tests.builders.bundle_layouts import build_btcv_on_old_monai, build_layout_bundle
from tests.peers.chromium import ARGS, CHROMIUM
from tests.peers.dcmtk import storescu
from tests.peers.helpers import REPO, scaled
from tests.peers.node_process import NodeProcess


def test_a_study_sent_to_the_node_moves_to_done_on_the_page(start_node: Callable[..., NodeProcess],
                                                            tmp_path: Path) -> None:
    node = start_node()
    folder = write_series(tmp_path / "ct", slices=16, rows=64, ids=SeriesIds(series_description="Page test"))[0].parent
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 600})
        page.goto(f"http://127.0.0.1:{node.http_port}/")
        page.wait_for_selector("#live.on", timeout=scaled(10_000))             # the WebSocket is connected
        assert page.locator("#jobs tbody tr").count() == 0
        assert storescu(node.dicom_port, folder).returncode == 0
        page.wait_for_selector("#jobs tbody tr[data-state='done']", timeout=scaled(60_000))
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
        page.wait_for_selector("#models tbody tr[data-model='swin-unetr-btcv']", timeout=scaled(10_000))
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


RULES = """
[[rules]]
name = "mr-brain"
model = "ct-basic"
match = { modality = ["MR"], body_part = ["HEAD"] }

[[rules]]
name = "ct-body"
model = "ct-basic"
match = { modality = ["CT"], min_slices = 10 }

[[rules]]
name = "ct-any"
model = "ct-basic"
match = { modality = ["CT"] }
"""


def test_the_page_shows_previews_measurements_charts_filters_rules_and_the_dry_run(
        start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    node = start_node(config=RULES)
    done = write_series(tmp_path / "ct", slices=16, rows=64, ids=SeriesIds(series_description="Abdomen",
                                                                          patient_id="PID-777"))
    one = write_series(tmp_path / "one", slices=3, rows=64, ids=SeriesIds(series_description="Scout"))[:1]
    out = REPO / "tests" / "artifacts"
    out.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(f"http://127.0.0.1:{node.http_port}/")
        page.wait_for_selector("#live.on", timeout=scaled(10_000))
        assert storescu(node.dicom_port, done).returncode == 0
        assert storescu(node.dicom_port, one).returncode == 0       # taken by ct-any; the model needs 3 slices
        page.wait_for_selector("#jobs tbody tr[data-state='done']", timeout=scaled(60_000))
        page.wait_for_selector("#jobs tbody tr[data-state='failed']", timeout=scaled(60_000))

        # the job detail: the preview image decoded by the browser, its legend and the measurement table
        page.locator("#jobs tbody tr[data-state='done']").focus()
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('img.preview') && document.querySelector('img.preview')"
                               ".naturalWidth > 0", timeout=scaled(10_000))
        measured = node.get(f"/api/jobs/{page.locator('#detail').get_attribute('data-job')}")["results"]["series"][0]
        names = [m["name"] for m in measured["measurements"]]
        assert page.locator(".legend li").all_inner_texts() == names
        rows = page.locator("table.measurements tbody tr").all_inner_texts()
        assert [r.split("\t")[0].strip() for r in rows] == names
        assert f"{measured['measurements'][0]['volume_ml']:.1f}" in rows[0]
        page.wait_for_selector("#detail-routing .verdicts")
        assert "Taken by rule ct-body" in page.locator("#detail-routing").inner_text()
        assert "mr-brain — modality CT not in MR" in page.locator("#detail-routing").inner_text()
        page.locator("#detail").screenshot(path=str(out / "status-job-detail.png"))

        # numbers per hour: both jobs and all 17 instances in the current hour's bars
        page.wait_for_function("document.querySelector('#chart-jobs figcaption, #charts figcaption') && "
                               "document.querySelector('#charts').innerText.includes('failed (1)')",
                               timeout=scaled(10_000))
        assert "Instances received (17)" in page.locator("#charts").inner_text()
        assert page.locator("#chart-instances rect").count() == 1
        assert page.locator("#chart-jobs rect").count() == 2
        assert page.locator("#chart-latency circle").count() == 2            # p50 and p95 of the one done job
        page.locator("#charts").screenshot(path=str(out / "status-charts.png"))

        # filters: by state, by model, and the admin's search
        page.select_option("#f-state", "failed")
        page.wait_for_function("document.querySelectorAll('#jobs tbody tr').length === 1")
        assert page.locator("#jobs tbody tr").first.get_attribute("data-state") == "failed"
        page.select_option("#f-state", "")
        page.keyboard.press("/")
        page.keyboard.type("pid-777")
        page.wait_for_function("document.querySelectorAll('#jobs tbody tr').length === 1")
        assert "Abdomen" in page.locator("#jobs tbody tr").first.inner_text()
        page.screenshot(path=str(out / "status-filtered.png"), full_page=True)

        # the rules at work and the dry run
        assert page.locator("#rules tbody tr").all_inner_texts()[1].startswith("2\tct-body\tmodality CT, ≥ 10")
        page.fill("#dry-run input[name=modality]", "MR")
        page.fill("#dry-run input[name=body_part]", "head")
        page.click("#dry-run button")
        page.wait_for_selector("#dry-run-answer .answer")
        assert page.locator("#dry-run-answer .answer").inner_text().startswith("Rule mr-brain takes it")
        page.fill("#dry-run input[name=modality]", "PT")
        page.click("#dry-run button")
        page.wait_for_selector("#dry-run-answer .answer.not")
        assert "ct-body — modality PT not in CT" in page.locator("#dry-run-answer").inner_text()
        page.locator("#dry-run").scroll_into_view_if_needed()
        page.screenshot(path=str(out / "status-rules.png"), full_page=True)
        browser.close()
