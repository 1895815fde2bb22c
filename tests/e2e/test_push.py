"""Pushes: a message to a socket's reply channel goes to the client with no app in between.

The app (``layer_app``, route ``/push``) joins group ``pushed`` with
``scope["reply_channel"]``, the protocol server's channel for its socket; a
publisher outside the deployment sends ``{"type": "websocket.push", ...}`` to
the group and every member's client gets it as a WebSocket message, written
by its protocol server. Then the cases where a push must not be written: the
socket is not accepted yet, the push is malformed or too large, the client is
too far behind. Each is dropped, counted and logged, and the socket carries
on.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from channels_lite.client import AsyncPublisher
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.inspect import snapshot

from .conftest import Deploy

pytestmark = pytest.mark.anyio

#: The smallest flow window the server takes: credit goes back every 16 KiB.
SMALL_WINDOW = ("--flow-window", "65536")


async def _joined(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(10):
        hello: dict[str, Any] = json.loads(await ws.recv())
    assert hello["joined"].startswith("ps."), hello
    return hello


async def _recv(ws: ClientConnection) -> str | bytes:
    with anyio.fail_after(10):
        return await ws.recv()


async def _server_pushes(redis_url: str, written: int) -> dict[str, int]:
    """The protocol server's push counters (its heartbeat, as ``status``
    shows them) once it has written ``written`` pushes."""
    layer = RedisStreamsChannelLayer(hosts=[redis_url])
    try:
        with anyio.fail_after(10):
            while True:
                document = await snapshot(layer)
                servers = [p for p in document["processes"] if p["role"] == "ps"]
                assert len(servers) == 1, servers
                counts = {k: v for k, v in servers[0].items() if k.startswith("pushes_")}
                if counts["pushes_written"] >= written:
                    return counts
                await anyio.sleep(0.2)
    finally:
        await layer.close()


async def _pushed(redis_url: str, *messages: dict[str, Any], group: str = "pushed") -> None:
    async with AsyncPublisher.from_url(redis_url) as publisher:
        for message in messages:
            await publisher.group_send(group, message)
        assert publisher.statistics().dropped == 0


async def test_push_to_a_group_reaches_every_socket_in_order(
    deploy: Deploy, redis_url: str
) -> None:
    deployment = deploy("layer_app:app", workers=2, servers=2)
    urls = [url.replace("http://", "ws://", 1) + "/push" for url in deployment.urls]
    async with (
        connect(urls[0]) as first,
        connect(urls[1]) as second,
        connect(urls[0]) as third,
    ):
        sockets = [first, second, third]
        for ws in sockets:
            await _joined(ws)
        await _pushed(
            redis_url,
            {"type": "websocket.push", "text": "one"},
            {"type": "websocket.push", "bytes": b"\x00two"},
            {"type": "websocket.push", "text": "three"},
        )
        for ws in sockets:
            assert [await _recv(ws) for _ in range(3)] == ["one", b"\x00two", "three"]
            # The app is still there, and still answers its own messages.
            await ws.send("whoami")
            assert "pid" in json.loads(await _recv(ws))


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "plain"])
async def test_pushes_and_the_apps_own_messages_keep_their_order(
    deploy: Deploy, redis_url: str, compression: str | None
) -> None:
    """A push lands in its socket's order wherever it is written: straight
    as it arrives when the socket is idle (framed once, uncompressed even
    where permessage-deflate was agreed), or behind the app's own messages
    when they are on their way. The app alternates a push to its own socket
    and a message of its own; every client gets exactly that sequence."""
    # A small window: the app's messages (4 KiB) are credited every few,
    # so the server often waits on Redis with some of a batch unwritten.
    deployment = deploy("layer_app:app", workers=1, servers=1, server_args=SMALL_WINDOW)
    count, own, size, sockets = 300, 3, 4096, 4
    url = deployment.ws_url + "/interleave"
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(connect(url, compression=compression))
            for _ in range(sockets)
        ]
        for ws in clients:
            await ws.send(f"{count} {own} {size}")
        expected = [
            text
            for i in range(count)
            for text in (f"p{i}", *(f"a{i}.{j}".ljust(size, ".") for j in range(own)))
        ]
        for ws in clients:
            got = [await _recv(ws) for _ in range(len(expected))]
            assert [str(m)[:12] for m in got] == [m[:12] for m in expected]
            assert got == expected
    counts = await _server_pushes(redis_url, count * sockets)
    assert counts["pushes_written"] == count * sockets, counts
    assert counts["pushes_dropped"] == 0, counts
    assert 0 < counts["pushes_direct"] <= count * sockets, counts  # both ways were taken


async def test_a_push_to_a_reply_channel_reaches_that_socket_only(
    deploy: Deploy, redis_url: str
) -> None:
    deployment = deploy("layer_app:app", workers=1, servers=1)
    async with (
        connect(deployment.ws_url + "/push") as target,
        connect(deployment.ws_url + "/push") as other,
    ):
        reply_channel = (await _joined(target))["joined"]
        await _joined(other)
        async with AsyncPublisher.from_url(redis_url) as publisher:
            await publisher.send(reply_channel, {"type": "websocket.push", "text": "just you"})
        assert await _recv(target) == "just you"
        await other.send("whoami")  # the next thing it gets is the app's answer
        assert "pid" in json.loads(await _recv(other))


async def test_a_push_before_accept_is_dropped(deploy: Deploy, redis_url: str) -> None:
    deployment = deploy("layer_app:app", workers=1, servers=1)
    server = deployment.servers[0]
    async with anyio.create_task_group() as tg:
        opened: list[ClientConnection] = []

        async def open_socket() -> None:
            opened.append(await connect(deployment.ws_url + "/push-before-accept"))

        tg.start_soon(open_socket)
        # The app has joined both groups and waits before accepting.
        ready = RedisStreamsChannelLayer(hosts=[redis_url])
        with anyio.fail_after(10):
            await ready.receive("early-ready")
        await ready.close()
        await _pushed(redis_url, {"type": "websocket.push", "text": "early"}, group="early")
        await _pushed(redis_url, {"type": "go"}, group="early-go")
    async with opened[0] as ws:
        assert await _recv(ws) == "accepted"
        await _pushed(redis_url, {"type": "websocket.push", "text": "late"}, group="early")
        assert await _recv(ws) == "late"
    server.wait_for(r"push dropped \(the socket is not accepted yet\)")


async def test_malformed_and_oversized_pushes_are_dropped_and_the_socket_carries_on(
    deploy: Deploy, redis_url: str
) -> None:
    deployment = deploy("layer_app:app", workers=1, servers=1)
    server = deployment.add_server("--ws-max-size", "1000")
    url = deployment.urls[-1].replace("http://", "ws://", 1) + "/push"
    async with connect(url) as ws:
        await _joined(ws)
        await _pushed(
            redis_url,
            {"type": "websocket.push", "text": 5},
            {"type": "websocket.push", "text": "a", "bytes": b"b"},
            {"type": "websocket.push"},
            {"type": "websocket.push", "text": "x" * 2000},
            {"type": "websocket.push", "text": "fine"},
        )
        assert await _recv(ws) == "fine"
    # One line for the flood (the first, with the running count), not five.
    server.wait_for(r"push dropped \(not exactly one of text \(str\) and bytes\); 1 dropped")
    assert server.log().count("push dropped") == 1


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_client_that_stops_reading_costs_bounded_memory_and_gets_the_newest(
    deploy: Deploy, redis_url: str
) -> None:
    deployment = deploy("layer_app:app", workers=1, servers=1)
    server = deployment.add_server("--ws-max-push-backlog", "5")
    url = deployment.urls[-1].replace("http://", "ws://", 1) + "/push"
    count, size = 400, 100_000  # 40 MB: far more than the socket buffers hold
    async with (
        connect(url, max_size=None, max_queue=1) as slow,
        # Another socket on the same server (not in the group): its receive
        # keeps reading the server's stream, so nothing waits in Redis for
        # the slow one.
        connect(url.replace("/push", "/chat")) as other,
    ):
        await _joined(slow)
        with anyio.fail_after(10):
            assert "joined" in json.loads(await other.recv())
        before = _rss_kib(server.pid)
        # The slow client reads nothing while they are published...
        async with AsyncPublisher.from_url(redis_url) as publisher:
            for i in range(count):
                await publisher.group_send(
                    "pushed", {"type": "websocket.push", "text": f"{i:05d}" + "x" * size}
                )
        server.wait_for(r"push dropped \(the client is ws_max_push_backlog or flow_window behind")
        # ...and the server did not keep them for it (at most flow_window of
        # pushes, 1 MiB by default, plus what uvicorn holds before pausing).
        grown = _rss_kib(server.pid) - before
        assert grown < 15 * 1024, f"the server grew by {grown} KiB"
        # Then it catches up: what the buffers held, then the newest, in order.
        got: list[int] = []
        while not got or got[-1] != count - 1:
            text = await _recv(slow)
            assert isinstance(text, str)
            got.append(int(text[:5]))
    assert got == sorted(got)
    assert len(got) < count


async def test_a_push_sent_by_the_app_right_after_accept_arrives_after_the_accept(
    deploy: Deploy,
) -> None:
    deployment = deploy("layer_app:app", workers=1, servers=1)
    for _ in range(20):
        async with connect(deployment.ws_url + "/welcome") as ws:
            assert [await _recv(ws), await _recv(ws)] == ["welcome", "after"]
    assert "push dropped" not in deployment.servers[0].log()


async def test_a_client_that_vanishes_while_pushes_wait_for_it_disconnects_its_app(
    deploy: Deploy, redis_url: str
) -> None:
    deployment = deploy("layer_app:app", workers=1, servers=1)
    left = RedisStreamsChannelLayer(hosts=[redis_url])
    ws = await connect(deployment.ws_url + "/push-watched", max_queue=1)
    await _joined(ws)
    async with AsyncPublisher.from_url(redis_url) as publisher:
        for i in range(300):  # 30 MB: the server's send is waiting on the socket
            await publisher.group_send(
                "pushed", {"type": "websocket.push", "text": f"{i:05d}" + "x" * 100_000}
            )
    ws.transport.abort()  # gone without a close frame
    with anyio.fail_after(10):
        assert (await left.receive("push-left"))["type"] == "left"
    await left.close()
    log = deployment.servers[0].log()
    assert "Traceback" not in log, log
