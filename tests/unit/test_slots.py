"""A backend's worker slots: one job each at a time, given back however the job ends."""

from __future__ import annotations

import asyncio

import pytest

from node.compute.slots import FreeSlots


async def test_each_job_holds_its_own_slot_and_the_next_waits_for_one_to_be_freed() -> None:
    slots = FreeSlots(2)
    release = asyncio.Event()
    held: list[int] = []

    async def job() -> int:
        async with slots.hold() as slot:
            held.append(slot)
            await release.wait()
            return slot

    first, second = asyncio.create_task(job()), asyncio.create_task(job())
    async with asyncio.timeout(5):
        while len(held) < 2:
            await asyncio.sleep(0)
    assert sorted(held) == [0, 1]
    third = asyncio.create_task(job())
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(held) == 2 and not third.done()          # both slots are busy
    release.set()
    async with asyncio.timeout(5):
        assert {await first, await second} == {0, 1}
        assert await third in (0, 1)


async def test_a_slot_comes_back_when_its_job_raises() -> None:
    slots = FreeSlots(1)
    with pytest.raises(RuntimeError):
        async with slots.hold():
            raise RuntimeError("the model process died")
    async with asyncio.timeout(5), slots.hold() as slot:
        assert slot == 0


async def test_a_job_cancelled_while_waiting_takes_no_slot() -> None:
    slots = FreeSlots(1)

    async def job() -> None:
        async with slots.hold():
            pytest.fail("a cancelled job ran")
    async with slots.hold():
        waiting = asyncio.create_task(job())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    async with asyncio.timeout(5), slots.hold() as slot:
        assert slot == 0


def test_a_backend_without_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one worker slot, got 0"):
        FreeSlots(0)
