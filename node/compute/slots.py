"""The worker slots of a backend (its model processes, its Ray actors): each runs one job at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class FreeSlots:
    """Slots 0..count-1, handed out one job each: `async with slots.hold() as slot` waits for a free one
    and gives it back when the job ends, however it ends. The backend owns what stands behind a slot
    and may replace it (a restarted process, a new actor) while the slot is held."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a backend needs at least one worker slot, got {count}")
        self._free: asyncio.Queue[int] = asyncio.Queue()     # bound to a loop at its first wait, not here
        for slot in range(count):
            self._free.put_nowait(slot)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[int]:
        slot = await self._free.get()
        try:
            yield slot
        finally:
            self._free.put_nowait(slot)
