"""A refused crowd is told to come back at different whole seconds, not all at once."""

from __future__ import annotations

import collections

import pytest

from server.admission import Overloaded, WriteQueue


async def test_a_full_queue_spreads_retry_after_over_one_to_three_whole_seconds() -> None:
    queue: WriteQueue[int] = WriteQueue("questions", capacity=1, max_wait_s=1.0, batch_max=8)
    queue.put(1)
    told: collections.Counter[float] = collections.Counter()
    for _ in range(600):
        with pytest.raises(Overloaded) as refused:
            queue.put(2)
        told[refused.value.retry_after_s] += 1
    # Whole seconds (what the Retry-After header can say), each about a third.
    assert set(told) == {1.0, 2.0, 3.0}, told
    assert min(told.values()) > 120, told
