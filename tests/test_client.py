"""The publishing clients: AsyncPublisher, and Publisher from every kind of caller.

Why: external services publish from places channels_redis users know to be
treacherous: Django views and Celery tasks without a loop, thread pools,
code that creates and closes its own event loops, code inside a running
loop. The Publisher promises that none of them can meet "Event loop is
closed" or "attached to a different loop"; these tests call it from each of
them against a real Redis and check that every message arrived. Warnings are
errors in this suite, so a stray "coroutine was never awaited" or an
exception in a thread fails the test too.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis

from channels_lite import (
    AsyncPublisher,
    BrokerUnavailable,
    ChannelFull,
    ConfigError,
    InvalidChannelName,
    InvalidMessage,
    Publisher,
    PublisherConfig,
    RedisStreamsChannelLayer,
    keys,
    wire,
)

THREAD_NAME = "channels-lite-publisher"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def publisher(redis_url: str) -> Iterator[Publisher]:
    with Publisher.from_url(redis_url, capacity=10_000) as pub:
        yield pub
    assert not pub_threads()


def pub_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def messages_on(raw: redis.Redis, channel: str) -> list[dict[str, Any]]:
    """The messages waiting on a normal channel's stream, oldest first."""
    entries = raw.xrange(keys.channel_stream("asgi", channel))
    out = []
    for _, fields in entries:
        envelope = wire.decode(fields)
        assert isinstance(envelope, wire.ChannelMessage)
        assert envelope.to == (channel,)
        out.append(envelope.message)
    return out


# --------------------------------------------------------------------------
# AsyncPublisher


@pytest.mark.anyio
async def test_async_send_and_group_send_reach_layer_receivers(redis_url: str) -> None:
    server = RedisStreamsChannelLayer(hosts=[redis_url])
    try:
        a, b = await server.new_channel(), await server.new_channel()
        await server.group_add("room", a)
        await server.group_add("room", b)
        async with AsyncPublisher.from_url(redis_url) as pub:
            await pub.send(a, {"type": "direct", "n": 1})
            await pub.group_send("room", {"type": "chat.message", "data": b"\x00\xff"})
            await pub.send("plain", {"type": "plain", "text": "é"})
            # Both members live on one process stream: one entry, not two.
            stream = keys.channel_stream("asgi", a[: a.index("!") + 1])
            assert await pub.layer._client_for(stream).xlen(stream) == 2
        with anyio.fail_after(5):
            assert await server.receive(a) == {"type": "direct", "n": 1}
            assert await server.receive(a) == {"type": "chat.message", "data": b"\x00\xff"}
            assert await server.receive(b) == {"type": "chat.message", "data": b"\x00\xff"}
            assert await server.receive("plain") == {"type": "plain", "text": "é"}
    finally:
        await server.close()


@pytest.mark.anyio
async def test_async_capacity_is_the_layers(redis_url: str) -> None:
    async with AsyncPublisher.from_url(redis_url, capacity=2) as pub:
        await pub.send("narrow", {"type": "m"})
        await pub.send("narrow", {"type": "m"})
        with pytest.raises(ChannelFull):
            await pub.send("narrow", {"type": "m"})
        assert pub.statistics().full == 1
        # A group member at capacity is skipped and counted, not an error.
        server = RedisStreamsChannelLayer(hosts=[redis_url])
        try:
            await server.group_add("g", "narrow")
            await pub.group_send("g", {"type": "m"})
        finally:
            await server.close()
        assert pub.statistics().dropped == 1


@pytest.mark.anyio
async def test_async_enqueue_writes_a_task_entry(redis_url: str, raw: redis.Redis) -> None:
    message = {"type": "email.send", "to": "a@example.com", "blob": b"\x01\x02"}
    async with AsyncPublisher.from_url(redis_url) as pub:
        entry_id = await pub.enqueue("emails", message)
        second = await pub.enqueue("emails", {"type": "email.send"})
    stream = keys.task_stream("asgi", "emails")
    entries = raw.xrange(stream)
    assert [eid.decode() for eid, _ in entries] == [entry_id, second]
    assert wire.decode(entries[0][1]) == wire.Task("emails", message)
    # The workers' group exists from id 0, so these wait for the first worker.
    (group,) = raw.xinfo_groups(stream)
    assert group["name"] == keys.TASKS_GROUP.encode()
    assert group["last-delivered-id"] == b"0-0"


