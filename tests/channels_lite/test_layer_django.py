"""The layer as a Django Channels ``CHANNEL_LAYERS`` backend.

Why: switching a Channels project to channels-lite must be a one-line
settings change. That means: the ``CONFIG`` dict of channels_redis is accepted
as is, and Django code that calls the layer through ``async_to_sync`` (a view,
a ``SyncConsumer``, a management command) works, though each such call runs
in a fresh event loop in another thread. Real Channels consumers on the layer
are exercised in ``test_django_channels.py``.
"""

from __future__ import annotations

import gc
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from django.utils.module_loading import import_string

from channels_lite.exceptions import ChannelFull

from ._support import channel_stream_key, prefix_keys, recv

pytestmark = pytest.mark.anyio


@pytest.mark.redis_only
async def test_channels_redis_config_dict(redis_url: str, raw_redis: aioredis.Redis) -> None:
    setting: dict[str, Any] = {
        "BACKEND": "channels_lite.layer.RedisStreamsChannelLayer",
        "CONFIG": {
            "hosts": [redis_url],
            "prefix": "x",
            "expiry": 10,
            "group_expiry": 100,
            "capacity": 5,
            "channel_capacity": {"a.*": 2},
        },
    }
    # What channels.layers.ChannelLayerManager does with the setting.
    layer = import_string(setting["BACKEND"])(**setting["CONFIG"])
    try:
        for channel, capacity in (("a.b", 2), ("b.c", 5)):
            for n in range(capacity):
                await layer.send(channel, {"type": "test.m", "n": n})
            with pytest.raises(ChannelFull):
                await layer.send(channel, {"type": "test.m"})
        keys = await prefix_keys(raw_redis, "x")
        assert channel_stream_key("x", "a.b") in keys
        assert await prefix_keys(raw_redis, "asgi") == {}
        await layer.group_add("test.room", "b.d")
        await layer.group_send("test.room", {"type": "test.group"})
        assert await recv(layer, "b.d") == {"type": "test.group"}
        assert await recv(layer, "a.b") == {"type": "test.m", "n": 0}
    finally:
        await layer.close()


async def test_usable_through_async_to_sync_from_other_threads(layer: Any) -> None:
    # What a Django view or a SyncConsumer does: every call runs in a new loop.
    specific = await layer.new_channel()
    await layer.group_add("test.sync.group", "test.sync.member")
    await layer.group_add("test.sync.group", specific)

    def sync_code() -> None:
        async_to_sync(layer.send)("test.sync", {"type": "test.from.thread", "n": 1})
        async_to_sync(layer.send)("test.sync", {"type": "test.from.thread", "n": 2})
        async_to_sync(layer.group_send)("test.sync.group", {"type": "test.group.from.thread"})
        async_to_sync(layer.send)(specific, {"type": "test.direct.from.thread"})

    with anyio.fail_after(20):
        await anyio.to_thread.run_sync(sync_code)
    assert await recv(layer, "test.sync") == {"type": "test.from.thread", "n": 1}
    assert await recv(layer, "test.sync") == {"type": "test.from.thread", "n": 2}
    assert await recv(layer, "test.sync.member") == {"type": "test.group.from.thread"}
    assert await recv(layer, specific) == {"type": "test.group.from.thread"}
    assert await recv(layer, specific) == {"type": "test.direct.from.thread"}

    def sync_round_trip() -> dict[str, Any]:
        async_to_sync(layer.send)("test.sync", {"type": "test.round.trip"})
        return async_to_sync(layer.receive)("test.sync")  # type: ignore[no-any-return]

    with anyio.fail_after(20):
        assert await anyio.to_thread.run_sync(sync_round_trip) == {"type": "test.round.trip"}
    # The loops async_to_sync made are closed now. Collect them here, so that
    # anything they leaked (unclosed sockets) fails this test, not a later one.
    gc.collect()
