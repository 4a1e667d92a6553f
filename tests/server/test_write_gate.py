"""On SQLite, this process's writers take turns at one gate, the programme's first."""

from __future__ import annotations

import asyncio

from server.db import WriteGate


async def _until(condition: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        await condition.wait()


async def test_a_take_waiting_goes_before_audience_batches_that_came_first() -> None:
    gate = WriteGate(enabled=True)
    order: list[str] = []
    writing, release = asyncio.Event(), asyncio.Event()

    async def audience(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.audience():
            order.append(name)
            if hold is not None:
                writing.set()
                await hold.wait()

    async def programme(name: str) -> None:
        async with gate.programme():
            order.append(name)

    first = asyncio.create_task(audience("votes batch 1", hold=release))
    await _until(writing)  # a batch of votes is being written
    queued = [asyncio.create_task(audience(f"questions batch {n}")) for n in (1, 2)]
    take = asyncio.create_task(programme("take"))
    for _ in range(5):  # every waiter has reached the gate (no sleeping on time)
        await asyncio.sleep(0)
    assert order == ["votes batch 1"]  # one writer at a time
    release.set()
    await asyncio.gather(first, take, *queued)
    # The take waited for the batch under way only, then went first.
    assert order == ["votes batch 1", "take", "questions batch 1", "questions batch 2"]


async def test_on_postgresql_the_gate_lets_every_writer_through_at_once() -> None:
    gate = WriteGate.for_url("postgresql+asyncpg://tv@127.0.0.1/tv")
    inside = 0
    both_in = asyncio.Event()

    async def write() -> None:
        nonlocal inside
        async with gate.audience():
            inside += 1
            if inside == 2:
                both_in.set()
            await _until(both_in)

    await asyncio.gather(write(), write())
    assert WriteGate.for_url("sqlite:///tv.sqlite3").enabled
