"""The connect stream's work queue: what a worker acks is what it still holds.

``ack_held`` is the step that keeps a request from running twice: a worker
acks what it took just before starting the apps, and an entry another
worker reclaimed meanwhile (this one stalled past the idle time) must not be
acked or started here. The end-to-end version with a SIGSTOPped worker is in
``tests/e2e/test_faults.py``; these pin the script's rules directly.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from channels_lite.exceptions import BrokerUnavailable
from channels_lite.layer.queue import WorkQueue

pytestmark = pytest.mark.anyio

STREAM = "asgi:test:connect"
GROUP = "workers"


async def _queue(make_redis_layer: Any) -> WorkQueue:
    queue = WorkQueue(make_redis_layer(), STREAM, GROUP)
    await queue.ensure_group()
    return queue


async def _offer(queue: WorkQueue, count: int) -> list[bytes]:
    return [await queue.offer({b"n": str(i).encode()}) for i in range(count)]


async def test_ack_held_acks_and_deletes_what_the_consumer_holds(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    queue = await _queue(make_redis_layer)
    ids = await _offer(queue, 3)
    taken = await queue.take("a", 10, 100)
    assert [entry_id for entry_id, _ in taken] == ids

    # In any order: the script finds the range itself.
    assert await queue.ack_held("a", list(reversed(ids))) == set(ids)

    assert await raw_redis.xlen(STREAM) == 0
    assert (await raw_redis.xpending(STREAM, GROUP))["pending"] == 0


async def test_ack_held_leaves_what_another_consumer_took_over(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    queue = await _queue(make_redis_layer)
    ids = await _offer(queue, 3)
    await queue.take("a", 10, 100)
    # "b" reclaims the middle one while "a" is stalled.
    await raw_redis.xclaim(STREAM, GROUP, "b", 0, [ids[1]])

    assert await queue.ack_held("a", ids) == {ids[0], ids[2]}

    remaining = await raw_redis.xrange(STREAM)
    assert [entry_id for entry_id, _ in remaining] == [ids[1]]
    pending = await raw_redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(ids[1], b"b")]


async def test_ack_held_ignores_entries_of_the_consumer_it_was_not_asked_about(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    queue = await _queue(make_redis_layer)
    ids = await _offer(queue, 3)
    await queue.take("a", 10, 100)

    # Asked about the first and last only: the middle one, though "a" holds
    # it and it lies in the range, is not acked.
    assert await queue.ack_held("a", [ids[0], ids[2]]) == {ids[0], ids[2]}

    pending = await raw_redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [ids[1]]


async def test_ack_held_takes_more_ids_than_lua_unpacks_at_once(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    # Lua's unpack refuses about 8,000 values: a worker with a high
    # --concurrency can take more in one go after a quiet spell.
    queue = await _queue(make_redis_layer)
    pipe = raw_redis.pipeline(transaction=False)
    for i in range(9000):
        pipe.xadd(STREAM, {b"n": str(i).encode()})
    ids = await pipe.execute()
    taken = await queue.take("a", 10_000, 100)
    assert len(taken) == 9000

    assert await queue.ack_held("a", ids) == set(ids)

    assert await raw_redis.xlen(STREAM) == 0
    assert (await raw_redis.xpending(STREAM, GROUP))["pending"] == 0


async def test_take_from_a_redis_gone_silent_fails_instead_of_hanging(
    make_redis_layer: Any,
) -> None:
    """A connection that stops answering without a reset (a host gone, a
    partition) must not hold a worker's take until TCP keepalive gives up:
    past the block and a grace period it fails as an outage, which the
    worker waits out and retries on a new connection."""
    with socket.socket() as listener:  # accepts (the kernel's backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        queue = WorkQueue(make_redis_layer(hosts=[f"redis://127.0.0.1:{port}/0"]), STREAM, GROUP)
        started = anyio.current_time()
        with anyio.fail_after(15), pytest.raises(BrokerUnavailable, match="in time"):
            await queue.take("w1", 1, 100)
        assert anyio.current_time() - started < 8
