"""The Redis Streams backend seen from Redis: keys, several processes, restarts.

Why: some promises are about what the layer does *to Redis* (one stream per
process for its process-specific channels, one entry per stream for a
group_send, nothing left outside the prefix or without a TTL, everything gone
after flush) or about Redis misbehaving (a restart, garbage entries written by
someone else). Several layer instances on one server stand in for several
processes. Redis backend only.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from channels_lite import wire
from channels_lite.exceptions import BrokerUnavailable
from channels_lite.layer._base import BLOCK_SECONDS
from tests._redis import RedisServer

from ._support import (
    assert_nothing_pending,
    channel_stream_key,
    prefix_keys,
    recv,
    specific_stream_key,
    stream_keys,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only]

OUTAGE_ERRORS = (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def test_process_specific_channels_share_one_stream(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    layer = make_redis_layer(prefix="spec")
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.send(channel, {"type": "test.m", "to": channel})
    await layer.send("test.normal", {"type": "test.m"})

    stream = specific_stream_key("spec", channels[0])
    assert await stream_keys(raw_redis, "spec") == sorted(
        [stream, channel_stream_key("spec", "test.normal")]
    )
    assert await raw_redis.xlen(stream) == 3
    for channel in reversed(channels):
        assert await recv(layer, channel) == {"type": "test.m", "to": channel}


async def test_group_send_writes_one_entry_per_stream(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    first, second = make_redis_layer(), make_redis_layer()  # two "processes"
    first_members = [await first.new_channel() for _ in range(5)]
    second_members = [await second.new_channel() for _ in range(3)]
    normal = ["test.n1", "test.n2"]
    for channel in first_members + second_members + normal:
        await first.group_add("test.room", channel)

    await second.group_send("test.room", {"type": "test.hello"})

    streams = [
        specific_stream_key("asgi", first_members[0]),
        specific_stream_key("asgi", second_members[0]),
        *(channel_stream_key("asgi", c) for c in normal),
    ]
    assert sorted(streams) == await stream_keys(raw_redis, "asgi")
    for stream in streams:
        assert await raw_redis.xlen(stream) == 1, stream
    for layer, members in ((first, first_members + normal), (second, second_members)):
        for channel in members:
            assert await recv(layer, channel) == {"type": "test.hello"}


async def test_two_processes_share_a_normal_channel(make_redis_layer: Any) -> None:
    layers = [make_redis_layer(capacity=1000) for _ in range(2)]
    total = 300
    got: list[int] = []
    done = anyio.Event()

    async def receiver(layer: Any) -> None:
        while True:
            got.append((await layer.receive("test.work"))["n"])
            if len(got) == total:
                done.set()

    async with anyio.create_task_group() as tg:
        for layer in layers * 3:
            tg.start_soon(receiver, layer)
        for n in range(total):
            await layers[n % 2].send("test.work", {"type": "test.m", "n": n})
        with anyio.fail_after(15):
            await done.wait()
        tg.cancel_scope.cancel()
    assert sorted(got) == list(range(total))
    for layer in layers:
        await assert_nothing_pending(layer, "test.work")


async def test_send_to_another_process_specific_channel(make_redis_layer: Any) -> None:
    owner, sender = make_redis_layer(), make_redis_layer()
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "test.reply", "body": b"ok"})
    assert await recv(owner, channel) == {"type": "test.reply", "body": b"ok"}


async def test_prefixes_isolate(make_redis_layer: Any, raw_redis: aioredis.Redis) -> None:
    alpha, beta = make_redis_layer(prefix="alpha"), make_redis_layer(prefix="beta")
    await alpha.send("test.shared", {"type": "test.from", "prefix": "alpha"})
    await beta.send("test.shared", {"type": "test.from", "prefix": "beta"})
    await alpha.group_add("test.room", "test.alpha.member")
    await beta.group_add("test.room", "test.beta.member")
    await alpha.group_send("test.room", {"type": "test.alpha.group"})

    assert await recv(beta, "test.shared") == {"type": "test.from", "prefix": "beta"}
    assert await recv(alpha, "test.shared") == {"type": "test.from", "prefix": "alpha"}
    assert await recv(alpha, "test.alpha.member") == {"type": "test.alpha.group"}
    await assert_nothing_pending(beta, "test.beta.member")

    await beta.send("test.kept", {"type": "test.kept"})
    await alpha.flush()
    assert await prefix_keys(raw_redis, "alpha") == {}
    assert await recv(beta, "test.kept") == {"type": "test.kept"}
    await beta.group_send("test.room", {"type": "test.beta.group"})
    assert await recv(beta, "test.beta.member") == {"type": "test.beta.group"}


async def test_flush_deletes_every_key_of_the_prefix(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    layer = make_redis_layer()
    await raw_redis.set("unrelated:key", "stays")
    await raw_redis.set("asgiother", "stays")  # shares the prefix string, not the prefix
    specific = await layer.new_channel()
    await layer.send("test.flush", {"type": "test.m"})
    await layer.send(specific, {"type": "test.m"})
    await layer.group_add("test.room", "test.flush")
    await layer.group_add("test.room", specific)
    assert await prefix_keys(raw_redis, "asgi") != {}

    await layer.flush()

    assert await prefix_keys(raw_redis, "asgi") == {}
    assert await raw_redis.get("unrelated:key") == b"stays"
    assert await raw_redis.get("asgiother") == b"stays"
    await layer.send("test.flush", {"type": "test.after"})
    assert await recv(layer, "test.flush") == {"type": "test.after"}


async def test_no_key_lives_forever(make_redis_layer: Any, raw_redis: aioredis.Redis) -> None:
    # An abandoned process must not leave keys behind for good.
    layer = make_redis_layer(prefix="ttl")
    specific = await layer.new_channel()
    await layer.send("test.ttl", {"type": "test.m"})
    await layer.send(specific, {"type": "test.m"})
    await layer.group_add("test.room", "test.ttl")
    await layer.group_send("test.room", {"type": "test.m"})
    keys = await prefix_keys(raw_redis, "ttl")
    assert keys
    for key in keys:
        assert await raw_redis.ttl(key) > 0, f"{key} has no TTL"


async def test_malformed_entries_are_skipped_and_counted(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    layer = make_redis_layer()
    stream = channel_stream_key("asgi", "test.garbage")
    good = wire.channel_message_fields(["test.garbage"], wire.encode_message({"type": "x"}))
    await raw_redis.xadd(stream, {b"v": b"1", b"k": b"msg", b"to": good[b"to"], b"d": b"\xc1"})
    await raw_redis.xadd(stream, {b"unrelated": b"field"})
    future_version: dict[Any, Any] = {**good, b"v": b"99"}
    await raw_redis.xadd(stream, future_version)
    await layer.send("test.garbage", {"type": "test.valid"})
    assert await recv(layer, "test.garbage") == {"type": "test.valid"}
    assert layer.statistics().malformed == 3
    await assert_nothing_pending(layer, "test.garbage")


async def test_close_releases_connections(make_redis_layer: Any, raw_redis: aioredis.Redis) -> None:
    async def clients() -> int:
        return len(await raw_redis.client_list(_type="normal"))

    baseline = await clients()
    layer = make_redis_layer()
    specific = await layer.new_channel()
    await layer.send(specific, {"type": "test.m"})
    await layer.send("test.close", {"type": "test.m"})
    await recv(layer, specific)
    await recv(layer, "test.close")
    assert await clients() > baseline
    await layer.close()
    # The server notices closed sockets asynchronously and offers no event to
    # wait on, so this is the one bounded poll of the server's view.
    with anyio.fail_after(3):
        while await clients() > baseline:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    await layer.close()


# ---------------------------------------------------------------------------
# Redis restarts


async def _send_retrying(layer: Any, channel: str, message: dict[str, Any]) -> None:
    """Send, retrying broker outages for a few seconds (the server just restarted)."""
    with anyio.fail_after(8):
        while True:
            try:
                await layer.send(channel, message)
            except OUTAGE_ERRORS:
                await anyio.sleep(0.1)
            else:
                return


async def _crash_and_restart(server: RedisServer) -> None:
    await anyio.to_thread.run_sync(server.kill)
    await anyio.to_thread.run_sync(server.start)


@pytest.mark.parametrize("kind", ["normal", "specific"])
async def test_blocked_receive_survives_redis_restart(
    private_redis: RedisServer, make_redis_layer: Any, kind: str
) -> None:
    layer = make_redis_layer(hosts=[private_redis.url])
    channel = "test.restart" if kind == "normal" else await layer.new_channel()
    got: list[dict[str, Any]] = []
    received = anyio.Event()

    async def receiver() -> None:
        with anyio.fail_after(30):
            got.append(await layer.receive(channel))
        received.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()
        await _crash_and_restart(private_redis)
        await _send_retrying(layer, channel, {"type": "test.after.restart"})
        with anyio.fail_after(10):  # the blocked receive must notice and re-arm
            await received.wait()
    assert got == [{"type": "test.after.restart"}]


async def test_layer_works_after_redis_restart(
    private_redis: RedisServer, make_redis_layer: Any
) -> None:
    layer = make_redis_layer(hosts=[private_redis.url])
    specific = await layer.new_channel()
    await layer.send("test.before", {"type": "test.m"})
    await layer.send(specific, {"type": "test.m"})
    assert await recv(layer, "test.before") == {"type": "test.m"}
    assert await recv(layer, specific) == {"type": "test.m"}

    await _crash_and_restart(private_redis)

    await _send_retrying(layer, "test.after", {"type": "test.after"})
    assert await recv(layer, "test.after") == {"type": "test.after"}
    await layer.send(specific, {"type": "test.after"})
    assert await recv(layer, specific) == {"type": "test.after"}
    await layer.group_add("test.room", specific)
    await layer.group_add("test.room", "test.after")
    await layer.group_send("test.room", {"type": "test.group.after"})
    assert await recv(layer, specific) == {"type": "test.group.after"}
    assert await recv(layer, "test.after") == {"type": "test.group.after"}


async def test_send_while_redis_is_down_raises_broker_unavailable(
    private_redis: RedisServer, make_redis_layer: Any
) -> None:
    layer = make_redis_layer(hosts=[private_redis.url])
    await layer.send("test.up", {"type": "test.m"})
    await anyio.to_thread.run_sync(private_redis.kill)
    with anyio.fail_after(10), pytest.raises(BrokerUnavailable):
        await layer.send("test.up", {"type": "test.m"})
    with anyio.fail_after(10), pytest.raises(BrokerUnavailable):
        await layer.group_send("test.room", {"type": "test.m"})


# ---------------------------------------------------------------------------
# Following a process-specific stream (read, then delete in the background)


async def test_received_entries_leave_the_process_stream(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    layer = make_redis_layer(prefix="tail", receive_batch=10)
    channel = await layer.new_channel()
    stream = specific_stream_key("tail", channel)
    for n in range(95):  # several reads' batches
        await layer.send(channel, {"type": "test.m", "n": n})
    assert [(await recv(layer, channel))["n"] for _ in range(95)] == list(range(95))
    # The last delete is off the message's path: wait for it to land.
    with anyio.fail_after(3):
        while await raw_redis.xlen(stream):  # noqa: ASYNC110 (Redis offers no event)
            await anyio.sleep(0.01)
    await assert_nothing_pending(layer, channel)


async def test_a_process_stream_deleted_and_recreated_is_still_followed(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    # A flush, an expired key or a restarted broker recreates the stream with
    # ids that may be lower than the last one read: the reader must not skip them.
    layer, sender = make_redis_layer(prefix="tail"), make_redis_layer(prefix="tail")
    channel = await layer.new_channel()
    stream = specific_stream_key("tail", channel)
    await sender.send(channel, {"type": "test.first"})
    ((first_id, _),) = await raw_redis.xrange(stream)
    assert await recv(layer, channel) == {"type": "test.first"}
    with anyio.fail_after(3):  # its delete has landed (Redis offers no event)
        while await raw_redis.xlen(stream):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    await raw_redis.delete(stream)  # as a flush or an expiry would
    await raw_redis.xadd(
        stream,
        wire.channel_message_fields((channel,), wire.encode_message({"type": "test.low"})),
        id=first_id,  # as a new stream gets within the same millisecond
    )
    # At once, or (if the reader's delete was still on its way back) when its
    # blocking read next re-arms from the stream's start.
    assert await recv(layer, channel, within=BLOCK_SECONDS + 3) == {"type": "test.low"}
    await sender.send(channel, {"type": "test.after"})
    assert await recv(layer, channel) == {"type": "test.after"}


async def test_cancelled_receives_do_not_cost_reconnects(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    # The runtime cancels a connection's receive whenever the connection ends;
    # a cancelled blocking read would make redis-py drop its connection.
    layer = make_redis_layer()
    channels = [await layer.new_channel() for _ in range(50)]
    await layer.send(channels[0], {"type": "test.warm"})
    await recv(layer, channels[0])
    before = int((await raw_redis.info("stats"))["total_connections_received"])
    for channel in channels:
        with anyio.move_on_after(0.01):
            await layer.receive(channel)  # blocks on the shared read, then is cancelled
    await layer.send(channels[-1], {"type": "test.last"})
    assert await recv(layer, channels[-1]) == {"type": "test.last"}
    after = int((await raw_redis.info("stats"))["total_connections_received"])
    assert after - before <= 1


# ---------------------------------------------------------------------------
# Bundled sends (the runtime's relay layer)


async def test_sends_of_one_loop_turn_to_one_process_are_bundled(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    receiver = make_redis_layer(prefix="bnd")
    sender = make_redis_layer(prefix="bnd", bundle_sends=True)
    channels = [await receiver.new_channel() for _ in range(200)]
    stream = specific_stream_key("bnd", channels[0])
    await sender.send(channels[0], {"type": "test.warm"})  # the direct path: one entry
    async with anyio.create_task_group() as tg:
        for n in range(3):
            for channel in channels:
                tg.start_soon(sender.send, channel, {"type": "test.m", "n": n})
    # 600 messages, 1 + far fewer entries (bundles), in order per channel.
    assert await raw_redis.xlen(stream) < 50
    assert await recv(receiver, channels[0]) == {"type": "test.warm"}
    for channel in channels:
        assert [(await recv(receiver, channel))["n"] for _ in range(3)] == [0, 1, 2]
    assert sender.statistics().sent == 601
    await assert_nothing_pending(receiver, channels[-1])


async def test_a_bundle_stays_under_the_relay_readers_limit(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    receiver = make_redis_layer(prefix="bnd", max_message_size=320 * 1024)
    sender = make_redis_layer(prefix="bnd", bundle_sends=True, max_message_size=1024 * 1024)
    channels = [await receiver.new_channel() for _ in range(12)]
    body = "x" * (100 * 1024)
    async with anyio.create_task_group() as tg:
        for channel in channels:
            tg.start_soon(sender.send, channel, {"type": "test.big", "body": body})
    for channel in channels:
        assert (await recv(receiver, channel))["body"] == body
    assert receiver.statistics().malformed == 0


@pytest.mark.parametrize("multiplex", [False, True], ids=["pooled", "multiplexed"])
async def test_an_emptied_script_cache_is_refilled(
    make_redis_layer: Any, raw_redis: aioredis.Redis, multiplex: bool
) -> None:
    # A restarted Redis has no scripts: the first EVALSHA gets NOSCRIPT and the
    # layer loads the script and retries, on either kind of connection.
    layer = make_redis_layer(multiplex=multiplex)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.m", "n": 1})
    await raw_redis.script_flush()
    await layer.send(channel, {"type": "test.m", "n": 2})
    with anyio.fail_after(5):
        assert await layer.receive(channel) == {"type": "test.m", "n": 1}
        assert await layer.receive(channel) == {"type": "test.m", "n": 2}
