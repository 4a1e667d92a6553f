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


async def test_a_take_does_not_wait_on_an_audience_writer_stuck_before_the_database() -> None:
    """An audience writer holding its turn while it waits for a pool connection
    must not hold the take: the take goes ahead after PROGRAMME_WAIT_S."""
    gate = WriteGate(enabled=True)
    holding, release = asyncio.Event(), asyncio.Event()
    took = asyncio.Event()

    async def stuck_audience_writer() -> None:
        async with gate.audience():
            holding.set()
            await release.wait()

    async def take() -> None:
        async with gate.programme():
            took.set()

    writer = asyncio.create_task(stuck_audience_writer())
    await _until(holding)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(take(), timeout=2)
    assert took.is_set()
    assert loop.time() - started < 1.0
    # And the gate still works afterwards: the writer finishes, the next take
    # has its turn at once.
    release.set()
    await writer
    async with asyncio.timeout(1), gate.programme():
        pass
