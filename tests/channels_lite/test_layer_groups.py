"""Groups: group_add, group_discard, group_send and group_expiry, on both backends.

Why: group_send is how a publisher reaches every WebSocket in a room. Its
promises: every member gets the message exactly once, a full member never
blocks the others (it is skipped and counted), discarded or expired members
get nothing, and a huge group of process-specific channels costs one entry.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from ._support import assert_nothing_pending, recv, specific_stream_key

pytestmark = pytest.mark.anyio


async def test_group_send_reaches_every_member_once(layer: Any) -> None:
    specific = [await layer.new_channel() for _ in range(3)]
    members = ["test.group.a", "test.group.b", *specific]
    for channel in members:
        await layer.group_add("test.room", channel)
    await layer.group_add("test.room", members[0])  # adding twice is one membership
    await layer.group_add("test.room", specific[0])
    await layer.group_send("test.room", {"type": "test.hello", "body": b"\x00"})
    for channel in members:
        assert await recv(layer, channel) == {"type": "test.hello", "body": b"\x00"}
        await assert_nothing_pending(layer, channel)


async def test_group_send_to_an_empty_group_is_a_no_op(layer: Any) -> None:
    await layer.group_send("test.nobody", {"type": "test.m"})
    await layer.group_add("test.transient", "test.gone")
    await layer.group_discard("test.transient", "test.gone")
    await layer.group_send("test.transient", {"type": "test.m"})
    await assert_nothing_pending(layer, "test.gone")
    assert layer.statistics().dropped == 0


async def test_groups_are_independent(layer: Any) -> None:
    await layer.group_add("test.g1", "test.only.g1")
    await layer.group_add("test.g2", "test.only.g2")
    await layer.group_add("test.g1", "test.both")
    await layer.group_add("test.g2", "test.both")
    await layer.group_send("test.g1", {"type": "test.from", "group": 1})
    await layer.group_send("test.g2", {"type": "test.from", "group": 2})
    assert await recv(layer, "test.only.g1") == {"type": "test.from", "group": 1}
    assert await recv(layer, "test.only.g2") == {"type": "test.from", "group": 2}
    assert await recv(layer, "test.both") == {"type": "test.from", "group": 1}
    assert await recv(layer, "test.both") == {"type": "test.from", "group": 2}
    for channel in ("test.only.g1", "test.only.g2", "test.both"):
        await assert_nothing_pending(layer, channel)


async def test_group_discard(layer: Any) -> None:
    specific = await layer.new_channel()
    for channel in ("test.stay", "test.leave", specific):
        await layer.group_add("test.room", channel)
    await layer.group_discard("test.room", "test.leave")
    await layer.group_discard("test.room", specific)
    # Discarding a non-member, or from a group that never existed, is fine.
    await layer.group_discard("test.room", "test.leave")
    await layer.group_discard("test.room", "test.never.a.member")
    await layer.group_discard("test.no.such.group", "test.stay")

    await layer.group_send("test.room", {"type": "test.after.discard"})
    assert await recv(layer, "test.stay") == {"type": "test.after.discard"}
    await assert_nothing_pending(layer, "test.leave")
    await assert_nothing_pending(layer, specific)

    await layer.group_add("test.room", "test.leave")  # rejoining works
    await layer.group_send("test.room", {"type": "test.rejoined"})
    assert await recv(layer, "test.leave") == {"type": "test.rejoined"}
    assert await recv(layer, "test.stay") == {"type": "test.rejoined"}


async def test_member_at_capacity_is_skipped_and_counted(make_layer: Any) -> None:
    layer = make_layer(capacity=1)
    members = ["test.cap.a", "test.cap.full", "test.cap.c"]
    for channel in members:
        await layer.group_add("test.room", channel)
    await layer.send("test.cap.full", {"type": "test.direct"})

    await layer.group_send("test.room", {"type": "test.group"})  # no ChannelFull

    assert await recv(layer, "test.cap.a") == {"type": "test.group"}
    assert await recv(layer, "test.cap.c") == {"type": "test.group"}
    assert await recv(layer, "test.cap.full") == {"type": "test.direct"}
    for channel in members:
        await assert_nothing_pending(layer, channel)
    stats = layer.statistics()
    assert stats.dropped == 1
    assert stats.full == 0
    assert stats.group_sends == 1


async def test_group_members_receive_independent_copies(layer: Any) -> None:
    members = ["test.copy.normal", *[await layer.new_channel() for _ in range(3)]]
    for channel in members:
        await layer.group_add("test.copies", channel)
    await layer.group_send("test.copies", {"type": "test.copy", "items": [1], "d": {"k": "v"}})
    for channel in members:
        got = await recv(layer, channel)
        assert got == {"type": "test.copy", "items": [1], "d": {"k": "v"}}
        got["items"].append("mutated by a consumer")
        got["d"]["k"] = "mutated"


async def test_group_expiry_and_refresh(make_layer: Any) -> None:
    layer = make_layer(group_expiry=2)
    await layer.group_add("test.expiring", "test.old")
    await layer.group_add("test.expiring", "test.refreshed")
    await anyio.sleep(1.3)
    await layer.group_add("test.expiring", "test.refreshed")  # restarts its clock
    await layer.group_add("test.expiring", "test.new")
    await anyio.sleep(1.3)
    # test.old was added 2.6 s ago (> group_expiry); the others 1.3 s ago.
    await layer.group_send("test.expiring", {"type": "test.m"})
    assert await recv(layer, "test.refreshed") == {"type": "test.m"}
    assert await recv(layer, "test.new") == {"type": "test.m"}
    await assert_nothing_pending(layer, "test.old")


@pytest.mark.slow
async def test_group_send_to_ten_thousand_members(
    make_layer: Any, layer_hosts: list[str] | None
) -> None:
    layer = make_layer()
    specific = [await layer.new_channel() for _ in range(10_000)]
    normal = [f"test.big.{n}" for n in range(1_100)]  # > 1,000 streams in one call
    with anyio.fail_after(30):
        for channel in specific + normal:
            await layer.group_add("test.big", channel)
        await layer.group_send("test.big", {"type": "test.broadcast", "n": 1})

    if layer_hosts is not None:  # Redis: all 10,000 share one stream and one entry
        client = aioredis.Redis.from_url(layer_hosts[0])
        try:
            assert await client.xlen(specific_stream_key("asgi", specific[0])) == 1
        finally:
            await client.aclose()

    with anyio.fail_after(20):
        for channel in specific + normal:
            assert await layer.receive(channel) == {"type": "test.broadcast", "n": 1}
    stats = layer.statistics()
    assert stats.received == 11_100
    assert (stats.dropped, stats.malformed) == (0, 0)
