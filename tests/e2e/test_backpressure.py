"""Backpressure: slow readers, message floods and connection floods stay bounded.

* A client that reads a large streaming response slowly holds the app back:
  the protocol server's and the worker's peak RSS, Redis's used_memory and
  the length of every relay stream stay bounded while it reads. (The 1 GiB
  version is ``bench/slow_reader.py``; tests/e2e/test_flow_control.py has
  100 MiB transfers at full speed.)
* A WebSocket client flooding a slow app: large messages are held back by
  the byte window (the client's sends wait, nothing is lost); small or
  empty ones, which bytes alone would not bound, close the socket with
  1013 once the app is ``--ws-max-queue`` messages behind.
* A flood of new connections beyond what the workers take: past
  ``--max-pending`` waiting offers a connection gets 503 at once, and the
  connect stream holds no more than that.

Each test deploys its own processes on the test's Redis (``deploy``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ._shared import wait_for_file
from .conftest import Deploy
from .test_flow_control import Peaks, Setup

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


class StreamLengths:
    """The longest any ``asgi:*`` stream got while a ``with`` block ran (sampled)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.longest: dict[str, int] = {}
        self._stop = threading.Event()

    def __enter__(self) -> StreamLengths:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            for key in self.client.scan_iter("asgi:*", _type="stream"):
                name = key.decode()
                self.longest[name] = max(self.longest.get(name, 0), self.client.xlen(key))

    def max(self) -> int:
        return max(self.longest.values(), default=0)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _worker_env(tmp_path: Path) -> dict[str, str]:
    return {"E2E_DIR": str(tmp_path)}


# ----------------------------------------------------------------------
# A slow reader


