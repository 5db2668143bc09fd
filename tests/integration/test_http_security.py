"""The HTTP door's credentials: WebSocket tickets, no token in a URL, and every refusal audited and counted.

The web app of a running node (its real store and service) with the ticket book's and the security log's
clock injected, so a stale ticket or a new minute is a `clock.advance`, not a sleep.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from node.app import Node
from tests.support import FakeClock, running_node
from viewer_api.app import init_app
from viewer_api.auth import TokenAuth
from viewer_api.security_log import SecurityLog
from viewer_api.tickets import TicketBook

ADMIN_TOKEN, VIEWER_TOKEN = "a" * 24, "v" * 24
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


@pytest.fixture
async def web(tmp_path: Path, aiohttp_client):
    clock = FakeClock()
    async with running_node(tmp_path) as node:
        app = init_app(node.store, node.service, TokenAuth([f"alice={ADMIN_TOKEN}"], [f"ohif={VIEWER_TOKEN}"]),
                       tickets=TicketBook(now=clock), security=SecurityLog(node.store, rows_per_minute=4, now=clock))
        yield node, await aiohttp_client(app), clock


async def ticket(client: TestClient, headers: dict[str, str] = VIEWER) -> str:
    rsp = await client.post("/api/ws-ticket", headers=headers)
    assert rsp.status == 200 and rsp.headers["Cache-Control"] == "no-store"
    body = await rsp.json()
    assert body["expires_in_s"] == 30
    return str(body["ticket"])


async def refused_socket(client: TestClient, query: str) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/ws/jobs?{query}")
    return info.value.status


async def security_rows(node: Node) -> list[dict]:
    return [r for r in await node.store.audit_log(1000) if r["action"].startswith("refused")]


async def test_a_ticket_opens_one_socket_once_for_the_principal_it_was_issued_to(web) -> None:
    node, client, _ = web
    assert (await client.post("/api/ws-ticket")).status == 401                   # a ticket needs a token
    first = await ticket(client)                                                # any role may get one
    assert "Strict-Transport-Security" not in (await client.get("/api/health")).headers    # plain HTTP: no HSTS
    async with client.ws_connect(f"/ws/jobs?ticket={first}") as ws:
        assert (await ws.receive_json())["type"] == "snapshot"
    watched = [r for r in await node.store.audit_log() if r["action"] == "watch jobs"]
    assert [(r["actor"], r["role"]) for r in watched] == [("ohif", "viewer")]    # bound to the principal

    assert await refused_socket(client, f"ticket={first}") == 401               # used up
    rows = await security_rows(node)
    assert [(r["action"], r["actor"], r["role"], r["remote"]) for r in rows] == [
        ("refused ticket", "ohif", "viewer", "127.0.0.1")]
    assert "already used" in rows[0]["detail"] and first not in rows[0]["detail"]

    async with client.ws_connect("/ws/jobs", headers=ADMIN) as ws:              # a header still works (not a browser)
        assert (await ws.receive_json())["type"] == "snapshot"


async def test_stale_forged_and_missing_tickets_get_401_and_only_presented_ones_are_audited(web) -> None:
    node, client, clock = web
    stale, fresh = await ticket(client), await ticket(client, ADMIN)
    clock.advance(30.1)
    assert await refused_socket(client, f"ticket={stale}") == 401
    assert await refused_socket(client, f"ticket={fresh}") == 401
    assert await refused_socket(client, "ticket=made-up") == 401
    assert await refused_socket(client, "ticket=") == 401
    assert await refused_socket(client, "since=0") == 401                      # no credential at all: not audited
    rsp = await client.get("/api/jobs")
    assert rsp.status == 401 and "Authorization: Bearer" in (await rsp.json())["error"]
    rows = (await security_rows(node))[::-1]
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("refused ticket", "ohif"), ("refused ticket", "alice"), ("refused ticket", "-"), ("refused ticket", "-")]
    assert "expired: issued 30 s ago" in rows[0]["detail"] and "unknown ticket" in rows[2]["detail"]
    assert all("GET /ws/jobs" in r["detail"] for r in rows)


async def test_a_token_in_a_url_gets_400_on_every_path_and_names_whose_token_leaked(web) -> None:
    node, client, _ = web
    for path in (f"/api/jobs?token={VIEWER_TOKEN}", f"/api/health?token={VIEWER_TOKEN}", "/metrics?token=nonsense"):
        rsp = await client.get(path, headers=ADMIN)
        body = await rsp.json()
        assert rsp.status == 400 and "Authorization header" in body["error"] and "ticket" in body["error"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/ws/jobs?token={VIEWER_TOKEN}")
    assert info.value.status == 400
    rows = (await security_rows(node))[::-1]
    assert [r["action"] for r in rows] == ["refused token in url"] * 4
    assert (rows[0]["actor"], rows[0]["role"]) == ("ohif", "viewer") and "replace it" in rows[0]["detail"]
    assert rows[2]["actor"] == "-" and "not a known token" in rows[2]["detail"]
    assert rows[3]["detail"].endswith("(GET /ws/jobs)")
    assert not [r for r in rows if VIEWER_TOKEN in r["detail"] or "nonsense" in r["detail"]]


async def test_bad_tokens_get_401_are_audited_throttled_per_address_and_all_counted(web) -> None:
    node, client, clock = web
    for header in ("Bearer wrong-token-0123456789", "Basic YWxpY2U6cGFzcw==", "Bearer ", "Bearer x", "Bearer y",
                   "Bearer z"):
        rsp = await client.get("/api/jobs", headers={"Authorization": header})
        assert rsp.status == 401 and rsp.headers["WWW-Authenticate"] == "Bearer"
    rows = (await security_rows(node))[::-1]
    assert [r["action"] for r in rows] == ["refused token"] * 4                     # rows_per_minute=4
    assert [r["detail"] for r in rows] == ["unknown bearer token (GET /api/jobs)",
                                           'the Authorization header is not "Bearer <token>" (GET /api/jobs)',
                                           'the Authorization header is not "Bearer <token>" (GET /api/jobs)',
                                           "unknown bearer token (GET /api/jobs)"]
    assert all(r["remote"] == "127.0.0.1" and r["actor"] == "-" and r["role"] == "http" for r in rows)
    clock.advance(60)
    await client.get("/api/models", headers={"Authorization": "Bearer another-wrong-one"})
    last = (await security_rows(node))[0]
    assert last["detail"] == ("unknown bearer token (GET /api/models); 2 more from this address were counted, "
                              "not written")

    metrics = await (await client.get("/metrics")).text()
    assert 'segnode_security_events_total{kind="refused token"} 7' in metrics
    assert 'segnode_security_events_total{kind="refused ticket"} 0' in metrics
    assert "# TYPE segnode_security_events_total counter" in metrics


async def test_the_audit_shows_security_events_of_both_doors_to_admins_only(web) -> None:
    node, client, _ = web
    await client.get("/api/jobs", headers=ADMIN)                                  # an ordinary audit row
    await client.get("/api/jobs", headers={"Authorization": "Bearer not-a-token-at-all"})
    await node.store.audit("SCANNER", "dicom", "refused certificate", remote="127.0.0.1",
                           detail="certificate expired")                          # as the DICOM door writes it
    await node.store.audit("-", "security", "https certificate not reloaded", detail="key does not match")
    rsp = await client.get("/api/audit?security=true", headers=ADMIN)
    assert rsp.status == 200
    assert [r["action"] for r in (await rsp.json())["audit"]] == [
        "https certificate not reloaded", "refused certificate", "refused token"]
    everything = (await (await client.get("/api/audit", headers=ADMIN)).json())["audit"]
    assert "list jobs" in {r["action"] for r in everything}
    assert (await client.get("/api/audit?security=true", headers=VIEWER)).status == 403
    assert (await client.get("/api/audit?security=maybe", headers=ADMIN)).status == 400
