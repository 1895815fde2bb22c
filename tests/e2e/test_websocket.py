"""WebSocket through a whole deployment, as a client sees it.

One protocol server with the defaults (``--ws-max-size`` 1 MiB,
permessage-deflate agreed), one with a small ``--ws-max-size`` and one with
``--no-ws-per-message-deflate``, two workers running ``probe:app``
(tests/e2e/apps/probe.py), the ``websockets`` client.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ._shared import shared_deployment, wait_for_file
from .conftest import Deployment

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
SMALL_MAX = 64 * 1024  # --ws-max-size of the second protocol server
NO_DEFLATE = 2  # the third protocol server: --no-ws-per-message-deflate


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    with shared_deployment(
        tmp_path_factory.mktemp("ws"),
        "probe:app",
        servers=[(), ("--ws-max-size", str(SMALL_MAX)), ("--no-ws-per-message-deflate",)],
    ) as pair:
        yield pair


def ws_url(deployment: Deployment, path: str, server: int = 0) -> str:
    return deployment.urls[server].replace("http://", "ws://", 1) + path


def _connect(url: str, **kwargs: Any) -> connect:
    kwargs.setdefault("max_size", 4 * MiB)
    return connect(url, proxy=None, open_timeout=10, close_timeout=5, **kwargs)


async def _closed_by_server(ws: ClientConnection) -> ConnectionClosed:
    """Wait (bounded) for the server to close; return what the client saw."""
    with anyio.fail_after(5):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            return closed


# ----------------------------------------------------------------------
# Handshake


async def test_accept_picks_the_apps_subprotocol_and_sends_its_headers(
    deployment: Deployment,
) -> None:
    async with _connect(ws_url(deployment, "/ws/echo"), subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"  # the app's choice, not the first offered
        assert ws.response is not None
        assert ws.response.headers["x-accepted-by"] == "probe"
        await ws.send("hello")
        assert await ws.recv() == "hello"


async def test_reject_before_accept_is_a_403(deployment: Deployment) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with _connect(ws_url(deployment, "/ws/reject")):
            pass
    assert info.value.response.status_code == 403


async def test_denial_response_reaches_the_client(deployment: Deployment) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with _connect(ws_url(deployment, "/ws/deny")):
            pass
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b"no entry without a token\n"


# ----------------------------------------------------------------------
# Messages


async def test_text_and_binary_messages_echo(deployment: Deployment) -> None:
    messages: list[str | bytes] = [
        "plain",
        "",
        "ünïcødé ✓ 🎉",
        b"",
        bytes(range(256)),
        os.urandom(100_000),
        "x" * 200_000,
    ]
    async with _connect(ws_url(deployment, "/ws/echo")) as ws:
        for message in messages:
            await ws.send(message)
            echoed = await ws.recv()
            assert type(echoed) is type(message)
            assert echoed == message


@pytest.mark.parametrize("kind", [bytes, str])
async def test_message_of_the_configured_max_size_passes_both_ways(
    deployment: Deployment, kind: type
) -> None:
    # The default --ws-max-size, 1 MiB: four times a relay chunk, so the
    # message crosses Redis in parts, both ways. No compression, so the
    # frame is exactly the message.
    data = os.urandom(MiB) if kind is bytes else "é" * (MiB // 2)
    async with _connect(ws_url(deployment, "/ws/echo"), compression=None) as ws:
        for _ in range(3):
            await ws.send(data)
            with anyio.fail_after(10):
                echoed = await ws.recv()
            assert echoed == data


async def test_message_over_the_max_size_is_refused_with_1009(deployment: Deployment) -> None:
    url = ws_url(deployment, "/ws/echo", server=1)
    async with _connect(url, compression=None) as ws:
        at_limit = os.urandom(SMALL_MAX)
        await ws.send(at_limit)
        assert await ws.recv() == at_limit
        await ws.send(os.urandom(SMALL_MAX + 1))
        closed = await _closed_by_server(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1009


async def test_each_connection_gets_its_echoes_in_order_under_load(
    deployment: Deployment,
) -> None:
    connections, count = 20, 500
    received: dict[int, list[str]] = {}

    async def one(index: int) -> None:
        async with _connect(ws_url(deployment, "/ws/echo")) as ws:

            async def sender() -> None:
                for n in range(count):
                    await ws.send(f"{index}:{n}")

            got: list[str] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                while len(got) < count:
                    message = await ws.recv()
                    assert isinstance(message, str)
                    got.append(message)
            received[index] = got

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for index in range(connections):
                tg.start_soon(one, index)
    for index in range(connections):
        assert received[index] == [f"{index}:{n}" for n in range(count)]


async def test_app_message_over_the_max_size_closes_with_1009(
    deployment: Deployment, e2e_dir: Path
) -> None:
    token = uuid.uuid4().hex
    url = ws_url(deployment, f"/ws/echo?id={token}", server=1)
    async with _connect(url, compression=None) as ws:
        await ws.send(f"send {SMALL_MAX}")
        assert await ws.recv() == b"s" * SMALL_MAX
        await ws.send(f"send {SMALL_MAX + 1}")
        closed = await _closed_by_server(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1009
    record = await wait_for_file(e2e_dir / f"ws-{token}.json")
    assert record["code"] == 1009


# ----------------------------------------------------------------------
# Compression


@pytest.mark.parametrize(
    ("server", "agreed"), [(0, True), (NO_DEFLATE, False)], ids=["default", "off"]
)
async def test_permessage_deflate_is_agreed_unless_switched_off(
    deployment: Deployment, server: int, agreed: bool
) -> None:
    # The websockets client offers permessage-deflate, as browsers do.
    async with _connect(ws_url(deployment, "/ws/echo", server=server)) as ws:
        assert ws.response is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ("permessage-deflate" in extensions) is agreed, extensions
        # Either way, messages flow both ways: compressible ones, an app-made
        # one, and one too small to be worth compressing.
        for message in ["x" * 100_000, "a", "ünïcødé " * 1000]:
            await ws.send(message)
            assert await ws.recv() == message
        await ws.send("send 50000")
        assert await ws.recv() == b"s" * 50_000


# ----------------------------------------------------------------------
# Closing


async def test_client_close_code_and_reason_reach_the_app(
    deployment: Deployment, e2e_dir: Path
) -> None:
    token = uuid.uuid4().hex
    async with _connect(ws_url(deployment, f"/ws/echo?id={token}")) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        await ws.close(4001, "bye")
        left = time.time()
    record = await wait_for_file(e2e_dir / f"ws-{token}.json")
    assert (record["code"], record["reason"]) == (4001, "bye")
    assert record["at"] - left < 1.0


async def test_app_close_code_and_reason_reach_the_client(
    deployment: Deployment, e2e_dir: Path
) -> None:
    token = uuid.uuid4().hex
    async with _connect(ws_url(deployment, f"/ws/echo?id={token}")) as ws:
        await ws.send("close 4002 done")
        closed = await _closed_by_server(ws)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4002, "done")
    # After its own close the app's receive() gives websocket.disconnect (as
    # under uvicorn) instead of hanging: it recorded it and returned.
    record = await wait_for_file(e2e_dir / f"ws-{token}.json")
    assert record["code"] == 4002


async def test_abrupt_disconnect_reaches_the_app_within_a_second(
    deployment: Deployment, e2e_dir: Path
) -> None:
    token = uuid.uuid4().hex
    async with _connect(ws_url(deployment, f"/ws/echo?id={token}")) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        ws.transport.abort()  # no close frame: the TCP connection just goes
        left = time.time()
    record = await wait_for_file(e2e_dir / f"ws-{token}.json")
    assert record["at"] - left < 1.0
    assert record["code"] in (1005, 1006)


# ----------------------------------------------------------------------
# Failures


async def test_app_raising_after_accept_closes_with_1011(deployment: Deployment) -> None:
    async with _connect(ws_url(deployment, "/ws/raise-after-accept")) as ws:
        closed = await _closed_by_server(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1011


async def test_app_raising_before_accept_is_a_500(deployment: Deployment) -> None:
    # uvicorn advertises websocket.http.response, so the worker answers the
    # handshake with a plain 500, as uvicorn itself does for a local app.
    with pytest.raises(InvalidStatus) as info:
        async with _connect(ws_url(deployment, "/ws/raise-before-accept")):
            pass
    assert info.value.response.status_code == 500
    # and the workers serve on
    async with _connect(ws_url(deployment, "/ws/echo")) as ws:
        await ws.send("still here")
        assert await ws.recv() == "still here"
