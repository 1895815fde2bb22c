"""Broadcast end to end: an external publisher reaches WebSocket clients through a group.

A client connects through a protocol server to ``layer_app`` on a worker; the
app joins group ``room``; a script outside the deployment publishes with
:class:`~channels_lite.client.AsyncPublisher`; the client receives it. Then the
same at scale: two protocol servers, two workers, 1,000 clients, 20 messages,
every client gets every message exactly once and in order, through the apps
and pushed to the sockets' reply channels.
"""

from __future__ import annotations

import json
import resource
import time

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from channels_lite.client import AsyncPublisher

from .conftest import Deploy

pytestmark = pytest.mark.anyio

CLIENTS = 1000
MESSAGES = 20
#: Connections opened at once while setting up (bounded: the accept backlog).
OPEN_BATCH = 100


def _raise_open_files(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` if it is lower (and allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        pytest.fail(f"open-files limit {hard} is below the {needed} this test needs")


async def test_external_group_send_reaches_one_client(deploy: Deploy, redis_url: str) -> None:
    deployment = deploy("layer_app:app", workers=1, servers=1)
    async with connect(deployment.ws_url + "/chat") as ws:
        with anyio.fail_after(10):
            assert "joined" in json.loads(await ws.recv())
        async with AsyncPublisher.from_url(redis_url) as publisher:
            await publisher.group_send("room", {"type": "chat.message", "text": "x"})
            assert publisher.statistics().dropped == 0
        with anyio.fail_after(10):
            assert json.loads(await ws.recv())["text"] == "x"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["through-apps", "pushed"])
async def test_broadcast_to_1000_clients_over_two_servers_and_two_workers(
    deploy: Deploy, redis_url: str, path: str
) -> None:
    """Through the apps (each member's app relays the group message), or
    pushed (the sockets' reply channels are the members; the protocol
    servers write the frames): the same guarantee either way."""
    # The clients' 1,000 sockets live here; the servers' are in their own processes.
    _raise_open_files(CLIENTS + 1024)
    deployment = deploy(
        "layer_app:app",
        workers=2,
        servers=2,
        worker_args=("--concurrency", "1000"),
    )
    route = "/chat" if path == "through-apps" else "/push"
    ws_urls = [url.replace("http://", "ws://", 1) + route for url in deployment.urls]
    clients: list[ClientConnection | None] = [None] * CLIENTS
    received: list[list[str]] = [[] for _ in range(CLIENTS)]
    pids: set[int] = set()
    done = anyio.Event()
    finished = 0
    started = time.monotonic()

    async def open_one(i: int) -> None:
        ws = await connect(ws_urls[i % len(ws_urls)], open_timeout=30)
        clients[i] = ws
        joined = json.loads(await ws.recv())
        assert "joined" in joined, joined
        pids.add(joined["pid"])

    async def read_all(i: int) -> None:
        nonlocal finished
        ws = clients[i]
        assert ws is not None
        async for raw in ws:
            received[i].append(json.loads(raw)["text"])
            if len(received[i]) == MESSAGES:
                finished += 1
                if finished == CLIENTS:
                    done.set()

    try:
        with anyio.fail_after(30):
            for start in range(0, CLIENTS, OPEN_BATCH):
                async with anyio.create_task_group() as tg:
                    for i in range(start, min(start + OPEN_BATCH, CLIENTS)):
                        tg.start_soon(open_one, i)
        opened = time.monotonic()
        # The connections took both workers, not just one.
        assert len(pids) == 2, pids

        async with anyio.create_task_group() as tg:
            for i in range(CLIENTS):
                tg.start_soon(read_all, i)
            async with AsyncPublisher.from_url(redis_url) as publisher:
                for n in range(MESSAGES):
                    if path == "through-apps":
                        message = {"type": "chat.message", "text": str(n)}
                        await publisher.group_send("room", message)
                    else:
                        push = {"type": "websocket.push", "text": json.dumps({"text": str(n)})}
                        await publisher.group_send("pushed", push)
                stats = publisher.statistics()
            assert stats.dropped == 0, stats
            with anyio.fail_after(20):
                await done.wait()
            # Anything extra that was already on its way arrives within a moment.
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()
        delivered = time.monotonic()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            async with anyio.create_task_group() as tg:
                for ws in clients:
                    if ws is not None:
                        tg.start_soon(ws.close)

    expected = [str(n) for n in range(MESSAGES)]
    wrong = [i for i, got in enumerate(received) if got != expected]
    assert wrong == [], (
        f"{len(wrong)} clients got the wrong messages, e.g. client {wrong[0]}: {received[wrong[0]]}"
    )
    print(
        f"opened {CLIENTS} in {opened - started:.1f}s; "
        f"{CLIENTS * MESSAGES} deliveries in {delivered - opened - 0.5:.2f}s"
    )
