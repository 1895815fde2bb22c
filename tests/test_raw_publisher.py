"""docs/wire-protocol.md is enough to publish from outside: a raw redis + msgpack publisher.

Why: the issue asks for proof that a process knowing only the document can
reach channels-lite. ``tests/raw_publisher.py`` is that process: it imports
redis and msgpack only (checked here in a fresh interpreter, so a stray
import cannot sneak in), and follows the document step by step. Here,
channels-lite itself is only the receiving side: a layer whose channels
joined a group, and the worker's task runner.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from channels_lite import wire
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.tasks import TaskContext, TaskRegistry
from tests import raw_publisher
from worker.config import Config
from worker.tasks import TaskRunner

pytestmark = pytest.mark.anyio

PREFIX = "rawpub"
MODULE = Path(raw_publisher.__file__)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def test_the_raw_publisher_does_not_import_channels_lite() -> None:
    tree = ast.parse(MODULE.read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} <= {"__future__", "typing", "msgpack", "redis"}
    # And at run time, in a fresh interpreter, loading it by path (not through
    # the tests package): nothing pulls channels_lite in indirectly.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('raw_publisher', {str(MODULE)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('channels_lite', 'worker', 'protocol_server'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


async def test_a_raw_group_message_reaches_every_member(
    redis_url: str, raw: aioredis.Redis
) -> None:
    # Two "processes" (layers) with process-specific channels, and a normal channel.
    first = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    second = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    try:
        members = [
            await first.new_channel(),
            await first.new_channel(),
            await second.new_channel(),
            "plain.receiver",
        ]
        for channel in members:
            await (second if channel == members[2] else first).group_add("room", channel)
        message = {"type": "chat.message", "text": "hi \u2603", "blob": b"\x00\xff", "n": 2**70}

        reached = await raw_publisher.group_send(raw, "room", message, prefix=PREFIX)

        assert reached == 4
        # One entry per stream: both members of `first` share one.
        assert await raw.xlen(f"{PREFIX}:ch:{raw_publisher.non_local(members[0])}") == 1
        with anyio.fail_after(5):
            for channel in members:
                layer = second if channel == members[2] else first
                assert await layer.receive(channel) == message
        for layer in (first, second):
            stats = layer.statistics()
            assert stats.malformed == 0
    finally:
        await first.close()
        await second.close()


async def test_a_group_member_past_group_expiry_is_not_sent_to(
    redis_url: str, raw: aioredis.Redis
) -> None:
    layer = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    try:
        await layer.group_add("room", "stale.member")
        await anyio.sleep(0.05)
        reached = await raw_publisher.group_send(
            raw, "room", {"type": "x"}, prefix=PREFIX, group_expiry=0.01
        )
        assert reached == 0
        assert await raw.exists(f"{PREFIX}:ch:stale.member") == 0
    finally:
        await layer.close()


async def test_a_raw_task_is_run_by_the_task_runner(redis_url: str, raw: aioredis.Redis) -> None:
    registry = TaskRegistry()
    seen: list[tuple[dict[str, Any], TaskContext]] = []
    two = anyio.Event()

    @registry.task("thumbnails")
    async def make(message: dict[str, Any], ctx: TaskContext) -> None:
        seen.append((message, ctx))
        if len(seen) == 2:
            two.set()

    # Enqueued before any worker ever started: the group created from id 0
    # keeps it for the first one (as the document says).
    early = await raw_publisher.enqueue(
        raw, "thumbnails", {"type": "thumb.make", "n": 1}, prefix=PREFIX
    )
    stream = f"{PREFIX}:task:thumbnails"
    [(_, fields)] = await raw.xrange(stream)
    assert wire.decode(fields) == wire.Task("thumbnails", {"type": "thumb.make", "n": 1})

    config = Config(app="unused:app", prefix=PREFIX, redis_url=redis_url, shutdown_timeout=5.0)
    layer = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    runner = TaskRunner(config, registry, layer, layer, worker_id="w1", block=0.1)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.serve, {})
            try:
                late = await raw_publisher.enqueue(
                    raw, "thumbnails", {"type": "thumb.make", "n": b"\x01"}, prefix=PREFIX
                )
                with anyio.fail_after(5):
                    await two.wait()
            finally:
                runner.stop()
    finally:
        await layer.close()

    assert [(m, c.entry_id, c.attempts) for m, c in seen] == [
        ({"type": "thumb.make", "n": 1}, early.decode(), 0),
        ({"type": "thumb.make", "n": b"\x01"}, late.decode(), 0),
    ]
    assert runner.statistics()["processed"] == 2
    assert runner.statistics()["malformed"] == 0
    assert await raw.xlen(stream) == 0  # acked and deleted
