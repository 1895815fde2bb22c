"""Background tasks: the worker's task runner, in process, against a real Redis.

Each test runs ``worker.tasks.TaskRunner`` in the test's own event loop
(``await tg.start(runner.serve)``) with a registry of its own, enqueues
``wire.Task`` entries with a raw Redis client (as any publisher would), and
stops the runner before looking at Redis: ``stop()`` drains, so every entry a
handler finished with is settled by then. Handlers tell the test what they
do through in-process events, not timeouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import django
import msgpack
import pytest
import redis.asyncio as aioredis
from channels.consumer import AsyncConsumer, SyncConsumer
from django.conf import settings
from django.test import override_settings

from channels_lite import keys, wire
from channels_lite.exceptions import ConfigError
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.tasks import TaskContext, TaskRegistry
from worker.config import Config
from worker.tasks import TaskRunner

pytestmark = pytest.mark.anyio

PREFIX = "tt"
FAST = {"task_retry_backoff": 0.05, "reclaim_idle": 0.3, "shutdown_timeout": 5.0}


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def run_tasks(redis_url: str) -> Callable[..., Any]:
    """``async with run_tasks(registry, **config) as runner``: serve, then stop and drain."""

    @asynccontextmanager
    async def run(
        registry: TaskRegistry, worker_id: str = "w1", **options: Any
    ) -> AsyncIterator[TaskRunner]:
        options.setdefault("redis_url", redis_url)
        config = Config(app="unused:app", prefix=PREFIX, **options)
        layer = RedisStreamsChannelLayer(hosts=[config.redis_url], prefix=PREFIX)
        app_layer = RedisStreamsChannelLayer(hosts=[config.redis_url], prefix=PREFIX)
        # A short block: stop() is noticed within 0.1 s instead of 1 s.
        runner = TaskRunner(config, registry, layer, app_layer, worker_id=worker_id, block=0.1)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(runner.serve, {"answer": 42})
                try:
                    yield runner
                finally:
                    runner.stop()
        finally:
            await layer.close()
            await app_layer.close()

    return run


async def enqueue(raw: aioredis.Redis, channel: str, message: dict[str, Any]) -> bytes:
    fields: Any = wire.encode(wire.Task(channel, message))
    entry_id: bytes = await raw.xadd(keys.task_stream(PREFIX, channel), fields)
    return entry_id


async def assert_settled(raw: aioredis.Redis, channel: str) -> None:
    """Acked and deleted: nothing left in the stream, nothing pending, nothing delayed."""
    stream = keys.task_stream(PREFIX, channel)
    assert await raw.xlen(stream) == 0
    assert (await raw.xpending(stream, keys.TASKS_GROUP))["pending"] == 0
    assert await raw.zcard(keys.task_delayed(PREFIX)) == 0


async def dead_letters(raw: aioredis.Redis) -> list[wire.DeadLetter]:
    entries = await raw.xrange(keys.dead_letters(PREFIX))
    letters = [wire.decode(fields, max_size=1 << 30) for _, fields in entries]
    assert all(isinstance(letter, wire.DeadLetter) for letter in letters)
    return letters  # type: ignore[return-value]


# ----------------------------------------------------------------------
# Running, retrying, giving up


async def test_a_task_runs_once_and_is_acked(raw: aioredis.Redis, run_tasks: Any) -> None:
    registry = TaskRegistry()
    seen: list[tuple[dict[str, Any], TaskContext]] = []
    done = anyio.Event()

    @registry.task("thumbnails")
    async def make(message: dict[str, Any], ctx: TaskContext) -> None:
        seen.append((message, ctx))
        done.set()

    async with run_tasks(registry) as runner:
        entry_id = await enqueue(raw, "thumbnails", {"type": "thumb.make", "n": b"\x00\xff"})
        with anyio.fail_after(5):
            await done.wait()
    [(message, ctx)] = seen
    assert message == {"type": "thumb.make", "n": b"\x00\xff"}
    assert (ctx.channel, ctx.entry_id, ctx.attempts) == ("thumbnails", entry_id.decode(), 0)
    assert ctx.state == {"answer": 42}
    assert isinstance(ctx.channel_layer, RedisStreamsChannelLayer)
    await assert_settled(raw, "thumbnails")
    assert runner.statistics()["processed"] == 1


async def test_a_failing_task_is_retried_with_growing_backoff(
    raw: aioredis.Redis, run_tasks: Any
) -> None:
    registry = TaskRegistry()
    runs: list[tuple[float, int]] = []
    done = anyio.Event()

    @registry.task("flaky")
    async def flaky(message: dict[str, Any], ctx: TaskContext) -> None:
        runs.append((time.monotonic(), ctx.attempts))
        if len(runs) < 3:
            raise ConnectionError("try again")
        done.set()

    async with run_tasks(registry, task_retry_backoff=0.2) as runner:
        await enqueue(raw, "flaky", {"type": "go"})
        with anyio.fail_after(5):
            await done.wait()
    assert [attempts for _, attempts in runs] == [0, 1, 2]
    first_gap, second_gap = runs[1][0] - runs[0][0], runs[2][0] - runs[1][0]
    assert first_gap >= 0.19
    assert second_gap >= 0.39
    assert second_gap > first_gap * 1.5  # 0.2 s, then 0.4 s
    stats = runner.statistics()
    assert (stats["failed"], stats["retried"], stats["processed"]) == (2, 2, 1)
    await assert_settled(raw, "flaky")
    assert await dead_letters(raw) == []


async def test_a_task_that_always_fails_ends_in_the_dead_letters(
    raw: aioredis.Redis, run_tasks: Any
) -> None:
    registry = TaskRegistry()
    runs: list[int] = []
    last = anyio.Event()

    @registry.task("doomed")
    async def doomed(message: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.attempts)
        if len(runs) == 3:
            last.set()
        raise ValueError(f"cannot do {message['what']}")

    async with run_tasks(registry, task_max_attempts=3, **FAST) as runner:
        first_id = await enqueue(raw, "doomed", {"type": "go", "what": "this"})
        with anyio.fail_after(5):
            await last.wait()
    assert runs == [0, 1, 2]
    [letter] = await dead_letters(raw)
    assert letter.stream == keys.task_stream(PREFIX, "doomed")
    assert letter.entry_id != first_id.decode()  # the last retry's entry
    assert letter.error.startswith("ValueError: cannot do this\nTraceback")
    assert "in doomed" in letter.error  # the handler's frame
    assert wire.decode(letter.fields) == wire.Task("doomed", {"type": "go", "what": "this"}, 2)
    stats = runner.statistics()
    assert (stats["failed"], stats["retried"], stats["dead_lettered"]) == (3, 2, 1)
    await assert_settled(raw, "doomed")


async def test_a_retry_waits_in_redis_and_survives_its_worker(
    raw: aioredis.Redis, run_tasks: Any
) -> None:
    registry = TaskRegistry()
    runs: list[str] = []
    failed, succeeded = anyio.Event(), anyio.Event()

    @registry.task("jobs")
    async def job(message: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.worker_id)
        if ctx.attempts == 0:
            failed.set()
            raise RuntimeError("first run fails")
        succeeded.set()

    async with run_tasks(registry, worker_id="first", task_retry_backoff=0.5):
        await enqueue(raw, "jobs", {"type": "go"})
        with anyio.fail_after(5):
            await failed.wait()
    # The first worker is gone before the retry is due (stop() takes at most a
    # tenth of a second here: the bounded XREADGROUP BLOCK); the retry waits in Redis.
    assert await raw.zcard(keys.task_delayed(PREFIX)) == 1
    async with run_tasks(registry, worker_id="second", task_retry_backoff=0.5):
        with anyio.fail_after(5):
            await succeeded.wait()
    assert runs == ["first", "second"]
    await assert_settled(raw, "jobs")


# ----------------------------------------------------------------------
# Workers that die, tasks that run long, shutdown


async def test_an_entry_whose_worker_died_is_reclaimed(raw: aioredis.Redis, run_tasks: Any) -> None:
    registry = TaskRegistry()
    ran = anyio.Event()
    attempts: list[int] = []

    @registry.task("jobs")
    async def job(message: dict[str, Any], ctx: TaskContext) -> None:
        attempts.append(ctx.attempts)
        ran.set()

    stream = keys.task_stream(PREFIX, "jobs")
    await raw.xgroup_create(stream, keys.TASKS_GROUP, id="0", mkstream=True)
    await enqueue(raw, "jobs", {"type": "go"})
    # A worker that took it and died: pending on a consumer that never acks.
    await raw.xreadgroup(keys.TASKS_GROUP, "ghost", {stream: ">"}, count=1)
    async with run_tasks(registry, **FAST) as runner:
        with anyio.fail_after(5):
            await ran.wait()
    assert attempts == [1]  # the ghost's delivery counts as a run
    assert runner.statistics()["reclaimed"] == 1
    await assert_settled(raw, "jobs")


async def test_a_poison_entry_is_dead_lettered_without_running(
    raw: aioredis.Redis, run_tasks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = TaskRegistry()
    runs: list[int] = []

    @registry.task("jobs")
    async def job(message: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.attempts)

    stream = keys.task_stream(PREFIX, "jobs")
    await raw.xgroup_create(stream, keys.TASKS_GROUP, id="0", mkstream=True)
    entry_id = await enqueue(raw, "jobs", {"type": "go"})
    # Taken and lost by three workers in turn (each claim counts a delivery).
    await raw.xreadgroup(keys.TASKS_GROUP, "ghost1", {stream: ">"}, count=1)
    for ghost in ("ghost2", "ghost3"):
        await raw.xclaim(stream, keys.TASKS_GROUP, ghost, 0, [entry_id])
    async with run_tasks(registry, task_max_attempts=3, **FAST) as runner:
        with anyio.fail_after(5):
            while not runner.statistics()["dead_lettered"]:  # noqa: ASYNC110 (no event)
                await anyio.sleep(0.02)
    assert runs == []
    [letter] = await dead_letters(raw)
    assert letter.entry_id == entry_id.decode()
    assert letter.error.startswith("Abandoned: 3 runs without success, 3 of them ended")
    await assert_settled(raw, "jobs")
    assert "abandoned after 3 runs" in caplog.text


async def test_a_long_task_is_not_reclaimed_while_its_worker_lives(
    raw: aioredis.Redis, run_tasks: Any
) -> None:
    registry = TaskRegistry()
    runs: list[str] = []
    done = anyio.Event()

    @registry.task("slow")
    async def slow(message: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.worker_id)
        await anyio.sleep(1.2)  # four times reclaim_idle
        done.set()

    async with run_tasks(registry, worker_id="a", **FAST), run_tasks(registry, "b", **FAST):
        await enqueue(raw, "slow", {"type": "go"})
        with anyio.fail_after(5):
            await done.wait()
    assert len(runs) == 1
    await assert_settled(raw, "slow")


async def test_shutdown_waits_for_tasks_and_leaves_cancelled_ones_pending(
    raw: aioredis.Redis, run_tasks: Any
) -> None:
    registry = TaskRegistry()
    started = {"quick": anyio.Event(), "stuck": anyio.Event()}
    finished: list[str] = []

    @registry.task("quick")
    async def quick(message: dict[str, Any], ctx: TaskContext) -> None:
        started["quick"].set()
        await anyio.sleep(0.3)  # still running when stop() comes
        finished.append("quick")

    @registry.task("stuck")
    async def stuck(message: dict[str, Any], ctx: TaskContext) -> None:
        started["stuck"].set()
        await anyio.sleep_forever()

    async with run_tasks(registry, shutdown_timeout=1.0, reclaim_idle=0.3):
        await enqueue(raw, "quick", {"type": "go"})
        await enqueue(raw, "stuck", {"type": "go"})
        with anyio.fail_after(5):
            await started["quick"].wait()
            await started["stuck"].wait()
    assert finished == ["quick"]
    await assert_settled(raw, "quick")
    # Cancelled at the timeout: not acked, so another worker will run it.
    stuck_stream = keys.task_stream(PREFIX, "stuck")
    [pending] = await raw.xpending_range(stuck_stream, keys.TASKS_GROUP, "-", "+", 10)
    # Touched every 0.1 s while it ran, without counting as redeliveries.
    assert pending["times_delivered"] == 1


async def test_task_concurrency_bounds_the_tasks_running_at_once(
    raw: aioredis.Redis, run_tasks: Any
) -> None:
    registry = TaskRegistry()
    running: list[int] = []
    peak = 0
    finished = 0
    all_done = anyio.Event()
    release = anyio.Event()

    async def hold(message: dict[str, Any], ctx: TaskContext) -> None:
        nonlocal peak, finished
        running.append(1)
        peak = max(peak, len(running))
        if len(running) == 2:
            release.set()  # both slots are taken: let them go
        await release.wait()
        running.pop()
        finished += 1
        if finished == 6:
            all_done.set()

    registry.task("a")(hold)
    registry.task("b")(hold)
    async with run_tasks(registry, task_concurrency=2):
        for i in range(3):  # both streams have work: one read can bring more than fits
            await enqueue(raw, "a", {"type": "go", "i": i})
            await enqueue(raw, "b", {"type": "go", "i": i})
        with anyio.fail_after(5):
            await all_done.wait()
    assert peak == 2
    await assert_settled(raw, "a")
    await assert_settled(raw, "b")


async def test_the_runner_carries_on_after_a_redis_outage(
    private_redis: Any, run_tasks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = TaskRegistry()
    ran: list[int] = []
    first, second = anyio.Event(), anyio.Event()

    @registry.task("jobs")
    async def job(message: dict[str, Any], ctx: TaskContext) -> None:
        ran.append(message["n"])
        (second if ran[1:] else first).set()

    async with run_tasks(registry, redis_url=private_redis.url):
        async with aioredis.Redis.from_url(private_redis.url) as raw:
            await enqueue(raw, "jobs", {"type": "go", "n": 1})
            with anyio.fail_after(5):
                await first.wait()
        # Down for a while (the runner retries, logging it once), then back
        # empty: the streams and their group are gone.
        await anyio.to_thread.run_sync(private_redis.kill)
        await anyio.sleep(1.5)
        await anyio.to_thread.run_sync(private_redis.start)
        async with aioredis.Redis.from_url(private_redis.url) as raw:
            await enqueue(raw, "jobs", {"type": "go", "n": 2})
            with anyio.fail_after(10):
                await second.wait()
    assert ran == [1, 2]
    assert caplog.text.count("task streams: Redis failed") == 1
    assert "task streams: Redis is back" in caplog.text


# ----------------------------------------------------------------------
# Bad input from outside

BIG = b"x" * (wire.DEFAULT_MAX_SIZE + 1)
TASK_D = wire.encode(wire.Task("jobs", {"type": "go"}))[b"d"]
BAD_ENTRIES = {
    "garbage": ({b"\xff\xfe": b"\x00garbage\xc1"}, "unsupported wire version"),
    "wrong-version": ({b"v": b"2", b"k": b"task", b"d": TASK_D}, "unsupported wire version"),
    "missing-d": ({b"v": b"1", b"k": b"task"}, "no 'd' field"),
    "not-msgpack": ({b"v": b"1", b"k": b"task", b"d": b"\xc1"}, "not a valid msgpack"),
    "no-type": (
        {b"v": b"1", b"k": b"task", b"d": wire.pack({"channel": "jobs", "message": {}})},
        "str 'type'",
    ),
    "oversized": (
        wire.encode(wire.Task("jobs", {"type": "go", "blob": BIG}), max_size=1 << 30),
        "exceeds",
    ),
    "not-a-task": (wire.encode(wire.ChannelMessage(("jobs",), {"type": "go"})), "ChannelMessage"),
    "unknown-task": (wire.encode(wire.Task("elsewhere", {"type": "go"})), "'elsewhere'"),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
async def test_bad_entries_are_dead_lettered_and_the_next_task_runs(
    raw: aioredis.Redis, run_tasks: Any, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    fields, reason = BAD_ENTRIES[case]
    registry = TaskRegistry()
    ran = anyio.Event()

    @registry.task("jobs")
    async def job(message: dict[str, Any], ctx: TaskContext) -> None:
        ran.set()

    stream = keys.task_stream(PREFIX, "jobs")
    caplog.set_level(logging.WARNING, logger="worker.tasks")
    async with run_tasks(registry) as runner:
        bad_id = await raw.xadd(stream, fields)  # type: ignore[arg-type]
        await enqueue(raw, "jobs", {"type": "go"})
        with anyio.fail_after(5):
            await ran.wait()
    [letter] = await dead_letters(raw)
    assert (letter.stream, letter.entry_id) == (stream, bad_id.decode())
    assert letter.fields == fields  # byte for byte, for inspection and replay
    assert reason in letter.error
    stats = runner.statistics()
    assert (stats["malformed"], stats["processed"], stats["failed"]) == (1, 1, 0)
    logged = [r for r in caplog.records if bad_id.decode() in r.getMessage()]
    assert len(logged) == 1
    assert stream in logged[0].getMessage()
    await assert_settled(raw, "jobs")


# ----------------------------------------------------------------------
# Channels consumers as task handlers


@pytest.fixture
def django_settings(redis_url: str) -> Any:
    if not settings.configured:
        settings.configure(INSTALLED_APPS=["channels"], CHANNEL_LAYERS={})
    django.setup()
    layers = {
        "default": {
            "BACKEND": "channels_lite.layer.RedisStreamsChannelLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": PREFIX},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        yield


async def test_channels_consumers_handle_tasks_by_message_type(
    raw: aioredis.Redis, run_tasks: Any, django_settings: Any, redis_url: str
) -> None:
    import threading

    seen: list[tuple[str, Any, bool]] = []
    both = anyio.Event()

    class Thumbnails(AsyncConsumer):  # type: ignore[misc]
        async def thumb_make(self, message: dict[str, Any]) -> None:
            seen.append(("async", self.scope, self.channel_layer is not None))
            await self.channel_layer.group_send("watchers", {"type": "thumb.ready"})
            if len(seen) == 2:
                both.set()

    class Emails(SyncConsumer):  # type: ignore[misc]
        def email_send(self, message: dict[str, Any]) -> None:
            main = threading.current_thread() is threading.main_thread()
            seen.append(("sync", message["to"], main))

    registry = TaskRegistry()
    registry.consumer("thumbnails", Thumbnails)
    registry.consumer("emails", Emails.as_asgi())
    watcher = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    channel = await watcher.new_channel()
    await watcher.group_add("watchers", channel)
    try:
        async with run_tasks(registry) as runner:
            await enqueue(raw, "emails", {"type": "email.send", "to": "ada@example.com"})
            await enqueue(raw, "emails", {"type": "email.unknown"})
            await enqueue(raw, "thumbnails", {"type": "thumb.make"})
            with anyio.fail_after(5):
                assert await watcher.receive(channel) == {"type": "thumb.ready"}
                # A thread's append and a counter: nothing to wait on but them.
                while len(seen) < 2 or runner.statistics()["malformed"] < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
    finally:
        await watcher.close()
    assert sorted(seen, key=str) == [
        ("async", {"type": "channel", "channel": "thumbnails"}, True),
        ("sync", "ada@example.com", False),  # in a thread, as Channels runs it
    ]
    [letter] = await dead_letters(raw)
    assert "Emails has no handler for message type 'email.unknown'" in letter.error
    await assert_settled(raw, "emails")
    await assert_settled(raw, "thumbnails")


# ----------------------------------------------------------------------
# Registry and configuration


def test_registry_refuses_what_it_cannot_run() -> None:
    registry = TaskRegistry()

    @registry.task("jobs")
    async def job(message: dict[str, Any], ctx: TaskContext) -> None: ...

    with pytest.raises(ValueError, match="already has a handler"):
        registry.task("jobs")(job)
    with pytest.raises(ValueError, match="must be 1-99"):
        registry.task("no spaces")(job)
    with pytest.raises(TypeError, match="async function"):
        registry.task("sync")(lambda message, ctx: None)  # type: ignore[arg-type]
    assert registry.channels == ("jobs",)


def test_worker_config_loads_the_registry(tmp_path: Any) -> None:
    (tmp_path / "mytasks.py").write_text(
        "from channels_lite.tasks import TaskRegistry\ntasks = TaskRegistry()\nother = 1\n"
    )
    config = Config(app="x:app", tasks="mytasks:tasks", app_dir=str(tmp_path))
    assert isinstance(config.load_tasks(), TaskRegistry)
    assert Config(app="x:app").load_tasks() is None
    with pytest.raises(ConfigError, match=r"not a channels_lite\.tasks\.TaskRegistry"):
        Config(app="x:app", tasks="mytasks:other", app_dir=str(tmp_path)).load_tasks()
    with pytest.raises(ConfigError, match="module:attribute"):
        Config(app="x:app", tasks="mytasks")


async def test_garbage_in_the_delayed_set_does_not_stall_retries(
    raw: aioredis.Redis, run_tasks: Any
) -> None:
    # Whatever someone writes into the retry set, due retries keep moving.
    delayed = keys.task_delayed(PREFIX)
    other = f"{PREFIX}-other:secret"
    await raw.zadd(
        delayed,
        {
            b"\xc1 not msgpack": 0,
            b"\x93\xa1a\xa1b\xa1c": 0,  # an odd-length array
            msgpack.packb([other, "1-0", "k", "x"]): 0,  # a key outside the task streams
            msgpack.packb([keys.task_stream(PREFIX, "t"), "1-0", "k", [1]]): 0,  # XADD refuses
        },
    )
    registry = TaskRegistry()
    runs: list[int] = []
    done = anyio.Event()

    @registry.task("t")
    async def flaky(message: dict[str, Any], ctx: TaskContext) -> None:
        runs.append(ctx.attempts)
        if len(runs) < 2:
            raise ConnectionError("try again")
        done.set()

    async with run_tasks(registry, task_retry_backoff=0.05) as runner:
        await enqueue(raw, "t", {"type": "go"})
        with anyio.fail_after(5):
            await done.wait()
    assert runs == [0, 1]
    assert runner.statistics()["malformed_retries"] == 4  # in `channels-lite status`
    assert not await raw.exists(other)
    await assert_settled(raw, "t")
