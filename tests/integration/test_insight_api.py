"""The status page's API: result previews (audited), numbers per hour, the rules at work and the dry run,
filters and the admin's search; through real sockets, with viewer and admin tokens."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.app import Node
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.peers.scu import final_job, send
from tests.support import running_node

ADMIN = {"Authorization": "Bearer " + "a" * 24}
VIEWER = {"Authorization": "Bearer " + "v" * 24}
PASSWORD = "s3cret-orthanc-password"
CONFIG = """
[[destinations]]
name = "pacs"
kind = "dicom"
host = "pacs.example.org"
port = 4242
ae_title = "PACS"

[[destinations]]
name = "research"
kind = "orthanc-rest"
url = "http://orthanc.example.org:8042"
username = "segnode"
password_env = "SEGNODE_TEST_ORTHANC_PASSWORD"

[[rules]]
name = "mr-brain"
model = "ct-basic"
destinations = ["pacs", "research"]
match = { modality = ["MR"], body_part = ["HEAD", "BRAIN"] }

[[rules]]
name = "ct-body"
model = "ct-basic"
match = { modality = ["CT"], min_slices = 10 }

[[rules]]
name = "ct-any"
model = "ct-basic"
match = { modality = ["CT"] }
"""


@pytest.fixture
async def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """A node with viewer and admin tokens and three rules; `postgresql` (indirect) for the PostgreSQL store."""
    monkeypatch.setenv("SEGNODE_TEST_ORTHANC_PASSWORD", PASSWORD)
    url = request.getfixturevalue("postgres").new_database() if getattr(request, "param", "") == "postgresql" else ""
    async with (running_node(tmp_path, CONFIG, store__url=url, http__admin_tokens="alice=" + "a" * 24,
                             http__viewer_tokens="ohif=" + "v" * 24) as n,
                aiohttp.ClientSession(f"http://127.0.0.1:{n.http_port}") as http):
        yield n, http


def series(slices: int = 12, patient_id: str = "PID-123", description: str = "Abdomen") -> list[Dataset]:
    return phantom_datasets(make_phantom(slices=slices, rows=32), SeriesIds(
        patient_name="Doe^Jane", patient_id=patient_id, series_description=description))


def png_pixels(data: bytes) -> np.ndarray:
    """Decode our PNGs (RGB, 8 bit, filter 0 on every line), checking each chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02"
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height = size
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


async def done_job(node: Node, ds: list[Dataset]) -> str:
    await send(node, ds)
    job = await final_job(node, ds[0].StudyInstanceUID)
    assert job.state == "done", job.detail
    return job.id


async def test_a_done_job_has_a_preview_with_its_legend_served_to_viewers_and_audited(node) -> None:
    n, http = node
    job_id = await done_job(n, series())
    job = await (await http.get(f"/api/jobs/{job_id}", headers=VIEWER)).json()
    [preview] = job["results"]["previews"]
    assert preview["planes"] == ["axial", "coronal", "sagittal"] and preview["window"] == [-160.0, 240.0]
    measured = [m["name"] for m in job["results"]["series"][0]["measurements"]]
    assert [s["name"] for s in preview["segments"]] == measured and measured
    assert all(s["colour"].startswith("#") and len(s["colour"]) == 7 for s in preview["segments"])
    url = f"/api/jobs/{job_id}/preview/{preview['file']}"
    assert (await http.get(url)).status == 401
    rsp = await http.get(url, headers=VIEWER)
    assert rsp.status == 200 and rsp.headers["Content-Type"] == "image/png"
    pixels = png_pixels(await rsp.read())
    assert pixels.shape == (preview["height"], preview["width"], 3)
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 20        # the segments' colours show
    assert coloured.mean() > 0.05
    for bad in ("measurements.json", "..%2Fmeasurements.json", "preview-1.2.3.png"):
        rsp = await http.get(f"/api/jobs/{job_id}/preview/{bad}", headers=VIEWER)
        assert rsp.status == 404 and "has no preview" in (await rsp.json())["error"]
    audit = (await (await http.get("/api/audit", headers=ADMIN)).json())["audit"]
    views = [a for a in audit if a["action"] == "view preview"]
    assert [(a["actor"], a["job_id"]) for a in views] == [("ohif", job_id)]


@pytest.mark.parametrize("node", ["sqlite", "postgresql"], indirect=True)
async def test_stats_count_instances_jobs_and_latency_in_the_current_hour(node) -> None:
    n, http = node
    await done_job(n, series())
    one = series(slices=3)[:1]                     # one instance: a rule takes it (ct-any), the model refuses it
    await send(n, one)
    assert (await final_job(n, one[0].StudyInstanceUID)).state == "failed"
    rsp = await http.get("/api/stats", headers=VIEWER)
    hours = (await rsp.json())["hours"]
    assert len(hours) == 24 and hours[0]["hour"] < hours[-1]["hour"]
    now = hours[-1]
    assert (now["instances"], now["finished"], now["failed"], now["latency_n"]) == (13, 1, 1, 1)
    assert 0 < now["latency_p50_s"] <= now["latency_p95_s"] < 60
    assert sum(h["instances"] for h in hours[:-1]) == 0
    assert (await http.get("/api/stats?hours=0", headers=VIEWER)).status == 400