@pytest.mark.anyio
async def test_async_enqueue_validates_and_bounds(redis_url: str, raw: redis.Redis) -> None:
    async with AsyncPublisher.from_url(redis_url, task_maxlen=10, max_message_size=1000) as pub:
        with pytest.raises(InvalidChannelName):
            await pub.enqueue("not!a-task-channel", {"type": "t"})
        with pytest.raises(InvalidMessage):
            await pub.enqueue("jobs", {"no": "type"})
        with pytest.raises(wire.WireError):
            await pub.enqueue("jobs", {"type": "t", "big": b"x" * 2000})
        for i in range(300):
            await pub.enqueue("jobs", {"type": "t", "i": i})
    # MAXLEN ~: trimmed in whole stream nodes, so roughly, never unbounded.
    assert raw.xlen(keys.task_stream("asgi", "jobs")) < 300


def test_async_publisher_survives_event_loops_closing(redis_url: str, raw: redis.Redis) -> None:
    pub = AsyncPublisher.from_url(redis_url)

    async def send(n: int) -> None:
        await pub.send("loops", {"type": "n", "n": n})

    for n in range(3):
        asyncio.run(send(n))  # a new loop each time, closed straight after
    assert [m["n"] for m in messages_on(raw, "loops")] == [0, 1, 2]


def test_config_from_env_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://generic:1/0")
    monkeypatch.setenv("CHANNELS_LITE_PREFIX", "svc")
    monkeypatch.setenv("CHANNELS_LITE_TASK_MAXLEN", "50")
    config = Publisher.from_url().config
    assert (config.redis_url, config.prefix, config.task_maxlen) == (
        "redis://generic:1/0",
        "svc",
        50,
    )
    monkeypatch.setenv("CHANNELS_LITE_REDIS_URL", "redis://specific:2/0")
    assert PublisherConfig.from_env().redis_url == "redis://specific:2/0"
    config = AsyncPublisher.from_url("redis://explicit:3/0", prefix="p").config
    assert (config.redis_url, config.prefix) == ("redis://explicit:3/0", "p")
    monkeypatch.setenv("CHANNELS_LITE_CAPACITY", "many")
    with pytest.raises(ConfigError, match="CHANNELS_LITE_CAPACITY"):
        PublisherConfig.from_env()
    with pytest.raises(ConfigError):
        PublisherConfig(prefix="a b")
    with pytest.raises(ConfigError):
        Publisher.from_url("redis://x", no_such_option=1)


# --------------------------------------------------------------------------
# Publisher: every kind of caller


def test_sync_from_main_thread_without_loop(publisher: Publisher, redis_url: str) -> None:
    async def setup_and_receive() -> list[dict[str, Any]]:
        layer = RedisStreamsChannelLayer(hosts=[redis_url])
        try:
            channel = await layer.new_channel()
            await layer.group_add("room", channel)
            # The publisher runs on its own thread: call it from one here.
            await anyio.to_thread.run_sync(publisher.group_send, "room", {"type": "hello"})
            await anyio.to_thread.run_sync(publisher.send, channel, {"type": "direct"})
            with anyio.fail_after(5):
                return [await layer.receive(channel), await layer.receive(channel)]
        finally:
            await layer.close()

    publisher.send("plain", {"type": "a"})
    task_id = publisher.enqueue("jobs", {"type": "job"})
    assert isinstance(task_id, str)
    assert len(pub_threads()) == 1
    assert asyncio.run(setup_and_receive()) == [{"type": "hello"}, {"type": "direct"}]
    assert publisher.statistics().sent == 3


def test_sync_from_many_threads(publisher: Publisher, raw: redis.Redis) -> None:
    threads, per_thread = 20, 25
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(t: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                publisher.send(f"thread-{t}", {"type": "n", "t": t, "n": n})
                publisher.group_send("nobody", {"type": "n"})  # a group with no members
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)
    assert errors == []
    for t in range(threads):
        # Each thread's calls block until done, so its messages keep their order.
        assert [m["n"] for m in messages_on(raw, f"thread-{t}")] == list(range(per_thread))
    assert len(pub_threads()) == 1  # one private loop thread, however many callers


