"""Background tasks in real worker processes: crashes, WebSockets, HTTP alongside.

Tasks are enqueued with a raw Redis client (``XADD`` of a ``wire.Task``
entry), as any publisher in any language would. The handlers live in
``apps/tasks_app.py`` and report through files in the test's directory.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from channels_lite import keys, wire

from .conftest import Deploy

pytestmark = pytest.mark.anyio

TASKS = ("--tasks", "tasks_app:tasks")
READY = r"consuming task channels"


async def _enqueue(redis_url: str, channel: str, message: dict[str, Any]) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.xadd(
            keys.task_stream("asgi", channel), wire.encode(wire.Task(channel, message))
        )
    finally:
        await client.aclose()


async def _records(path: Path, count: int, limit: float = 15.0) -> list[dict[str, Any]]:
    """The first ``count`` JSON lines of ``path`` (written by another process)."""
    target = anyio.Path(path)
    with anyio.fail_after(limit):
        while True:
            if await target.exists():
                lines = (await target.read_text()).splitlines()
                if len(lines) >= count:
                    return [json.loads(line) for line in lines]
            await anyio.sleep(0.05)


async def _settled(redis_url: str, channel: str, limit: float = 10.0) -> None:
    """Wait until the task stream is empty and nothing is pending (acked, deleted)."""
    client = aioredis.Redis.from_url(redis_url)
    stream = keys.task_stream("asgi", channel)
    try:
        with anyio.fail_after(limit):
            while True:
                pending = await client.xpending(stream, keys.TASKS_GROUP)
                if pending["pending"] == 0 and await client.xlen(stream) == 0:
                    return
                await anyio.sleep(0.05)
    finally:
        await client.aclose()


async def test_task_of_a_killed_worker_is_reclaimed_and_run_by_another(
    deploy: Deploy, redis_url: str, tmp_path: Path
) -> None:
    deployment = deploy(app=None, servers=0)
    args = (*TASKS, "--reclaim-idle", "1")
    env = {"E2E_DIR": str(tmp_path)}
    doomed = deployment.add_worker("echo:app", *args, env=env)
    doomed.wait_for(READY)
    await _enqueue(redis_url, "hold", {"type": "hold", "id": "a"})
    [started] = await _records(tmp_path / "hold.jsonl", 1)
    assert started == {"event": "start", "attempts": 0, "id": "a", "pid": doomed.pid}

    doomed.signal(signal.SIGKILL)  # mid-run: no ack, no goodbye
    doomed.wait(10)
    killed_at = time.monotonic()
    survivor = deployment.add_worker("echo:app", *args, env=env)

    records = await _records(tmp_path / "hold.jsonl", 3)
    assert time.monotonic() - killed_at >= 1  # not before it was idle for reclaim_idle
    assert [r["event"] for r in records] == ["start", "start", "done"]
    assert records[1] == {"event": "start", "attempts": 1, "id": "a", "pid": survivor.pid}
    await _settled(redis_url, "hold")
    survivor.wait_for(r"reclaimed entry .* from a worker that stopped \(delivery 2\)")


async def test_a_task_group_sends_to_websocket_clients(deploy: Deploy, redis_url: str) -> None:
    deployment = deploy("layer_app:app", workers=1, worker_args=TASKS)
    deployment.workers[0].wait_for(READY)
    async with connect(deployment.ws_url + "/chat") as ws:
        with anyio.fail_after(10):
            assert "joined" in json.loads(await ws.recv())
        await _enqueue(redis_url, "broadcast", {"type": "broadcast", "text": "thumbnail ready"})
        with anyio.fail_after(10):
            assert json.loads(await ws.recv())["text"] == "thumbnail ready"
    await _settled(redis_url, "broadcast")


async def test_tasks_and_http_run_in_one_worker_at_once(
    deploy: Deploy, redis_url: str, tmp_path: Path
) -> None:
    deployment = deploy(app=None)
    worker = deployment.add_worker("layer_app:app", *TASKS, env={"E2E_DIR": str(tmp_path)})
    worker.wait_for(READY)
    await _enqueue(redis_url, "hold", {"type": "hold", "id": "b"})
    [started] = await _records(tmp_path / "hold.jsonl", 1)
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        # The task is still running (it waits for "release"), and HTTP is served.
        responses = [await client.get("/whoami") for _ in range(3)]
    assert all(r.status_code == 200 and r.json()["pid"] == worker.pid for r in responses)
    assert started["pid"] == worker.pid
    assert len(await _records(tmp_path / "hold.jsonl", 1)) == 1  # not done yet

    (tmp_path / "release").touch()
    records = await _records(tmp_path / "hold.jsonl", 2)
    assert records[1]["event"] == "done"
    await _settled(redis_url, "hold")