async def test_rules_and_destinations_are_listed_without_secrets(node) -> None:
    _, http = node
    rsp = await http.get("/api/routing", headers=VIEWER)
    text = await rsp.text()
    assert rsp.status == 200 and PASSWORD not in text
    body = await rsp.json()
    assert [r["name"] for r in body["rules"]] == ["mr-brain", "ct-body", "ct-any"]
    assert body["rules"][0]["destinations"] == ["pacs", "research"] and body["rules"][0]["model_state"] == "ready"
    assert body["destinations"][1] == {"name": "research", "kind": "orthanc-rest",
                                       "url": "http://orthanc.example.org:8042", "username": "segnode",
                                       "password": "from $SEGNODE_TEST_ORTHANC_PASSWORD"}
    assert (await http.get("/api/routing")).status == 401


async def test_the_dry_run_answers_from_header_fields_with_every_rules_verdict(node) -> None:
    _, http = node

    async def dry(query: str) -> dict:
        rsp = await http.get(f"/api/routing/dry-run?{query}", headers=VIEWER)
        assert rsp.status == 200, await rsp.text()
        return await rsp.json()
    ct = await dry("modality=ct&instances=40")
    assert (ct["rule"], ct["model"]) == ("ct-body", "ct-basic")
    assert [(v["rule"], v["takes"]) for v in ct["verdicts"]] == [("mr-brain", False), ("ct-body", True),
                                                                  ("ct-any", False)]
    assert ct["verdicts"][0]["why"] == "modality CT not in MR"
    assert ct["verdicts"][2]["why"] == "not reached: rule ct-body took it first (it would match too)"
    short = await dry("modality=CT&instances=3")
    assert short["rule"] == "ct-any" and "3 instance(s), rule needs at least 10" in short["verdicts"][1]["why"]
    mr = await dry("modality=MR&body_part=head&instances=100")
    assert (mr["rule"], mr["destinations"]) == ("mr-brain", ["pacs", "research"])
    pet = await dry("modality=PT&instances=100")
    assert pet["rule"] is None and pet["ignored_reason"].startswith("mr-brain: modality PT not in MR; ct-body:")
    for bad, says in (("instances=4", "modality is required"), ("modality=CT&slices=4", "unknown field(s) slices"),
                      ("modality=CT&instances=-1", "instances must be")):
        rsp = await http.get(f"/api/routing/dry-run?{bad}", headers=VIEWER)
        assert rsp.status == 400 and says in (await rsp.json())["error"]


async def test_a_jobs_routing_says_which_rule_took_it_and_why_the_others_did_not(node) -> None:
    n, http = node
    job_id = await done_job(n, series())
    body = await (await http.get(f"/api/jobs/{job_id}/routing", headers=VIEWER)).json()
    assert body["rule"] == "ct-body"
    [s] = body["series"]
    assert s["in_this_job"] and s["instance_count"] == 12 and s["modality"] == "CT"
    assert [v["takes"] for v in s["verdicts"]] == [False, True, False]
    assert s["verdicts"][0]["why"] == "modality CT not in MR"


async def test_filters_and_the_admins_search(node) -> None:
    n, http = node
    await done_job(n, series(patient_id="PID-123"))
    await done_job(n, series(patient_id="PID-456", description="Chest"))

    async def ids(query: str, headers: dict[str, str]) -> list[str]:
        rsp = await http.get(f"/api/jobs?{query}", headers=headers)
        assert rsp.status == 200, await rsp.text()
        return [j["series_description"] for j in (await rsp.json())["jobs"]]
    assert await ids("modality=CT&model=ct-basic&state=done", VIEWER) == ["Chest", "Abdomen"]
    assert await ids("modality=MR", VIEWER) == [] and await ids("model=nope", VIEWER) == []
    assert await ids("limit=1&offset=1", VIEWER) == ["Abdomen"]
    rsp = await http.get("/api/jobs?q=PID", headers=VIEWER)
    assert rsp.status == 403 and "admin role" in (await rsp.json())["error"]
    assert await ids("q=pid-456", ADMIN) == ["Chest"]
    assert await ids("q=%25", ADMIN) == []                                  # a literal %, not a wildcard
    audit = (await (await http.get("/api/audit", headers=ADMIN)).json())["audit"]
    assert any(a["action"] == "search jobs" and a["actor"] == "alice" for a in audit)
