"""Capacity, per-channel capacity patterns and message expiry, on both backends.

Why: these bound what a slow or absent consumer can cost. A channel at
capacity refuses new messages with ``ChannelFull`` (catchable as Channels' own
exception, so existing consumers keep working); a message nobody received
within ``expiry`` is never delivered, and every such loss is counted.
"""

from __future__ import annotations

import re
import tracemalloc
from typing import Any

import anyio
import channels.exceptions
import pytest

from channels_lite.exceptions import ChannelFull, ChannelsLiteError
from channels_lite.layer import InMemoryChannelLayer

from ._support import assert_nothing_pending, recv

pytestmark = pytest.mark.anyio


async def _fill(layer: Any, channel: str, limit: int = 50) -> int:
    """Send until ChannelFull; return how many messages were accepted."""
    for n in range(limit):
        try:
            await layer.send(channel, {"type": "test.fill", "n": n})
        except ChannelFull:
            return n
    raise AssertionError(f"{channel!r} accepted {limit} messages without ChannelFull")


async def test_capacity(make_layer: Any) -> None:
    layer = make_layer(capacity=3)
    for n in range(3):
        await layer.send("test.cap", {"type": "test.m", "n": n})
    with pytest.raises(ChannelFull) as info:
        await layer.send("test.cap", {"type": "test.m", "n": 3})
    assert isinstance(info.value, ChannelsLiteError)
    await layer.send("test.cap.other", {"type": "test.m"})  # capacity is per channel

    assert (await recv(layer, "test.cap"))["n"] == 0
    await layer.send("test.cap", {"type": "test.m", "n": 4})  # room again
    with pytest.raises(ChannelFull):
        await layer.send("test.cap", {"type": "test.m", "n": 5})
    assert [(await recv(layer, "test.cap"))["n"] for _ in range(3)] == [1, 2, 4]
    await assert_nothing_pending(layer, "test.cap")
    assert layer.statistics().full == 2


async def test_socket_reply_channels_have_the_relays_capacity_by_default(
    make_layer: Any,
) -> None:
    # A protocol server's stream carries all of its connections: a push to one
    # socket's reply channel must not be refused because the default capacity
    # counts the others' traffic. A caller can still set that pattern.
    layer = make_layer(capacity=3)
    for n in range(10):
        await layer.send("ps.server.loop!7", {"type": "websocket.push", "text": str(n)})
    assert await _fill(layer, "other!7") == 3  # other process-specific channels: the default
    strict = make_layer(capacity=3, channel_capacity={"ps.*!*": 2})
    assert await _fill(strict, "ps.another.loop!8") == 2


async def test_channel_full_is_channels_channel_full(make_layer: Any) -> None:
    layer = make_layer(capacity=1)
    await layer.send("test.compat", {"type": "test.m"})
    with pytest.raises(channels.exceptions.ChannelFull):
        await layer.send("test.compat", {"type": "test.m"})


async def test_capacity_of_a_process_specific_channel(make_layer: Any) -> None:
    layer = make_layer(capacity=2)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.m", "n": 0})
    await layer.send(channel, {"type": "test.m", "n": 1})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "test.m", "n": 2})
    assert (await recv(layer, channel))["n"] == 0
    await layer.send(channel, {"type": "test.m", "n": 3})
    assert [(await recv(layer, channel))["n"] for _ in range(2)] == [1, 3]


async def test_channel_capacity_patterns(make_layer: Any) -> None:
    layer = make_layer(
        capacity=10,
        channel_capacity={
            "http.request": 2,
            "websocket.*": 3,
            re.compile(r"^rx\.\d+$"): 1,
            "first.*": 4,
            "first.match": 7,  # never used: "first.*" matches first
        },
    )
    assert await _fill(layer, "http.request") == 2
    assert await _fill(layer, "http.request.body") == 10  # a glob matches the whole name
    assert await _fill(layer, "websocket.send") == 3
    assert await _fill(layer, "websocket.receive.x") == 3
    assert await _fill(layer, "rx.42") == 1
    assert await _fill(layer, "rx.abc") == 10
    assert await _fill(layer, "first.match") == 4
    assert await _fill(layer, "plain.channel") == 10


async def test_expired_messages_are_never_delivered(make_layer: Any) -> None:
    layer = make_layer(expiry=1)
    specific_direct, specific_group, specific_buffered = [
        await layer.new_channel() for _ in range(3)
    ]
    await layer.send("test.exp.direct", {"type": "test.old"})
    await layer.send(specific_direct, {"type": "test.old"})
    await layer.group_add("test.exp.group", "test.exp.member")
    await layer.group_add("test.exp.group", specific_group)
    await layer.group_send("test.exp.group", {"type": "test.old"})
    # Received in time: one of two; the other may now sit in a local buffer.
    for channel in ("test.exp.buffered", specific_buffered):
        await layer.send(channel, {"type": "test.fresh"})
        await layer.send(channel, {"type": "test.old"})
        assert await recv(layer, channel) == {"type": "test.fresh"}

    await anyio.sleep(1.5)  # let expiry elapse

    for channel in (
        "test.exp.direct",
        specific_direct,
        "test.exp.member",
        specific_group,
        "test.exp.buffered",
        specific_buffered,
    ):
        await assert_nothing_pending(layer, channel)
    stats = layer.statistics()
    assert stats.expired == 6
    assert stats.received == 2 + 6  # the fresh ones and the markers


async def test_expired_messages_free_capacity(make_layer: Any) -> None:
    layer = make_layer(capacity=1, expiry=1)
    specific = await layer.new_channel()
    for channel in ("test.exp.cap", specific):
        await layer.send(channel, {"type": "test.old"})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "test.refused"})

    await anyio.sleep(1.5)  # let expiry elapse

    for channel in ("test.exp.cap", specific):
        await layer.send(channel, {"type": "test.new"})
        assert await recv(layer, channel) == {"type": "test.new"}
    assert layer.statistics().expired == 2


async def test_memory_does_not_grow_with_the_process_specific_channels_used() -> None:
    # The runtime makes a new process-specific channel per connection: a
    # process serving millions of connections must not keep something per
    # name (per-name caches once held 65,536 of them: +20 MiB in a worker).
    # The names are handled by the code both backends share; the in-memory
    # one keeps redis-py's own buffers out of the measurement.
    layer = InMemoryChannelLayer()

    async def use(count: int) -> None:
        for n in range(count):
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "test.m", "n": n})
            assert (await recv(layer, channel))["n"] == n

    await use(500)  # warm up: buffers, connections, caches of what repeats
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await use(3000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 150_000, f"{grown} bytes kept for 3,000 used channels"
