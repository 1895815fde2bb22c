"""The Node.js example publisher (examples/node-publisher) against channels-lite.

Why: the wire protocol is meant for publishers in any language, and this
example is the second implementation of docs/wire-protocol.md. It must
produce every test vector's bytes (``check-vectors.js``) and its CLI must
reach a group's members and enqueue a task that channels-lite decodes.

Skipped only when ``node`` or ``npm`` is not on PATH (an optional language
example whose toolchain is absent). With them present, everything else,
``npm ci`` included, must work or the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis.asyncio as aioredis

from channels_lite import keys, wire
from channels_lite.layer import RedisStreamsChannelLayer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node-publisher"
VECTORS = ROOT / "tests" / "vectors"
PREFIX = "nodepub"
SOURCES = ("package.json", "package-lock.json", "wire.js", "publish.js", "check-vectors.js")

pytestmark = pytest.mark.anyio


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false"
    )
    return env


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example with its locked dependencies installed (``npm ci``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not on PATH: the optional Node.js example is not tested")
    work = tmp_path_factory.mktemp("node-publisher")
    for name in SOURCES:
        shutil.copy2(EXAMPLE / name, work / name)
    # --prefer-offline: npm's own cache makes a rerun take about a second.
    result = subprocess.run(
        [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"],
        cwd=work,
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return work


def node(example: Path, *args: str) -> subprocess.CompletedProcess[str]:
    node_bin = shutil.which("node")
    assert node_bin is not None
    return subprocess.run(
        [node_bin, *args],
        cwd=example,
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def test_every_vector_is_produced_byte_for_byte_from_javascript(example: Path) -> None:
    result = node(example, "check-vectors.js", str(VECTORS))
    assert result.returncode == 0, result.stdout + result.stderr
    vectors = sorted(p.stem for p in VECTORS.glob("*.json"))
    lines = result.stdout.splitlines()
    # Exactly one vector is out of JavaScript's reach (a whole-number float).
    assert sorted(line.split()[1].rstrip(":") for line in lines[:-1]) == vectors
    assert [line.split()[1] for line in lines if line.startswith("skip")] == ["floats_and_nil:"]
    assert lines[-1] == f"{len(vectors) - 1} passed, 0 failed, 1 skipped"


# The CLI's MESSAGE_JSON, and what a Python receiver must get from it.
MESSAGE_JSON: dict[str, Any] = {
    "type": "chat.message",
    "text": "hi \u2603",
    "blob": {"$bytes": "00ff"},
    "big": {"$int": str(2**70)},
    "n": 5000000000,
    "nested": {"list": [1, -1, None, True]},
}
MESSAGE: dict[str, Any] = {
    "type": "chat.message",
    "text": "hi \u2603",
    "blob": b"\x00\xff",
    "big": 2**70,
    "n": 5000000000,
    "nested": {"list": [1, -1, None, True]},
}


async def test_node_group_send_reaches_every_member(example: Path, redis_url: str) -> None:
    first = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    second = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    try:
        members = [
            (first, await first.new_channel()),
            (first, await first.new_channel()),
            (second, await second.new_channel()),
            (first, "plain.receiver"),
        ]
        for layer, channel in members:
            await layer.group_add("room", channel)
        args = ["publish.js", "--redis", redis_url, "--prefix", PREFIX, "--group", "room"]
        result = await anyio.to_thread.run_sync(
            lambda: node(example, *args, json.dumps(MESSAGE_JSON))
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"reached": 4}
        with anyio.fail_after(5):
            for layer, channel in members:
                assert await layer.receive(channel) == MESSAGE
        assert first.statistics().malformed == second.statistics().malformed == 0
    finally:
        await first.close()
        await second.close()


async def test_node_enqueue_writes_a_task_channels_lite_decodes(
    example: Path, redis_url: str, raw: aioredis.Redis
) -> None:
    args = ["publish.js", "--redis", redis_url, "--prefix", PREFIX, "--task", "thumbnails"]
    result = await anyio.to_thread.run_sync(lambda: node(example, *args, json.dumps(MESSAGE_JSON)))
    assert result.returncode == 0, result.stderr
    entry_id = result.stdout.strip()
    stream = keys.task_stream(PREFIX, "thumbnails")
    [(got_id, fields)] = await raw.xrange(stream)
    assert got_id.decode() == entry_id
    assert list(fields) == [b"v", b"k", b"d"]
    assert wire.decode(fields) == wire.Task("thumbnails", MESSAGE)
    # The workers' group exists, from id 0: the first worker will take it.
    [group] = await raw.xinfo_groups(stream)
    assert (group["name"], group["last-delivered-id"]) == (keys.TASKS_GROUP.encode(), b"0-0")


def test_node_cli_refuses_bad_input(example: Path) -> None:
    result = node(example, "publish.js", "--group", "room", '{"text": "no type"}')
    assert result.returncode == 2
    assert "string 'type'" in result.stderr
    result = node(example, "publish.js", "--task", "bad name", '{"type": "x"}')
    assert result.returncode == 2
    assert "bad name" in result.stderr
