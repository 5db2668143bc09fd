"""Senders against peers that misbehave on a real socket: a PACS that accepts and never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.delivery.destinations import Destination
from node.delivery.senders import make_sender
from node.errors import SendError


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never answers (a hung PACS); after 15 s it drops them, so a sender
    without a timeout makes the test fail on time instead of hanging it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        srv.settimeout(0.1)
        started = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - started > 15:
                for c in held:
                    c.close()
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            held.append(conn)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


@pytest.mark.parametrize("kind", ["orthanc-rest", "dicom"])
def test_a_pacs_that_never_answers_is_a_retryable_failure_within_the_timeout(
        silent_server: int, kind: str, tmp_path: Path) -> None:
    dest = (Destination(name="pacs", kind=kind, url=f"http://127.0.0.1:{silent_server}") if kind == "orthanc-rest"
            else Destination(name="pacs", kind=kind, host="127.0.0.1", port=silent_server, ae_title="PACS"))
    result = tmp_path / "seg.dcm"
    result.write_bytes(b"\0" * 128 + b"DICM")
    t0 = time.monotonic()
    with pytest.raises(SendError) as info:
        make_sender(dest, "SEGNODE", timeout_s=1.0).send([result])
    assert info.value.retryable
    assert "pacs" in str(info.value)
    assert time.monotonic() - t0 < 10
