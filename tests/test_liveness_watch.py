"""The liveness watches judge only the peers they asked Redis about.

Why: a protocol server checks, every heartbeat interval, that the workers
running its connections still beat (``Gateway._watch_workers``), and a worker
checks the protocol servers of its connections (``Worker._watch_servers``).
The check is a Redis round trip; a connection can be claimed (or taken)
while it is on its way, from a peer that had no connection here before and
so was not asked about. Found by ``bench/soak.py``: such a peer was judged
dead, and its brand-new, healthy connection failed (502 or a close 1011,
"the worker died mid-response" in the log, "protocol server gone" on the
worker). Each test adds that connection during the round trip itself,
through the one seam there is (the ``Heartbeat.alive`` call), against a
real Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest

from channels_lite import wire
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.heartbeat import Heartbeat
from protocol_server.bridge import ServerContext
from protocol_server.config import Config as ServerConfig
from protocol_server.gateway import Gateway
from worker.config import Config as WorkerConfig
from worker.worker import Worker

pytestmark = pytest.mark.anyio

PREFIX = "watch"
BEAT = {"heartbeat_interval": 0.05, "heartbeat_timeout": 1.0}


@pytest.fixture
async def layer(redis_url: str) -> AsyncIterator[RedisStreamsChannelLayer]:
    layer = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    yield layer
    await layer.close()


class Peer:
    """Stands for a connection (a bridge, or the worker's app connection): records its fate."""

    def __init__(self, server: str = "") -> None:
        self.failed = False
        self.connect = wire.Connect("c", "c", {"type": "http"}, server=server)

    def worker_lost(self) -> None:
        self.failed = True

    def peer_lost(self) -> None:
        self.failed = True


class ArrivesDuringCheck(Heartbeat):
    """Runs ``arrive`` once the round trip of the first check is done, before it returns."""

    def __init__(self, layer: RedisStreamsChannelLayer, arrive: Any) -> None:
        super().__init__(layer, "self", "me", interval=0.05, timeout=1.0)
        self.arrive = arrive
        self.checked = anyio.Event()

    async def alive(self, role: str, ids: Iterable[str]) -> set[str]:
        live = await super().alive(role, ids)
        if not self.checked.is_set():
            self.arrive()
            self.checked.set()
        return live


async def watch_once(watch: Any, heartbeat: ArrivesDuringCheck) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, heartbeat)
        with anyio.fail_after(5):
            await heartbeat.checked.wait()
        # The judgement follows the round trip with no await in between:
        # it is done by now.
        tg.cancel_scope.cancel()


async def test_gateway_does_not_fail_a_worker_it_did_not_ask_about(
    layer: RedisStreamsChannelLayer, redis_url: str
) -> None:
    config = ServerConfig(redis_url=redis_url, prefix=PREFIX, **BEAT)
    ctx = ServerContext(config, layer, None, "ps1")  # type: ignore[arg-type]
    dead, fresh = Peer(), Peer()
    ctx.by_worker["dead"] = {dead}  # type: ignore[arg-type]
    await Heartbeat(layer, "wk", "fresh", timeout=5.0).beat()  # alive and well

    def claim() -> None:
        ctx.by_worker.setdefault("fresh", set()).add(fresh)  # type: ignore[arg-type]

    gateway = Gateway(config)
    await watch_once(lambda hb: gateway._watch_workers(ctx, hb), ArrivesDuringCheck(layer, claim))
    assert dead.failed  # asked about, and its key is gone
    assert not fresh.failed
    assert "fresh" in ctx.by_worker


async def test_worker_does_not_disconnect_for_a_server_it_did_not_ask_about(
    layer: RedisStreamsChannelLayer, redis_url: str
) -> None:
    worker = Worker(WorkerConfig(app="unused:app", redis_url=redis_url, prefix=PREFIX, **BEAT))
    dead, fresh = Peer(server="ps-dead"), Peer(server="ps-fresh")
    worker.connections = {dead}  # type: ignore[arg-type]
    await Heartbeat(layer, "ps", "ps-fresh", timeout=5.0).beat()

    def take() -> None:
        worker.connections.add(fresh)  # type: ignore[arg-type]

    await watch_once(lambda hb: worker._watch_servers(hb, layer), ArrivesDuringCheck(layer, take))
    assert dead.failed
    assert not fresh.failed