@pytest.mark.anyio
async def test_sync_from_inside_a_running_loop(publisher: Publisher, redis_url: str) -> None:
    caller_loop = asyncio.get_running_loop()
    layer = RedisStreamsChannelLayer(hosts=[redis_url])
    try:
        channel = await layer.new_channel()
        publisher.send(channel, {"type": "direct"})  # blocks this loop, but works
        await caller_loop.run_in_executor(None, publisher.send, channel, {"type": "executor"})
        with anyio.fail_after(5):
            assert await layer.receive(channel) == {"type": "direct"}
            assert await layer.receive(channel) == {"type": "executor"}
    finally:
        await layer.close()
    # The caller's loop never saw the publisher's connections.
    runner = publisher._runner
    assert runner is not None
    assert set(runner.publisher.layer._loops) == {runner.loop}
    assert asyncio.get_running_loop() is caller_loop


def test_sync_around_closed_event_loops(publisher: Publisher, raw: redis.Redis) -> None:
    async def inside(n: int) -> None:
        publisher.send("loops", {"type": "n", "n": n})  # inside a loop about to close
        await asyncio.sleep(0)

    publisher.send("loops", {"type": "n", "n": 0})
    asyncio.run(inside(1))
    publisher.send("loops", {"type": "n", "n": 2})
    asyncio.run(inside(3))
    loop = asyncio.new_event_loop()
    loop.close()
    publisher.send("loops", {"type": "n", "n": 4})
    assert [m["n"] for m in messages_on(raw, "loops")] == [0, 1, 2, 3, 4]


def test_sync_celery_like_thread_pool(publisher: Publisher, raw: redis.Redis) -> None:
    def task(i: int) -> str:
        # What a Celery task (or a Django view) body looks like: a plain call.
        publisher.send("progress", {"type": "progress", "i": i})
        return publisher.enqueue("followups", {"type": "followup", "i": i})

    for _ in range(2):  # the same pool shape twice, as consecutive task batches
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(task, range(50)))
        assert len(set(ids)) == 50
    entries = raw.xrange(keys.task_stream("asgi", "followups"))
    tasks = [wire.decode(fields) for _, fields in entries]
    assert sorted(t.message["i"] for t in tasks if isinstance(t, wire.Task)) == sorted(
        list(range(50)) * 2
    )
    assert len(messages_on(raw, "progress")) == 100


def test_sync_errors_propagate_unchanged(redis_url: str) -> None:
    with Publisher.from_url(redis_url, capacity=1) as pub:
        pub.send("one", {"type": "m"})
        with pytest.raises(ChannelFull):
            pub.send("one", {"type": "m"})
        with pytest.raises(InvalidMessage):
            pub.send("one", {"no": "type"})
        with pytest.raises(InvalidChannelName):
            pub.group_send("bad name", {"type": "m"})
        pub.send("two", {"type": "m"})  # still usable after errors


def test_sync_close_stops_the_thread(redis_url: str) -> None:
    pub = Publisher.from_url(redis_url)
    assert not pub_threads()  # started lazily
    pub.send("c", {"type": "m"})
    assert len(pub_threads()) == 1
    pub.close()
    pub.close()  # idempotent
    assert not pub_threads()
    with pytest.raises(RuntimeError, match="closed"):
        pub.send("c", {"type": "m"})
    Publisher.from_url(redis_url).close()  # never used: nothing to stop


def test_sync_collected_publisher_stops_its_thread(redis_url: str) -> None:
    pub = Publisher.from_url(redis_url)
    pub.send("c", {"type": "m"})
    del pub
    deadline = time.monotonic() + 5
    while pub_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pub_threads()


def test_sync_unreachable_redis_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    with Publisher.from_url(f"redis://127.0.0.1:{port}/0", timeout=10) as pub:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            pub.send("c", {"type": "m"})
        assert time.monotonic() - started < 5


def test_sync_silent_redis_times_out() -> None:
    # Accepts connections (the kernel's backlog) but never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        with Publisher.from_url(url, timeout=0.5) as pub:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="no answer"):
                pub.enqueue("jobs", {"type": "t"})
            assert time.monotonic() - started < 3
    assert not pub_threads()


def test_sync_after_fork(redis_url: str, raw: redis.Redis) -> None:
    # In a subprocess: forking the pytest process itself would copy its threads.
    script = textwrap.dedent(
        f"""
        import os
        from channels_lite import Publisher
        pub = Publisher.from_url({redis_url!r})
        pub.send("fork", {{"type": "n", "who": "parent"}})
        pid = os.fork()
        if pid == 0:
            pub.send("fork", {{"type": "n", "who": "child"}})
            pub.close()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        pub.send("fork", {{"type": "n", "who": "parent-after"}})
        pub.close()
        raise SystemExit(os.waitstatus_to_exitcode(status))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert [m["who"] for m in messages_on(raw, "fork")] == ["parent", "child", "parent-after"]
