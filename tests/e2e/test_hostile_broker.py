"""Hostile broker data: garbage written straight into the streams the processes read.

Anyone with access to Redis can ``XADD`` anything to any key. Whatever lands
on the connect stream, on a protocol server's or a worker's inbox, on an
app's channel or in a group, the process that reads it logs it once (with
the stream and the entry id), counts it (``malformed`` in the heartbeat's
``layer`` counters, which ``channels-lite status`` sums under ``drops``),
skips it, and serves on: after each injection a normal request and a normal
WebSocket message still work. Task streams have the same treatment plus a
dead letter; every kind of bad task entry is covered in tests/test_tasks.py
(``test_bad_entries_are_dead_lettered_and_the_next_task_runs``).

One protocol server and one worker (so each inbox stream is known) running
``hostile:app`` on a private Redis; raw ``redis-py`` for the injections.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import msgpack
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from channels_lite import wire

from ._shared import own_logs_on_failure, shared_deployment
from .conftest import Deployment

pytestmark = pytest.mark.anyio

BEAT = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "2")
BIG = b"z" * (3 * 1024 * 1024)  # over every reader's limit (1 MiB and less)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with shared_deployment(
        tmp_path_factory.mktemp("broker"),
        "hostile:app",
        workers=1,
        servers=[BEAT],
        worker_args=BEAT,
    ) as (deployment, _):
        yield deployment


@pytest.fixture
def deployment(shared: Deployment, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    with own_logs_on_failure(shared, request):
        yield shared


@pytest.fixture
def raw(shared: Deployment) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(shared.redis_url)
    yield client
    client.close()


def _malformed(raw: redis.Redis, role: str) -> int:
    """The ``malformed`` counter in the heartbeat of the one process of ``role``."""
    [key] = raw.keys(f"asgi:hb:{role}:*")
    beat = json.loads(raw.get(key) or b"{}")
    return int(beat["layer"]["malformed"])


def _wait_malformed(raw: redis.Redis, role: str, expected: int) -> None:
    deadline = time.monotonic() + 5
    while _malformed(raw, role) < expected and time.monotonic() < deadline:
        time.sleep(0.05)  # the heartbeat is rewritten every 0.2 s
    assert _malformed(raw, role) == expected


def _logged_once(process: Any, entry_id: bytes, stream: str) -> None:
    """One log line names the entry (and its stream); no traceback for it."""
    pattern = re.escape(entry_id.decode())
    process.wait_for(pattern, timeout=5)
    lines = [line for line in process.lines if entry_id.decode() in line]
    assert len(lines) == 1, lines
    assert stream in lines[0], lines[0]
    assert "Traceback" not in process.log()


async def _still_serving(deployment: Deployment, ws: ClientConnection | None = None) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        response = await client.post("/after", content=b"12345")
    assert response.text == "ok POST /after 5"
    if ws is not None:
        await ws.send("still here")
        with anyio.fail_after(5):
            assert await ws.recv() == "still here"


# ----------------------------------------------------------------------
# The connect stream

CONNECT_D = {"conn": "ps.x!y", "reply_to": "ps.x!y", "events": [], "server": "x"}
HTTP_SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": []}
BAD_CONNECTS: dict[str, dict[bytes, bytes]] = {
    "garbage": {b"\xff\xfe": b"\x00garbage\xc1"},
    "wrong-version": {b"v": b"9", b"k": b"conn", b"d": pack({**CONNECT_D, "scope": HTTP_SCOPE})},
    "missing-d": {b"v": b"1", b"k": b"conn"},
    "truncated": {b"v": b"1", b"k": b"conn", b"d": pack({**CONNECT_D, "scope": HTTP_SCOPE})[:20]},
    "oversized": {
        b"v": b"1",
        b"k": b"conn",
        b"d": pack({**CONNECT_D, "scope": HTTP_SCOPE, "x": BIG}),
    },
    "not-a-connection": wire.encode(wire.ChannelMessage(("jobs",), {"type": "go"})),
    "lifespan-scope": {
        b"v": b"1",
        b"k": b"conn",
        b"d": pack({**CONNECT_D, "scope": {"type": "lifespan"}}),
    },
    "bad-reply-to": {
        b"v": b"1",
        b"k": b"conn",
        b"d": pack({**CONNECT_D, "reply_to": "no such channel!", "scope": HTTP_SCOPE}),
    },
    "scope-without-path": {
        b"v": b"1",
        b"k": b"conn",
        b"d": pack({**CONNECT_D, "scope": {"type": "http", "method": "GET", "headers": []}}),
    },
}


async def test_bad_connect_entries_are_logged_counted_and_skipped(
    deployment: Deployment, raw: redis.Redis
) -> None:
    (worker,) = deployment.workers
    before = _malformed(raw, "wk")
    ids = {name: raw.xadd("asgi:connect", fields) for name, fields in BAD_CONNECTS.items()}
    await _still_serving(deployment)
    for entry_id in ids.values():
        _logged_once(worker, entry_id, "asgi:connect")
    _wait_malformed(raw, "wk", before + len(BAD_CONNECTS))
    # Taken, acked and deleted like any entry: nothing is left to grow.
    assert raw.xlen("asgi:connect") == 0
    # channels-lite status adds them up with the other undelivered messages.
    command = ["status", "--json", "--redis-url", deployment.redis_url]
    status = await anyio.run_process([sys.executable, "-m", "channels_lite", *command])
    assert json.loads(status.stdout)["drops"]["malformed"] >= len(BAD_CONNECTS)


# ----------------------------------------------------------------------
# A protocol server's and a worker's inbox


def _bad_channel_entries(stream: str) -> dict[str, dict[bytes, bytes]]:
    process = stream.split(":", 2)[2]  # "ps.<id>!"
    message = pack({"type": "websocket.send", "text": "hi"})
    return {
        "garbage": {b"\xff\xfe": b"\x00garbage\xc1"},
        "wrong-version": {b"v": b"9", b"k": b"msg", b"to": pack([process + "x"]), b"d": message},
        "missing-fields": {b"v": b"1", b"k": b"msg"},
        "not-a-message": {b"v": b"1", b"k": b"conn", b"d": pack(CONNECT_D)},
        "recipients-not-msgpack": {b"v": b"1", b"k": b"msg", b"to": b"\xc1", b"d": message},
        "oversized": {b"v": b"1", b"k": b"msg", b"to": pack([process + "x"]), b"d": BIG},
        "foreign-channel": {b"v": b"1", b"k": b"msg", b"to": pack(["other.z!x"]), b"d": message},
    }


@pytest.mark.parametrize("role", ["ps", "wk"])
async def test_bad_entries_on_a_process_inbox_are_logged_counted_and_skipped(
    deployment: Deployment, raw: redis.Redis, role: str
) -> None:
    process = deployment.servers[0] if role == "ps" else deployment.workers[0]
    async with connect(deployment.ws_url + "/ws/echo", proxy=None, open_timeout=10) as ws:
        await ws.send("open")
        assert await ws.recv() == "open"
        # With the socket open, both processes block on their inbox streams.
        [stream] = [key.decode() for key in raw.scan_iter(f"asgi:ch:{role}.*!")]
        before = _malformed(raw, role)
        entries = _bad_channel_entries(stream)
        ids = [raw.xadd(stream, fields) for fields in entries.values()]
        await _still_serving(deployment, ws)
        for entry_id in ids:
            _logged_once(process, entry_id, stream)
        _wait_malformed(raw, role, before + len(entries))
        assert raw.xlen(stream) == 0  # popped, not left to pile up


# ----------------------------------------------------------------------
# An app's own channel and its groups


async def test_bad_app_channel_entries_and_group_members_are_skipped(
    deployment: Deployment, raw: redis.Redis
) -> None:
    (worker,) = deployment.workers
    url = deployment.ws_url + "/ws/group?group=room"
    async with connect(url, proxy=None, open_timeout=10) as ws:
        joined = await ws.recv()
        assert isinstance(joined, str)
        name = joined.split()[1]  # the app's channel, scope["channel_name"]
        stream = "asgi:ch:" + name[: name.index("!") + 1]
        before = _malformed(raw, "wk")
        # A message for the app's channel whose body is cut short: the app's
        # layer.receive skips it and returns the next one.
        cut = pack({"type": "chat", "text": "lost"})[:6]
        raw.xadd(stream, {b"v": b"1", b"k": b"msg", b"to": pack([name]), b"d": cut})
        # Group members that are no channel names, next to the real one.
        now = int(time.time() * 1000)
        raw.zadd("asgi:grp:room", {b"\xff\xfe not utf-8": now, b"no such channel": now})
        await ws.send("hello")
        with anyio.fail_after(5):
            assert await ws.recv() == "hello"  # sent to the group, relayed back
        worker.wait_for(re.escape(f"skipped malformed message for {name!r}"), timeout=5)
        worker.wait_for("member\\(s\\) that are not channel names", timeout=5)
        # Removed from the group: logged and counted once, not on every send.
        assert raw.zrange("asgi:grp:room", 0, -1) == [name.encode()]
        await ws.send("again")
        with anyio.fail_after(5):
            assert await ws.recv() == "again"
        assert len([line for line in worker.lines if "not channel names" in line]) == 1
        _wait_malformed(raw, "wk", before + 3)
    await _still_serving(deployment)
