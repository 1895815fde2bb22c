"""Processes that die: what clients and apps see (heartbeats, 502, 1011, disconnect).

Heartbeats are shortened (0.3 s beat, 1.5 s timeout) so the tests are quick;
the defaults (1 s, 5 s) behave the same, only slower.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import Deploy, Deployment

pytestmark = pytest.mark.anyio

BEAT = ("--heartbeat-interval", "0.3", "--heartbeat-timeout", "1.5")


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


async def test_request_in_progress_on_a_killed_worker_gets_502(
    deploy: Deploy, tmp_path: Path
) -> None:
    deployment = _deployment(deploy, tmp_path)
    doomed = deployment.workers[0]
    async with httpx.AsyncClient(base_url=deployment.url, timeout=20) as client:
        async with anyio.create_task_group() as tg:
            result: list[httpx.Response] = []

            async def request() -> None:
                result.append(await client.post("/wait-disconnect?id=a", content=b"x"))

            tg.start_soon(request)
            await _wait_file(tmp_path / "disconnect-a-started.json")
            # A second worker to serve what follows, then the first dies.
            deployment.add_worker("probe:app", *BEAT, env={"E2E_DIR": str(tmp_path)})
            killed_at = time.monotonic()
            doomed.signal(signal.SIGKILL)
        assert result[0].status_code == 502
        assert time.monotonic() - killed_at < 1.5 + 2.0  # heartbeat timeout + a check or two
        # The surviving worker serves on.
        assert (await client.get("/")).status_code == 200


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


async def test_apps_of_a_killed_protocol_server_get_disconnect(
    deploy: Deploy, tmp_path: Path
) -> None:
    deployment = _deployment(deploy, tmp_path)
    server = deployment.servers[0]

    async def doomed_request() -> None:
        # The client's connection dies with the server: that error is expected.
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(base_url=deployment.url, timeout=20) as client:
                await client.post("/wait-disconnect?id=b", content=b"x")

    async with anyio.create_task_group() as tg:
        tg.start_soon(doomed_request)
        await _wait_file(tmp_path / "disconnect-b-started.json")
        killed_at = time.time()
        server.signal(signal.SIGKILL)
        seen = await _wait_file(tmp_path / "disconnect-b.json")
        tg.cancel_scope.cancel()  # the client's connection died with the server
    assert float(seen["at"]) - killed_at < 1.5 + 2.0
