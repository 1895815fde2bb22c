"""Worker processes: lifespan, start-up failures, concurrency, pull-based balancing, affinity.

Why: the worker is where a user's app lives. Its promises are the ones uvicorn
makes (lifespan start-up before serving, shutdown on SIGTERM, ``state`` from
start-up in every request, a failing start-up or a bad app string is a clear
error and a non-zero exit) plus the ones of this runtime: ``--concurrency N``
runs at most N connections at once, a full worker takes nothing (so another
worker, or the same one later, serves the rest), and a WebSocket stays on the
worker that accepted it for its whole life.

Requests that must stay in flight use ``workerapp``'s ``/gate/NAME``: the app
reports "NAME PID" on the Redis list ``started`` and blocks until the test
pushes onto ``gate:NAME``. So the tests see exactly which worker runs what and
when, with no sleeps. "Nothing more started" is shown by the entry that waits
in the shared connect stream, untaken, for a bounded moment while a free worker
would take it at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from channels_lite import keys

from ._procs import APPS_DIR, Process
from .conftest import Deploy, Deployment

pytestmark = pytest.mark.anyio

APP = "workerapp:app"
#: How long a full deployment must leave a waiting connection untaken. A free
#: worker takes an offer within milliseconds, so this is a generous margin.
UNTAKEN_FOR = 0.5


@pytest.fixture
async def rclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _workers(
    deploy: Deploy, redis_url: str, count: int, *args: str, markers: Path | None = None
) -> Deployment:
    deployment = deploy(None)
    env = {"REDIS_URL": redis_url}
    if markers is not None:
        env["MARKER_DIR"] = str(markers)
    for _ in range(count):
        deployment.add_worker(APP, *args, env=env)
    return deployment


class Gates:
    """Gated requests in flight against one deployment."""

    def __init__(self, client: httpx.AsyncClient, rclient: aioredis.Redis) -> None:
        self.client = client
        self.redis = rclient
        self.responses: dict[str, dict[str, Any]] = {}

    async def request(self, name: str) -> None:
        response = await self.client.get(f"/gate/{name}")
        assert response.status_code == 200, response.text
        self.responses[name] = response.json()

    async def next_started(self) -> tuple[str, int]:
        """The next request the app started: (name, pid)."""
        popped = await self.redis.blpop(["started"], timeout=10)
        assert popped is not None, "no gated request started in time"
        value = popped[1]
        name, pid = (value.decode() if isinstance(value, bytes) else value).split()
        return name, int(pid)

    async def assert_none_starts(self) -> None:
        """An offer waits in the connect stream, untaken, and nothing more starts."""
        stream = keys.connect_stream("asgi")
        # Taken entries are acked and deleted at once: XREAD from the start
        # waits for the offer that nobody takes (returns at once if it is there).
        assert await self.redis.xread({stream: "0-0"}, count=1, block=5000)
        assert await self.redis.blpop(["started"], timeout=UNTAKEN_FOR) is None
        assert await self.redis.xlen(stream) == 1

    async def release(self, name: str) -> None:
        await self.redis.lpush(f"gate:{name}", "go")


# ----------------------------------------------------------------------
# Lifespan


async def test_lifespan_runs_in_every_worker_and_its_state_reaches_requests(
    deploy: Deploy, redis_url: str, rclient: aioredis.Redis, tmp_path: Path
) -> None:
    # --concurrency 1: two requests in flight at once are on two workers.
    deployment = _workers(deploy, redis_url, 2, "--concurrency", "1", markers=tmp_path)
    pids = {worker.pid for worker in deployment.workers}
    assert _markers(tmp_path) == {f"startup-{pid}" for pid in pids}

    async with httpx.AsyncClient(base_url=deployment.url, timeout=15) as client:
        gates = Gates(client, rclient)
        async with anyio.create_task_group() as tg:
            tg.start_soon(gates.request, "a")
            tg.start_soon(gates.request, "b")
            started = dict([await gates.next_started(), await gates.next_started()])
            await gates.release("a")
            await gates.release("b")
        assert set(started.values()) == pids
        for name in ("a", "b"):
            response = gates.responses[name]
            assert response["pid"] == started[name]
            assert response["state_pid"] == response["pid"]  # start-up's state, this process
        # And plain requests, whichever worker takes them.
        for _ in range(4):
            info = (await client.get("/info")).json()
            assert info["state_pid"] == info["pid"] in pids

    assert not any(name.startswith("shutdown-") for name in _markers(tmp_path))
    for worker in deployment.workers:
        assert worker.stop() == 0, worker.log()  # SIGTERM: a clean stop
        assert f"shutdown-{worker.pid}" in _markers(tmp_path), worker.log()


def _markers(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


@pytest.mark.parametrize(
    ("app", "args", "error"),
    [
        (
            "workerapp:failing_startup",
            (),
            "error: lifespan start-up failed: database unreachable",
        ),
        (
            "workerapp:raising_startup",
            ("--lifespan", "on"),
            "error: lifespan start-up did not complete: RuntimeError('start-up exploded')",
        ),
    ],
    ids=["startup-failed", "raises-under-lifespan-on"],
)
def test_failing_startup_exits_non_zero_with_a_clear_error(
    redis_url: str, app: str, args: tuple[str, ...], error: str
) -> None:
    worker = Process(["worker", app, "--app-dir", str(APPS_DIR), "--redis-url", redis_url, *args])
    try:
        worker.start(r"^error: ")
        assert worker.wait(15) == 1
    finally:
        worker.stop()
    assert worker.lines[-1] == error, worker.log()
    assert not any("serving" in line for line in worker.lines)
    # The only traceback allowed is the app's own exception (as uvicorn logs it).
    tracebacks = [line for line in worker.lines if line.startswith("Traceback")]
    assert len(tracebacks) == (1 if "raising" in app else 0), worker.log()
    assert "ExceptionGroup" not in worker.log()


@pytest.mark.parametrize(
    ("app", "error"),
    [
        ("nosuchmodule:app", "error: could not import module 'nosuchmodule'"),
        ("workerapp:nosuch", "error: attribute 'nosuch' not found in module 'workerapp'"),
    ],
)
def test_bad_app_string_exits_with_one_error_line(redis_url: str, app: str, error: str) -> None:
    worker = Process(["worker", app, "--app-dir", str(APPS_DIR), "--redis-url", redis_url])
    try:
        worker.start(r"^error: ")
        assert worker.wait(15) in (1, 2)
    finally:
        worker.stop()
    assert worker.lines == [error]


# ----------------------------------------------------------------------
# Concurrency and balancing


async def test_concurrency_limit_runs_at_most_n_at_once(
    deploy: Deploy, redis_url: str, rclient: aioredis.Redis
) -> None:
    deployment = _workers(deploy, redis_url, 1, "--concurrency", "2")
    (worker,) = deployment.workers
    async with httpx.AsyncClient(base_url=deployment.url, timeout=15) as client:
        gates = Gates(client, rclient)
        async with anyio.create_task_group() as tg:
            for name in ("r1", "r2", "r3"):
                tg.start_soon(gates.request, name)
            first = [await gates.next_started(), await gates.next_started()]
            await gates.assert_none_starts()  # the third waits: the worker is full
            await gates.release(first[0][0])
            third = await gates.next_started()
            assert {first[0][0], first[1][0], third[0]} == {"r1", "r2", "r3"}
            await gates.release(first[1][0])
            await gates.release(third[0])
    assert {r["pid"] for r in gates.responses.values()} == {worker.pid}
    assert max(r["max_concurrent"] for r in gates.responses.values()) == 2


async def test_a_busy_worker_takes_no_new_connection(
    deploy: Deploy, redis_url: str, rclient: aioredis.Redis
) -> None:
    deployment = _workers(deploy, redis_url, 2, "--concurrency", "1")
    pids = {worker.pid for worker in deployment.workers}
    async with httpx.AsyncClient(base_url=deployment.url, timeout=15) as client:
        gates = Gates(client, rclient)
        async with anyio.create_task_group() as tg:
            tg.start_soon(gates.request, "a")
            tg.start_soon(gates.request, "b")
            started = dict([await gates.next_started(), await gates.next_started()])
            assert set(started.values()) == pids  # two requests, two workers

            tg.start_soon(gates.request, "c")
            await gates.assert_none_starts()  # both full: neither takes it
            await gates.release("a")
            name, pid = await gates.next_started()
            # Only a's worker has a free slot, so it is the one that takes c.
            assert (name, pid) == ("c", started["a"])
            await gates.release("b")
            await gates.release("c")
    assert {name: r["pid"] for name, r in gates.responses.items()} == {
        "a": started["a"],
        "b": started["b"],
        "c": started["a"],
    }
    assert all(r["max_concurrent"] == 1 for r in gates.responses.values())


async def test_a_websocket_stays_on_its_worker(deploy: Deploy, redis_url: str) -> None:
    # Three sessions on two workers of two slots each: both workers hold one.
    deployment = _workers(deploy, redis_url, 2, "--concurrency", "2")
    url = deployment.ws_url + "/ws"
    async with (
        connect(url, open_timeout=10) as s1,
        connect(url, open_timeout=10) as s2,
        connect(url, open_timeout=10) as s3,
    ):
        sessions = [s1, s2, s3]
        seen: list[set[int]] = [set(), set(), set()]
        for round_ in range(40):  # interleaved, so the workers all stay busy
            for index, ws in enumerate(sessions):
                await ws.send(f"{index}-{round_}")
            for index, ws in enumerate(sessions):
                reply = json.loads(await ws.recv())
                assert reply["text"] == f"{index}-{round_}"
                seen[index].add(reply["pid"])
    assert all(len(pids) == 1 for pids in seen), seen
    assert set().union(*seen) == {worker.pid for worker in deployment.workers}
