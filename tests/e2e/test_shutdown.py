"""Graceful shutdown: SIGTERM finishes what is in flight, takes nothing new, exits 0.

Why: deploys and scale-downs send SIGTERM to running processes all the time.
A worker must finish its in-flight requests (up to ``shutdown_timeout``) and
take no new ones; a protocol server must stop accepting, finish its in-flight
requests and close its WebSockets with 1012 (service restart). A rolling
restart of every worker under load must then lose nothing: every request a
client sends gets its 200, from an app that ran it exactly once.

The app is ``faultapp``: it logs each run per request id (``runs.log``), so
"exactly once" is counted, not assumed.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ._procs import Process
from .conftest import Deploy
from .test_faults import BEAT, FAULT_APP, _Background, _runs, _wait_file, _wait_path

pytestmark = pytest.mark.anyio


async def _stop(process: Process) -> int:
    """SIGTERM and wait (15 s at most) for the exit code, without blocking the event loop."""
    process.signal(signal.SIGTERM)
    return await anyio.to_thread.run_sync(process.wait, 15.0)


async def test_sigterm_on_a_worker_finishes_in_flight_and_takes_nothing_new(
    deploy: Deploy, tmp_path: Path
) -> None:
    deployment = deploy(app=None)
    env = {"E2E_DIR": str(tmp_path)}
    draining = deployment.add_worker(FAULT_APP, env=env)
    async with (
        httpx.AsyncClient(base_url=deployment.url, timeout=20) as client,
        anyio.create_task_group() as tg,
    ):
        in_flight = _Background(tg, client.get("/gate?id=in-flight"))
        await _wait_path(tmp_path / "started-in-flight")
        other = deployment.add_worker(FAULT_APP, env=env)
        exit_code = _Background(tg, _stop(draining))
        await anyio.to_thread.run_sync(draining.wait_for, r"draining 1 connection")
        # It takes nothing new: all of these go to the other worker.
        later = [await client.get(f"/?id=later-{n}") for n in range(5)]
        (tmp_path / "release-in-flight").touch()
        response = await in_flight.result()
        assert await exit_code.result() == 0, draining.log()
    assert (response.status_code, response.text) == (200, f"in-flight {draining.pid}")
    assert [(r.status_code, r.text.split()[1]) for r in later] == [(200, str(other.pid))] * 5
    assert _runs(tmp_path) == {
        "in-flight": [draining.pid],
        **{f"later-{n}": [other.pid] for n in range(5)},
    }


async def test_a_worker_cancels_what_outlives_its_shutdown_timeout(
    deploy: Deploy, tmp_path: Path
) -> None:
    """Past ``shutdown_timeout`` the app is cancelled, the worker exits 0, the client gets 502."""
    deployment = deploy(app=None, server_args=BEAT)
    env = {"E2E_DIR": str(tmp_path)}
    worker = deployment.add_worker(FAULT_APP, *BEAT, "--shutdown-timeout", "0.5", env=env)
    async with (
        httpx.AsyncClient(base_url=deployment.url, timeout=20) as client,
        anyio.create_task_group() as tg,
    ):
        held = _Background(tg, client.post("/hold?id=held", content=b"x"))
        await _wait_path(tmp_path / "started-held")
        assert await _stop(worker) == 0, worker.log()
        response = await held.result()
    assert response.status_code == 502
    assert "shutdown timeout: cancelling 1 connection(s)" in worker.log()
    assert _runs(tmp_path) == {"held": [worker.pid]}


async def test_sigterm_on_a_protocol_server(deploy: Deploy, tmp_path: Path) -> None:
    """It stops accepting, finishes in-flight requests, closes WebSockets with 1012, exits 0."""
    deployment = deploy(app=None)
    deployment.add_worker(FAULT_APP, env={"E2E_DIR": str(tmp_path)})
    (server,) = deployment.servers
    async with (
        httpx.AsyncClient(base_url=deployment.url, timeout=20) as client,
        connect(deployment.ws_url + "/ws?id=ws") as ws,
        anyio.create_task_group() as tg,
    ):
        await ws.send("hello")
        assert await ws.recv() == "hello"
        in_flight = _Background(tg, client.get("/gate?id=in-flight"))
        await _wait_path(tmp_path / "started-in-flight")
        exit_code = _Background(tg, _stop(server))
        with anyio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012
        assert (await _wait_file(tmp_path / "ws-ws.json"))["code"] == 1012  # the app saw it too
        # No longer accepting (a new client, so no pooled connection is reused).
        async with httpx.AsyncClient(base_url=deployment.url, timeout=5) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get("/?id=refused")
        (tmp_path / "release-in-flight").touch()
        response = await in_flight.result()
        assert await exit_code.result() == 0, server.log()
    assert (response.status_code, response.text.split()[0]) == (200, "in-flight")
    assert set(_runs(tmp_path)) == {"ws", "in-flight"}


async def test_rolling_restart_of_every_worker_under_load_loses_nothing(
    deploy: Deploy, tmp_path: Path
) -> None:
    """Each worker in turn gets SIGTERM and a replacement while clients keep requesting.

    "Loses nothing" precisely: every request the clients send, from before
    the first SIGTERM to after the last replacement serves, gets a 200 whose
    body names that request, and the app ran each exactly once. Requests are
    50 ms long, so the draining workers have some in flight when told to stop.
    """
    deployment = deploy(app=None)
    env = {"E2E_DIR": str(tmp_path)}
    originals = [deployment.add_worker(FAULT_APP, env=env) for _ in range(2)]
    responses: list[httpx.Response] = []
    sent: list[str] = []
    stop = anyio.Event()

    async def client_loop(client: httpx.AsyncClient, name: str) -> None:
        n = 0
        while not stop.is_set():
            request_id = f"{name}-{n}"
            sent.append(request_id)
            responses.append(await client.get(f"/sleep?ms=50&id={request_id}"))
            n += 1

    codes: list[int] = []
    async with (
        httpx.AsyncClient(base_url=deployment.url, timeout=20) as client,
        anyio.create_task_group() as tg,
    ):
        for name in ("a", "b", "c", "d"):
            tg.start_soon(client_loop, client, name)
        for worker in originals:
            exit_code = _Background(tg, _stop(worker))
            await anyio.to_thread.run_sync(lambda: deployment.add_worker(FAULT_APP, env=env))
            codes.append(await exit_code.result())
        await anyio.sleep(0.5)  # and on for a while with the replacements alone
        stop.set()
    assert codes == [0, 0], deployment.logs()
    assert len(responses) == len(sent) > 20
    assert [r.status_code for r in responses] == [200] * len(responses), deployment.logs()
    assert sorted(r.text.split()[0] for r in responses) == sorted(sent)
    runs = _runs(tmp_path)
    assert sorted(runs) == sorted(sent)
    assert all(len(pids) == 1 for pids in runs.values())
    drained = [
        int(m[1])
        for worker in originals
        if (m := re.search(r"draining (\d+) connection", worker.log()))
    ]
    assert sum(drained) >= 1, "no request was in flight at any SIGTERM: the test proved little"
