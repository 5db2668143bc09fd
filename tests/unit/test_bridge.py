"""node/bridge.py: what a thread gets from each crossing, and that it is the only crossing in node/."""

from __future__ import annotations

import ast
import asyncio
import threading

import pytest

from node.bridge import LoopBridge
from tests.peers.helpers import REPO

CROSSINGS = {"call_soon_threadsafe", "run_coroutine_threadsafe"}


def test_no_module_but_the_bridge_crosses_from_a_thread_into_the_loop() -> None:
    found = []
    for path in sorted((REPO / "node").rglob("*.py")):
        if path == REPO / "node" / "bridge.py":
            continue
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Attribute) and n.attr in CROSSINGS:
                found.append(f"{path.relative_to(REPO)}:{n.lineno} {n.attr}")
    assert found == []


async def test_call_returns_the_coroutine_s_result_and_notify_runs_on_the_loop() -> None:
    bridge = LoopBridge(asyncio.get_running_loop(), timeout_s=5)
    loop_thread = threading.get_ident()
    ran_on: list[int] = []
    notified = asyncio.Event()

    async def double(x: int) -> int:
        ran_on.append(threading.get_ident())
        return 2 * x

    def from_a_thread() -> int:
        bridge.notify(lambda: (ran_on.append(threading.get_ident()), notified.set()))
        return bridge.call(double, 21)
    assert await asyncio.to_thread(from_a_thread) == 42
    await asyncio.wait_for(notified.wait(), 5)
    assert ran_on == [loop_thread, loop_thread]


async def test_a_call_past_its_timeout_is_cancelled_on_the_loop() -> None:
    bridge = LoopBridge(asyncio.get_running_loop(), timeout_s=0.05)
    never = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(bridge.call, stuck)
    await asyncio.wait_for(cancelled.wait(), 5)
