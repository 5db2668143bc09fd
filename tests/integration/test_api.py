"""The HTTP API and the WebSocket stream of a running node, through real sockets."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from pydicom.dataset import Dataset

from node.app import Node
from node.jobs.records import JobEvent
from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.builders.settings import node_settings
from tests.peers.helpers import async_wait_until, scaled
from tests.peers.scu import send
from tests.support import running_node

ADMIN, VIEWER = "admin=" + "a" * 24, "viewer=" + "v" * 24


@pytest.fixture
async def api(tmp_path: Path, request: pytest.FixtureRequest):
    """A node and an HTTP session to it; a test may ask for the PostgreSQL store (indirect "postgresql")."""
    url = request.getfixturevalue("postgres").new_database() if getattr(request, "param", "") == "postgresql" else ""
    async with (running_node(tmp_path, store__url=url) as n,
                aiohttp.ClientSession(f"http://127.0.0.1:{n.http_port}") as http):
        yield n, http


async def receive_until(ws: aiohttp.ClientWebSocketResponse, done, timeout_s: float = 30) -> list[dict]:
    out: list[dict] = []
    async with asyncio.timeout(scaled(timeout_s)):
        while not out or not done(out):
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket closed: {msg}")
            out.append(msg.json())
    return out


def series(slices: int = 12) -> list[Dataset]:
    return phantom_datasets(make_phantom(slices=slices, rows=32), SeriesIds(patient_name="Doe^Jane",
                                                                            patient_id="PID-123"))


async def test_websocket_snapshot_then_every_event_of_a_study_in_order(api) -> None:
    node, http = api
    async with http.ws_connect("/ws/jobs") as ws:
        snapshot = (await ws.receive()).json()
        assert snapshot["type"] == "snapshot" and snapshot["jobs"] == []
        ds = series()
        await send(node, ds)
        msgs = await receive_until(ws, lambda m: m[-1]["state"] in ("done", "failed"))
    assert [m["seq"] for m in msgs] == sorted(m["seq"] for m in msgs)
    states = [m["state"] for m in msgs]
    assert states[0] == "receiving" and states[-1] == "done" and "queued" in states and "running" in states
    assert set(msgs[0]) == {"seq", "job_id", "study_instance_uid", "state", "progress", "detail", "at"}
    assert all(m["study_instance_uid"] == ds[0].StudyInstanceUID for m in msgs)


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
async def test_a_client_reconnecting_with_since_misses_nothing_and_gets_nothing_twice(api) -> None:
    node, http = api
    ds = series()
    async with http.ws_connect("/ws/jobs") as ws:
        await ws.receive()                                    # snapshot
        await send(node, ds)
        first = await receive_until(ws, lambda m: any(x["state"] == "queued" for x in m))
    # disconnected while the job runs
    job_id = first[0]["job_id"]
    await async_wait_until(lambda: _state(node, job_id, "done"), 30, "the job to finish while away")
    async with http.ws_connect(f"/ws/jobs?since={first[-1]['seq']}&study={ds[0].StudyInstanceUID}") as ws:
        snapshot = (await ws.receive()).json()
        assert snapshot["type"] == "snapshot"
        rest = await receive_until(ws, lambda m: m[-1]["state"] == "done")
    everything = [e.as_message() for e in await node.store.events(job_id)]
    assert [m["seq"] for m in first + rest] == [e["seq"] for e in everything]


async def _state(node: Node, job_id: str, state: str) -> bool:
    return (await node.store.get(job_id)).state == state


async def test_a_slow_client_gets_resync_and_is_closed(tmp_path: Path) -> None:
    async with (running_node(tmp_path, http__ws_queue_size="2") as node, aiohttp.ClientSession() as http,
                http.ws_connect(f"http://127.0.0.1:{node.http_port}/ws/jobs") as ws):
        head = (await ws.receive()).json()["seq"]
        now = datetime.now(UTC)
        node.bus.publish([JobEvent(head + i, "j", "1.2", "running", 0.1, "x", now) for i in range(1, 10)])
        msg = (await ws.receive()).json()
        assert msg == {"type": "resync", "seq": head}
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_sockets_are_closed_with_going_away_on_shutdown(tmp_path: Path) -> None:
    node = Node(node_settings(tmp_path))            # not running_node: the test calls stop() and watches it
    await node.start()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{node.http_port}/ws/jobs") as ws:
        await ws.receive()
        stopping = asyncio.create_task(node.stop())
        msg = await ws.receive()
        await stopping
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY


async def test_retry_cancel_download_and_audit(api) -> None:
    node, http = api
    await send(node, series())
    job = (await async_wait_until(lambda: node.store.list_jobs(state="done"), 30, "a done job"))[0]
    rsp = await http.get(f"/api/jobs/{job.id}/results/seg")
    assert rsp.status == 200 and rsp.headers["Content-Type"] == "application/dicom"
    assert (await rsp.read())[128:132] == b"DICM"
    rsp = await http.post(f"/api/jobs/{job.id}/retry")
    assert rsp.status == 409 and "is done; it cannot become queued" in (await rsp.json())["error"]
    rsp = await http.get("/api/jobs/nope")
    assert rsp.status == 404 and "no job nope" in (await rsp.json())["error"]
    rsp = await http.get("/api/jobs?state=bogus")
    assert rsp.status == 400 and "state must be one of" in (await rsp.json())["error"]
    audit = (await (await http.get("/api/audit")).json())["audit"]
    assert any(a["action"] == "download seg" and a["job_id"] == job.id for a in audit)


async def test_cancel_a_study_still_receiving(tmp_path: Path) -> None:
    async with running_node(tmp_path, dicom__study_quiet_period_s="60") as node:
        await send(node, series())
        job = (await node.store.list_jobs())[0]
        async with aiohttp.ClientSession() as http:
            rsp = await http.post(f"http://127.0.0.1:{node.http_port}/api/jobs/{job.id}/cancel")
            assert rsp.status == 200 and (await rsp.json())["state"] == "cancelled"


async def test_tokens_roles_phi_and_cors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_node(tmp_path, http__admin_tokens=ADMIN, http__viewer_tokens=VIEWER,
                            http__cors_origins="http://viewer.example:3000", dicom__study_quiet_period_s="60") as node:
        base = f"http://127.0.0.1:{node.http_port}"
        admin = {"Authorization": "Bearer " + "a" * 24}
        viewer = {"Authorization": "Bearer " + "v" * 24}
        await send(node, series())
        async with aiohttp.ClientSession(base) as http:
            rsp = await http.get("/api/jobs")
            assert rsp.status == 401 and "bearer token is required" in (await rsp.json())["error"]
            assert (await http.get("/api/health")).status == 200
            job = (await (await http.get("/api/jobs", headers=viewer)).json())["jobs"][0]
            assert "patient_name" not in job
            as_admin = (await (await http.get("/api/jobs", headers=admin)).json())["jobs"][0]
            assert (as_admin["patient_name"], as_admin["patient_id"]) == ("Doe^Jane", "PID-123")
            rsp = await http.post(f"/api/jobs/{job['id']}/cancel", headers=viewer)
            assert rsp.status == 403 and "viewer role" in (await rsp.json())["error"]
            assert (await http.get("/api/audit", headers=viewer)).status == 403
            rsp = await http.get("/api/jobs", headers={**viewer, "Origin": "http://viewer.example:3000"})
            assert rsp.headers["Access-Control-Allow-Origin"] == "http://viewer.example:3000"
            rsp = await http.get("/api/jobs", headers={**viewer, "Origin": "http://evil.example"})
            assert rsp.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect("/ws/jobs")
            assert info.value.status == 401
            ticket = (await (await http.post("/api/ws-ticket", headers=viewer)).json())["ticket"]
            async with http.ws_connect(f"/ws/jobs?ticket={ticket}") as ws:
                assert (await ws.receive()).json()["type"] == "snapshot"
            audit = (await (await http.get("/api/audit", headers=admin)).json())["audit"]
            assert {"viewer", "admin"} <= {a["actor"] for a in audit}
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert logged, "the node logged nothing at INFO: the PHI check below would prove nothing"
    assert not [m for m in logged if "Doe^Jane" in m or "PID-123" in m]     # PHI only in the admin's JSON


async def test_metrics_and_openapi_and_models(api) -> None:
    node, http = api
    await send(node, series())
    await async_wait_until(lambda: node.store.list_jobs(state="done"), 30, "a done job")
    text = await (await http.get("/metrics")).text()
    assert 'segnode_jobs{state="done"} 1' in text
    assert "segnode_instances_received_total 12" in text
    assert "segnode_websocket_clients 0" in text
    spec = await (await http.get("/api/openapi.json")).json()
    assert "/ws/jobs" in spec["paths"]
    models = (await (await http.get("/api/models")).json())["models"]
    assert models[0]["name"] == "ct-basic" and [lb["name"] for lb in models[0]["labels"]] == [
        "Body soft tissue", "Lungs", "Bone"]


async def test_status_page_is_served(api) -> None:
    _, http = api
    html = await (await http.get("/")).text()
    assert "<title>Segnode</title>" in html and "/static/segnode.js" in html
    assert (await http.get("/static/segnode.js")).status == 200


async def test_a_study_socket_gets_only_its_study_and_done_says_what_was_delivered(api) -> None:
    node, http = api
    mine, other = series(), series()
    async with http.ws_connect(f"/ws/jobs?study={mine[0].StudyInstanceUID}") as ws:
        assert (await ws.receive()).json()["type"] == "snapshot"
        assert node.bus.subscriber_count == 1
        await send(node, other)                              # another study's job, first
        await send(node, mine)
        msgs = await receive_until(ws, lambda m: m[-1]["state"] in ("done", "failed"))
    assert {m["study_instance_uid"] for m in msgs} == {mine[0].StudyInstanceUID}
    job_id = msgs[0]["job_id"]
    assert [m["seq"] for m in msgs] == [e.seq for e in await node.store.events(job_id)]
    assert msgs[-1]["state"] == "done" and msgs[-1]["delivered"] == {}          # no destination configured
    await async_wait_until(lambda: _no_subscribers(node), 5, "the study's subscription to close")


async def _no_subscribers(node: Node) -> bool:
    return node.bus.subscriber_count == 0
