"""Liveness keys: present while a process beats, gone when it stops or goes silent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.heartbeat import Heartbeat

pytestmark = pytest.mark.anyio


@pytest.fixture
async def layer(redis_url: str) -> AsyncIterator[RedisStreamsChannelLayer]:
    layer = RedisStreamsChannelLayer(hosts=[redis_url], prefix="hbtest")
    yield layer
    await layer.close()


async def test_beating_process_is_alive_and_described(
    layer: RedisStreamsChannelLayer, redis_url: str
) -> None:
    beat = Heartbeat(layer, "wk", "w1", interval=0.1, timeout=1.0, info=lambda: {"active": 3})
    async with anyio.create_task_group() as tg:
        await tg.start(beat.run)
        assert await beat.alive("wk", ["w1", "w2"]) == {"w1"}
        client = aioredis.Redis.from_url(redis_url)
        try:
            data = json.loads(await client.get("hbtest:hb:wk:w1"))
            ttl = await client.pttl("hbtest:hb:wk:w1")
        finally:
            await client.aclose()
        assert data["active"] == 3
        assert data["role"] == "wk"
        assert 0 < ttl <= 1000
        tg.cancel_scope.cancel()
    # A clean stop deletes the key at once: peers need not wait for the TTL.
    assert await beat.alive("wk", ["w1"]) == set()


async def test_silent_process_expires_after_the_timeout(layer: RedisStreamsChannelLayer) -> None:
    beat = Heartbeat(layer, "ps", "p1", interval=0.1, timeout=0.3)
    await beat.beat()  # one beat, then silence, as after SIGKILL
    assert await beat.alive("ps", ["p1"]) == {"p1"}
    await anyio.sleep(0.5)
    assert await beat.alive("ps", ["p1"]) == set()


async def test_timeout_must_exceed_interval(layer: RedisStreamsChannelLayer) -> None:
    with pytest.raises(ValueError, match="exceed"):
        Heartbeat(layer, "ps", "p1", interval=1.0, timeout=1.0)


async def test_a_lapse_is_reported_and_nobody_is_judged_for_a_timeout(
    layer: RedisStreamsChannelLayer, redis_url: str
) -> None:
    """Redis lost every key (a restart): the process learns it lapsed, and
    peers whose keys vanished at the same moment are not taken for dead."""
    lapsed = anyio.Event()

    async def on_lapse() -> None:
        lapsed.set()

    beat = Heartbeat(layer, "ps", "me", interval=0.1, timeout=1.0, on_lapse=on_lapse)
    peer = Heartbeat(layer, "wk", "peer", interval=0.1, timeout=1.0)
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(beat.run)
            await peer.beat()
            await client.flushall()  # what a restart without persistence does
            with anyio.fail_after(2):
                await lapsed.wait()
            lapsed_at = anyio.current_time()
            # The peer has not beaten again, yet it is not judged gone...
            assert await beat.alive("wk", ["peer"]) == {"peer"}
            # ...until a whole timeout has passed and it still has not.
            await anyio.sleep(lapsed_at + 1.0 - anyio.current_time() + 0.05)
            assert await beat.alive("wk", ["peer"]) == set()
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()
