"""The one door from other threads into the event loop: association threads (an instance row committed
on the loop, its events, a new study), inference progress callbacks. No other module in node/ calls
`call_soon_threadsafe` or `run_coroutine_threadsafe` (tests/unit/test_bridge.py holds it so)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopBridge:
    """A thread-to-loop crossing for one loop: `notify` (fire and forget), `submit` (start a coroutine and
    return) and `call` (run a coroutine and wait for its result, up to `timeout_s`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float = 30.0) -> None:
        self._loop = loop
        self._timeout_s = timeout_s

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run `fn(*args)` on the loop and wait for its result (from a non-loop thread only); after
        `timeout_s` cancel it and raise TimeoutError."""
        future = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def submit(self, fn: Callable[..., Coroutine[Any, Any, object]], *args: Any) -> None:
        """Start `fn(*args)` on the loop and return at once; `fn` handles its own errors."""
        asyncio.run_coroutine_threadsafe(fn(*args), self._loop)

    def notify(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule `fn(*args)` on the loop and return at once (from any thread)."""
        self._loop.call_soon_threadsafe(fn, *args)
