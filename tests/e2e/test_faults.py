"""Processes that die: what clients and apps see (heartbeats, 502, 1011, disconnect).

Heartbeats are shortened (0.3 s beat, 1.5 s timeout) so the tests are quick;
the defaults (1 s, 5 s) behave the same, only slower.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from channels_lite import keys

from ._procs import Process
from .conftest import Deploy, Deployment

pytestmark = pytest.mark.anyio

T = TypeVar("T")
BEAT = ("--heartbeat-interval", "0.3", "--heartbeat-timeout", "1.5")
FAULT_APP = "faultapp:app"
CONNECT = keys.connect_stream("asgi")


@pytest.fixture
async def rclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def _wait_file(path: Path, limit: float = 10.0) -> dict[str, object]:
    """The JSON the app wrote to ``path`` (from another process: no event to wait on)."""
    target = anyio.Path(path)
    with anyio.fail_after(limit):
        while not await target.exists():  # noqa: ASYNC110 (a file from another process)
            await anyio.sleep(0.05)
    data: dict[str, object] = json.loads(await target.read_text())
    return data


def _deployment(deploy: Deploy, tmp_path: Path) -> Deployment:
    deployment = deploy(app=None, server_args=BEAT)
    deployment.add_worker("probe:app", *BEAT, env={"E2E_DIR": str(tmp_path)})
    return deployment


class _Background(Generic[T]):
    """An awaitable run in a task group; ``await result()`` waits for its value."""

    def __init__(self, tg: anyio.abc.TaskGroup, awaitable: Awaitable[T]) -> None:
        self._done = anyio.Event()
        self._value: list[T] = []
        tg.start_soon(self._run, awaitable)

    async def _run(self, awaitable: Awaitable[T]) -> None:
        self._value.append(await awaitable)
        self._done.set()

    async def result(self) -> T:
        await self._done.wait()
        return self._value[0]


async def _wait_path(path: Path, limit: float = 10.0) -> None:
    """Wait until another process has created ``path`` (no event crosses processes)."""
    target = anyio.Path(path)
    with anyio.fail_after(limit):
        while not await target.exists():  # noqa: ASYNC110
            await anyio.sleep(0.02)


def _runs(directory: Path) -> dict[str, list[int]]:
    """Which pids ran each request id (faultapp's ``runs.log``)."""
    runs: dict[str, list[int]] = {}
    log = directory / "runs.log"
    for line in log.read_text().splitlines() if log.exists() else ():
        request_id, pid = line.split()
        runs.setdefault(request_id, []).append(int(pid))
    return runs


async def _request_loop(
    client: httpx.AsyncClient, prefix: str, out: list[httpx.Response], stop: anyio.Event
) -> None:
    """Request ``/?id=PREFIX-N`` one after another until ``stop``."""
    n = 0
    while not stop.is_set():
        out.append(await client.get(f"/?id={prefix}-{n}"))
        n += 1


async def test_request_in_progress_on_a_killed_worker_gets_502(
    deploy: Deploy, tmp_path: Path
) -> None:
    """502 within the heartbeat timeout; the other worker serves on throughout.

    A client loop keeps requesting from before the kill until after the lost
    request's 502: every one of those requests is answered 200, once.
    """
    deployment = deploy(app=None, server_args=BEAT)
    env = {"E2E_DIR": str(tmp_path)}
    # One slot: once it holds the doomed request, the doomed worker takes nothing else.
    doomed = deployment.add_worker(FAULT_APP, *BEAT, "--concurrency", "1", env=env)
    stream: list[httpx.Response] = []
    async with (
        httpx.AsyncClient(base_url=deployment.url, timeout=20) as client,
        anyio.create_task_group() as tg,
    ):
        held = _Background(tg, client.post("/hold?id=held", content=b"x"))
        await _wait_path(tmp_path / "started-held")
        survivor = deployment.add_worker(FAULT_APP, *BEAT, env=env)
        stop = anyio.Event()
        tg.start_soon(_request_loop, client, "s", stream, stop)
        killed_at = time.monotonic()
        doomed.signal(signal.SIGKILL)
        response = await held.result()
        failed_after = time.monotonic() - killed_at
        for n in range(5):  # and after it
            stream.append(await client.get(f"/?id=after-{n}"))
        stop.set()
    assert response.status_code == 502
    assert failed_after < 1.5 + 2.0  # heartbeat timeout + a check or two
    assert len(stream) > 5
    assert [r.status_code for r in stream] == [200] * len(stream)
    assert {r.text.split()[1] for r in stream} == {str(survivor.pid)}
    runs = _runs(tmp_path)
    assert runs.pop("held") == [doomed.pid]  # started once, never run again
    assert runs == {r.text.split()[0]: [survivor.pid] for r in stream}


async def _stop_holding_an_offer(worker: Process, rclient: aioredis.Redis) -> None:
    """SIGSTOP ``worker`` while it waits in XREADGROUP on the connect stream.

    Redis then delivers the next offer to it: the entry is the worker's,
    pending in the group, and the worker can neither start nor ack it. That
    is "taken but not started", held by a worker that is as good as dead.
    MONITOR shows the XREADGROUP as it is issued; the worker then blocks for
    a second, so the stop lands well inside that wait.
    """
    async with rclient.monitor() as monitor:
        with anyio.fail_after(10):
            while True:
                command = (await monitor.next_command())["command"]
                if command.startswith("XREADGROUP") and CONNECT in command:
                    break
        worker.signal(signal.SIGSTOP)


async def _assert_pending_for(rclient: aioredis.Redis, consumer: str) -> None:
    """Wait for the offer, then check that it is pending for ``consumer`` alone."""
    # XREAD (no group) from the start returns as soon as the stream holds the
    # entry, which stays there until a worker acks and deletes it.
    assert await rclient.xread({CONNECT: "0-0"}, count=1, block=5000)
    pending = await rclient.xpending_range(CONNECT, keys.WORKERS_GROUP, "-", "+", 10)
    assert [p["consumer"].decode() for p in pending] == [consumer], pending


async def test_a_request_taken_by_a_killed_worker_is_served_by_another(
    deploy: Deploy, tmp_path: Path, rclient: aioredis.Redis
) -> None:
    """Taken but not started: the entry is reclaimed and run once, by a live worker."""
    deployment = deploy(app=None, server_args=BEAT)
    env = {"E2E_DIR": str(tmp_path)}
    args = (*BEAT, "--reclaim-idle", "1")
    doomed = deployment.add_worker(FAULT_APP, *args, "--worker-id", "doomed", env=env)
    async with (
        httpx.AsyncClient(base_url=deployment.url, timeout=20) as client,
        anyio.create_task_group() as tg,
    ):
        await _stop_holding_an_offer(doomed, rclient)
        response = _Background(tg, client.get("/?id=queued"))
        await _assert_pending_for(rclient, "doomed")
        doomed.signal(signal.SIGKILL)
        doomed.wait(5)
        survivor = deployment.add_worker(FAULT_APP, *args, env=env)
        survivor.wait_for("reclaimed connection .* from a worker that died")
        result = await response.result()
    assert (result.status_code, result.text) == (200, f"queued {survivor.pid}")
    assert _runs(tmp_path) == {"queued": [survivor.pid]}
    assert await rclient.xlen(CONNECT) == 0  # acked and deleted: nothing left behind
    assert (await rclient.xpending(CONNECT, keys.WORKERS_GROUP))["pending"] == 0


async def test_a_stalled_worker_does_not_run_what_another_took_over(
    deploy: Deploy, tmp_path: Path, rclient: aioredis.Redis
) -> None:
    """A worker that stalls past ``reclaim_idle`` and wakes up skips what was reclaimed.

    From outside a stalled worker (SIGSTOP, a long GC or a blocked event
    loop) looks dead, so its entry is reclaimed and run elsewhere. When it
    wakes up it still has the entry Redis gave it: it must not run it too.
    """
    deployment = deploy(app=None, server_args=BEAT)
    env = {"E2E_DIR": str(tmp_path)}
    args = (*BEAT, "--reclaim-idle", "1")
    stalled = deployment.add_worker(FAULT_APP, *args, "--worker-id", "stalled", env=env)
    async with httpx.AsyncClient(base_url=deployment.url, timeout=20) as client:
        async with anyio.create_task_group() as tg:
            await _stop_holding_an_offer(stalled, rclient)
            response = _Background(tg, client.get("/?id=queued"))
            await _assert_pending_for(rclient, "stalled")
            other = deployment.add_worker(FAULT_APP, *args, env=env)
            result = await response.result()
        assert (result.status_code, result.text) == (200, f"queued {other.pid}")
        stalled.signal(signal.SIGCONT)
        stalled.wait_for("taken over by another worker while this one stalled")
        assert other.stop() == 0
        # It serves on.
        again = await client.get("/?id=later")
        assert (again.status_code, again.text) == (200, f"later {stalled.pid}")
    assert _runs(tmp_path) == {"queued": [other.pid], "later": [stalled.pid]}


async def test_websocket_on_a_killed_worker_closes_1011(deploy: Deploy, tmp_path: Path) -> None:
    deployment = _deployment(deploy, tmp_path)
    async with connect(deployment.ws_url + "/ws") as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        deployment.workers[0].signal(signal.SIGKILL)
        with anyio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011


async def test_a_killed_worker_is_one_log_line_not_one_per_connection(
    deploy: Deploy, tmp_path: Path
) -> None:
    """Operators read the protocol server's log: a worker with a thousand
    sockets dying is one event, said once with the count."""
    deployment = _deployment(deploy, tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(connect(deployment.ws_url + "/ws")) for _ in range(3)
        ]
        for ws in sockets:
            await ws.send("ping")
            assert await ws.recv() == "ping"
        deployment.workers[0].signal(signal.SIGKILL)
        for ws in sockets:
            with anyio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1011
    server = deployment.servers[0]
    server.wait_for(r"worker \S+ stopped beating; failed its 3 connection\(s\)")
    assert not [line for line in server.lines if " gone" in line and "WARNING" in line]


async def test_apps_of_a_killed_protocol_server_get_disconnect(
    deploy: Deploy, tmp_path: Path, redis_url: str, rclient: aioredis.Redis
) -> None:
    """Within the heartbeat timeout: disconnects, nothing in flight, no key of the server left."""
    deployment = deploy(app=None, server_args=(*BEAT, "--server-id", "doomed-ps"))
    env = {"E2E_DIR": str(tmp_path)}
    worker = deployment.add_worker(FAULT_APP, *BEAT, "--worker-id", "wk1", env=env)
    server = deployment.servers[0]

    async def doomed_request() -> None:
        # The client's connection dies with the server: that error is expected.
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(base_url=deployment.url, timeout=20) as client:
                await client.post("/hold?id=held", content=b"x")

    async def doomed_websocket(ready: anyio.Event) -> None:
        with contextlib.suppress(ConnectionClosed):
            async with connect(deployment.ws_url + "/ws?id=ws") as ws:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                ready.set()
                await ws.recv()

    async with anyio.create_task_group() as tg:
        tg.start_soon(doomed_request)
        ready = anyio.Event()
        tg.start_soon(doomed_websocket, ready)
        await ready.wait()
        await _wait_path(tmp_path / "started-held")
        # Its heartbeat and its inbox (workers answered it) name the server.
        assert len(await rclient.keys("*doomed-ps*")) == 2
        beat = keys.heartbeat("asgi", "wk", "wk1")
        with anyio.fail_after(5):
            while json.loads(await rclient.get(beat))["active"] < 2:  # noqa: ASYNC110
                await anyio.sleep(0.1)  # the next beat carries it
        killed_at = time.time()
        server.signal(signal.SIGKILL)
        http_seen = await _wait_file(tmp_path / "disconnect-held.json")
        ws_seen = await _wait_file(tmp_path / "ws-ws.json")
        tg.cancel_scope.cancel()  # the clients' connections died with the server
    assert float(http_seen["at"]) - killed_at < 1.5 + 2.0
    assert float(ws_seen["at"]) - killed_at < 1.5 + 2.0
    assert ws_seen["code"] == 1006
    # Nothing left in flight on the worker, as an operator sees it.
    with anyio.fail_after(5):
        while (status := await _status(redis_url))["processes"][0]["active"]:  # noqa: ASYNC110
            await anyio.sleep(0.1)  # another process's counter: no event to wait on
    assert [(p["role"], p["pid"]) for p in status["processes"]] == [("wk", worker.pid)]
    # And no key names the dead server: its heartbeat expired, its inbox was deleted.
    assert await rclient.keys("*doomed-ps*") == []
    assert time.time() - killed_at < 1.5 + 3.0


async def _status(redis_url: str) -> dict[str, Any]:
    """``channels-lite status --json``, run as an operator runs it."""
    argv = [sys.executable, "-m", "channels_lite", "status", "--json", "--redis-url", redis_url]
    result = await anyio.run_process(argv)
    document: dict[str, Any] = json.loads(result.stdout)
    return document