def _read_slowly(url: str, path: str, size: int, rate: float) -> int:
    """GET ``path`` on a raw socket with a small buffer, reading ``rate`` bytes/s."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect((parts.hostname, parts.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 ")
        received = len(head.partition(b"\r\n\r\n")[2])
        started = time.monotonic()
        while piece := sock.recv(64 * 1024):
            received += len(piece)
            ahead = received / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return received


def test_slow_reader_keeps_every_process_and_stream_bounded(
    deploy: Deploy, raw: redis.Redis, tmp_path: Path
) -> None:
    deployment = deploy(None)
    deployment.add_worker("hostile:app", env=_worker_env(tmp_path))
    size = 64 * MiB
    pids = {
        "protocol server": deployment.servers[0].pid,
        "worker": deployment.workers[0].pid,
        "redis": int(raw.info("server")["process_id"]),
    }
    setup = Setup(deployment, tmp_path, raw, pids)
    with httpx.Client(base_url=deployment.url, timeout=30) as client:  # warm up
        assert len(client.get("/stream?mib=4").content) == 4 * MiB
    with Peaks(setup) as peaks, StreamLengths(raw) as streams:
        # 16 MiB/s: four seconds, the app held back all the way.
        received = _read_slowly(deployment.url, "/stream?mib=64", size, rate=16 * MiB)
    assert received == size
    print(f"longest streams: {streams.longest}")
    peaks.check("slow reader, 64 MiB at 16 MiB/s")
    # The window (1 MiB) in the app's 64 KiB sends, plus a few credits.
    assert streams.max() <= 16 + 8, streams.longest


# ----------------------------------------------------------------------
# WebSocket floods


async def test_flood_of_small_messages_to_a_slow_app_closes_with_1013(
    deploy: Deploy, raw: redis.Redis, tmp_path: Path
) -> None:
    deployment = deploy(None, server_args=("--ws-max-queue", "100"))
    deployment.add_worker("hostile:app", env=_worker_env(tmp_path))
    token = uuid.uuid4().hex
    sent = 0
    async with (
        connect(deployment.ws_url + "/ws/echo", proxy=None) as bystander,
        connect(deployment.ws_url + f"/ws/slow?id={token}", proxy=None) as ws,
    ):

        async def flood() -> None:
            nonlocal sent
            while True:
                await ws.send("")  # empty: nothing for a byte window to count
                sent += 1
                if sent % 50 == 0:
                    await anyio.lowlevel.checkpoint()

        with (
            StreamLengths(raw) as streams,
            anyio.fail_after(10),
            pytest.raises(ConnectionClosed) as closed,
        ):
            await flood()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "try again later")
        # Someone else's socket on the same processes is unaffected.
        await bystander.send("still here")
        assert await bystander.recv() == "still here"
    (tmp_path / f"release-{token}").touch()
    record = await wait_for_file(tmp_path / f"ws-{token}.json", seconds=10)
    # The app gets what was relayed, exactly the queue's worth, then the close.
    assert (record["code"], record["count"]) == (1013, 100)
    assert sent > 100
    assert streams.max() <= 100 + 10, streams.longest
    deployment.servers[0].wait_for("closing with 1013")


async def test_flood_of_large_messages_to_a_slow_app_is_held_back_and_loses_nothing(
    deploy: Deploy, raw: redis.Redis, tmp_path: Path
) -> None:
    deployment = deploy(None)
    deployment.add_worker("hostile:app", env=_worker_env(tmp_path))
    pids = {
        "protocol server": deployment.servers[0].pid,
        "worker": deployment.workers[0].pid,
        "redis": int(raw.info("server")["process_id"]),
    }
    token = uuid.uuid4().hex
    message, total = b"m" * 65536, 800  # 50 MiB
    async with connect(deployment.ws_url + f"/ws/slow?id={token}", proxy=None) as ws:
        with Peaks(Setup(deployment, tmp_path, raw, pids)) as peaks:
            # The client library buffers what the server does not read, so
            # these sends return at once; the server reads only as the app
            # consumes: the window's worth while it reads nothing.
            for _ in range(total):
                await ws.send(message)
            await anyio.sleep(2)
        (tmp_path / f"release-{token}").touch()
        await ws.close()
    peaks.check("50 MiB of messages to an app reading nothing for 2 s")
    record = await wait_for_file(tmp_path / f"ws-{token}.json", seconds=20)
    assert (record["code"], record["count"]) == (1000, total)  # all of it, then the close


# ----------------------------------------------------------------------
# Connection floods


def _heartbeat(raw: redis.Redis, role: str) -> dict[str, Any]:
    [key] = raw.keys(f"asgi:hb:{role}:*")
    beat: dict[str, Any] = json.loads(raw.get(key) or b"{}")
    return beat


async def test_connections_beyond_max_pending_get_503_at_once(
    deploy: Deploy, raw: redis.Redis, tmp_path: Path
) -> None:
    deployment = deploy(
        None,
        server_args=("--max-pending", "5", "--queue-timeout", "20", "--heartbeat-interval", "0.2"),
    )
    async with httpx.AsyncClient(base_url=deployment.url, timeout=30) as client:
        waiting: list[httpx.Response] = []
        refused: list[tuple[int, float]] = []
        async with anyio.create_task_group() as tg:

            async def wait_for_a_worker(n: int) -> None:
                waiting.append(await client.get(f"/early/{n}"))

            for n in range(5):
                tg.start_soon(wait_for_a_worker, n)
            with anyio.fail_after(5):
                while raw.xlen("asgi:connect") < 5:  # noqa: ASYNC110 (Redis: no event)
                    await anyio.sleep(0.01)

            async def flood(n: int) -> None:
                started = time.monotonic()
                response = await client.get(f"/flood/{n}")
                refused.append((response.status_code, time.monotonic() - started))

            with StreamLengths(raw) as streams:
                async with anyio.create_task_group() as flooders:
                    for n in range(50):
                        flooders.start_soon(flood, n)
                with pytest.raises(InvalidStatus) as denied:
                    async with connect(deployment.ws_url + "/ws/echo", proxy=None):
                        pass
            assert denied.value.response.status_code == 503
            # Now a worker: the five that waited are served.
            deployment.add_worker("hostile:app", env=_worker_env(tmp_path))
    assert sorted(r.text for r in waiting) == [f"ok GET /early/{n} 0" for n in range(5)]
    assert [status for status, _ in refused] == [503] * 50
    # At once, not after the 20 s queue timeout.
    assert max(seconds for _, seconds in refused) < 5, refused
    assert streams.longest.get("asgi:connect", 0) <= 5, streams.longest
    deployment.servers[0].wait_for(r"wait for a worker \(max_pending\); answering 503")
    # What the heartbeat (and so channels-lite status) reports.
    with anyio.fail_after(5):
        while (beat := _heartbeat(raw, "ps"))["pending"] or beat["rejected"] < 51:  # noqa: ASYNC110
            await anyio.sleep(0.05)
