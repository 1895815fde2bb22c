"""Every process behind a locked-down Redis, and with a shared keyring.

Why: a deployment's Redis has a password, an ACL user of least privilege,
or TLS; each process (protocol server, worker, task runner, the CLI's
``publish``, ``enqueue``, ``status``) must work through each of them, not
just the layer. And with ``CHANNELS_LITE_KEYS`` set, every process must seal
what it writes and refuse what someone without the key wrote straight into
Redis, counting it, while normal traffic flows on. Real processes, real
Redis servers, a real TLS handshake against a throwaway CA.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from channels_lite import keys, wire
from tests._redis import RedisServer

from .conftest import Deployment, stop_together

pytestmark = pytest.mark.anyio

TASKS = ("--tasks", "tasks_app:tasks")
KEYRING = (
    "k2:" + base64.b64encode(b"2" * 32).decode() + ",k1:" + base64.b64encode(b"1" * 32).decode()
)

#: What a deployment's Redis user needs, and nothing more: its own keys, and
#: the commands the processes and the CLI send (scripts' commands included,
#: since Redis checks those against the caller too). docs/operations.md.
ACL_RULES = (
    "resetkeys", "~asgi:*", "resetchannels", "-@all",
    "+evalsha", "+script|load", "+multi", "+exec", "+ping", "+select", "+time",
    "+xadd", "+xread", "+xreadgroup", "+xack", "+xdel", "+xtrim", "+xlen",
    "+xrange", "+xrevrange", "+xpending", "+xclaim", "+xautoclaim", "+xgroup|create",
    "+zadd", "+zrem", "+zrange", "+zrangebyscore", "+zremrangebyscore", "+zcard",
    "+set", "+mget", "+del", "+exists", "+pexpire", "+scan", "+unlink",
)  # fmt: skip


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """``start(redis_url, env)``: one protocol server and one worker running
    ``layer_app`` with the task registry; all stopped at teardown."""
    started: list[Deployment] = []

    def make(redis_url: str, env: dict[str, str] | None = None) -> Deployment:
        deployment = Deployment(redis_url)
        started.append(deployment)
        deployment.add_server(env=env)
        deployment.add_worker(
            "layer_app:app", *TASKS, env={**(env or {}), "E2E_DIR": str(tmp_path)}
        )
        return deployment

    yield make
    stop_together([p for d in started for p in [*d.workers, *d.servers]])


async def cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``channels-lite ARGS`` as an operator would; its stdout, or fail with stderr."""
    result = await anyio.run_process(
        [sys.executable, "-m", "channels_lite", *args],
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def next_text(ws: ClientConnection) -> str:
    with anyio.fail_after(10):
        text: str = json.loads(await ws.recv())["text"]
    return text


async def status(redis_url: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        await cli("status", "--json", "--redis-url", redis_url, env=env)
    )
    return document


async def exercise(deployment: Deployment, env: dict[str, str] | None = None) -> None:
    """HTTP, a WebSocket in a group, a publish and a task reaching it, a push
    straight to a socket, status."""
    url = deployment.redis_url
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        response = await client.get("/whoami")
    assert response.status_code == 200, deployment.logs()
    async with connect(deployment.ws_url + "/chat") as ws:
        with anyio.fail_after(10):
            await ws.recv()  # joined the group "room"
        message = '{"type": "chat.message", "text": "published"}'
        await cli("publish", "--group", "room", message, "--redis-url", url, env=env)
        assert await next_text(ws) == "published"
        task = '{"type": "broadcast", "text": "from a task"}'
        await cli("enqueue", "broadcast", task, "--redis-url", url, env=env)
        assert await next_text(ws) == "from a task"
    async with connect(deployment.ws_url + "/push") as ws:
        with anyio.fail_after(10):
            await ws.recv()  # its reply channel joined the group "pushed"
        push = '{"type": "websocket.push", "text": "straight to the socket"}'
        await cli("publish", "--group", "pushed", push, "--redis-url", url, env=env)
        with anyio.fail_after(10):
            assert await ws.recv() == "straight to the socket"
    roles = sorted(p["role"] for p in (await status(url, env))["processes"])
    assert roles == ["ps", "wk"]


async def test_requirepass(redis_factory: Callable[..., RedisServer], start: Any) -> None:
    server = redis_factory(requirepass="s3cret/:@pw")
    await exercise(start(server.url))


async def test_acl_user_of_least_privilege(
    redis_factory: Callable[..., RedisServer], start: Any
) -> None:
    # The harness's own user (admin) pings and reads the ACL log.
    server = redis_factory(
        users={"admin": "adminpw"},
        extra_args=("--user", "default", "off", "--user", "app", "on", ">apppw", *ACL_RULES),
    )
    try:
        await exercise(start(server.url_for(username="app", password="apppw")))
    finally:
        admin = redis.Redis.from_url(server.url)
        denied = admin.execute_command("ACL", "LOG")
        admin.close()
    assert not denied, f"commands the ACL refused: {denied}"


async def test_tls_with_a_private_ca(redis_factory: Callable[..., RedisServer], start: Any) -> None:
    server = redis_factory(tls=True)
    # rediss:// with the CA in the URL: every process reads it the same way.
    assert server.url.startswith("rediss://")
    assert "ssl_ca_certs=" in server.url
    await exercise(start(server.url))


@pytest.mark.parametrize("mode", ["sign", "encrypt"])
async def test_keyring_in_every_process_refuses_what_others_wrote(
    redis_url: str, start: Any, mode: str
) -> None:
    env = {"CHANNELS_LITE_KEYS": KEYRING, "CHANNELS_LITE_SEAL": mode}
    deployment = start(redis_url, env)
    await exercise(deployment, env)
    raw = redis.Redis.from_url(redis_url)
    async with connect(deployment.ws_url + "/chat") as ws:
        with anyio.fail_after(10):
            member = json.loads(await ws.recv())["joined"]
        # Written by hand by someone with Redis access but no key: a group
        # message to the socket, a task, a connection offer.
        forged = wire.encode_message({"type": "chat.message", "text": "forged"})
        inbox = keys.channel_stream("asgi", member.split("!")[0] + "!")
        raw.xadd(inbox, wire.channel_message_fields([member], forged))
        raw.xadd(
            keys.task_stream("asgi", "broadcast"),
            wire.encode(wire.Task("broadcast", {"type": "broadcast", "text": "forged task"})),
        )
        scope = {"type": "http", "path": "/whoami", "method": "GET", "headers": []}
        raw.xadd(keys.connect_stream("asgi"), wire.encode(wire.Connect("c!1", "c!1", scope)))
        # And a publisher without the key, through the CLI.
        unsigned = '{"type": "chat.message", "text": "unsigned"}'
        await cli("publish", "--group", "room", unsigned, "--redis-url", redis_url)

        real = '{"type": "chat.message", "text": "real"}'
        await cli("publish", "--group", "room", real, "--redis-url", redis_url, env=env)
        assert await next_text(ws) == "real"  # FIFO: nothing written before it got through
        counted = await _wait_counted(redis_url, env)
        task = '{"type": "broadcast", "text": "real task"}'
        await cli("enqueue", "broadcast", task, "--redis-url", redis_url, env=env)
        assert await next_text(ws) == "real task"
    raw.close()
    # The socket's worker refused the message, the offer and the unsigned
    # publish (malformed), its task runner the task (dead-lettered).
    assert counted["drops"]["malformed"] == 3
    letters = json.loads(
        await cli("dead-letters", "list", "--json", "--redis-url", redis_url, env=env)
    )
    # Moved aside whole; its type is not shown: nothing unsealed is read.
    assert [(r["stream"], r["type"]) for r in letters] == [("asgi:task:broadcast", None)]
    assert "not signed" in letters[0]["error"]


async def _wait_counted(redis_url: str, env: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        document = await status(redis_url, env)
        workers = [p for p in document["processes"] if p["role"] == "wk"]
        if document["drops"]["malformed"] >= 3 and workers[0]["tasks"]["malformed"] >= 1:
            return document
        assert time.monotonic() < deadline, document
        await anyio.sleep(0.2)
