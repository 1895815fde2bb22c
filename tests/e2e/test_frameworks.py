"""Framework apps run unchanged: the same file answers the same under uvicorn and our workers.

Why: the promise to users is "keep your app, change how you run it". For each
framework (Starlette, FastAPI, Django, Django Channels) one app file under
``tests/e2e/apps`` is served twice, by ``python -m uvicorn module:app`` (the
reference) and by a channels-lite deployment (one protocol server, two
workers), and the same requests and WebSocket exchanges go to both. Status,
body and headers must be equal (``date`` and ``server`` aside: they name the
moment and the server, not the app); a WebSocket's accepted subprotocol, every
reply and its close code must be equal too. Each case also states what it
expects, so both sides being equally broken cannot pass.

The Channels chat runs on our deployment only: two clients held by two
different worker processes (``--concurrency 1`` forces that) join one group and
each sees the other's message, so ``group_send`` crossed processes through our
channel layer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from channels_lite.client import AsyncPublisher

from ._procs import APPS_DIR, Process
from .conftest import Deploy, Deployment

pytestmark = pytest.mark.anyio

_UNCOMPARED_HEADERS = {"date", "server"}


class Uvicorn(Process):
    """``python -m uvicorn APP`` on a free port, ready at its "Uvicorn running on" line."""

    module = "uvicorn"

    def __init__(self, app: str, *, env: dict[str, str] | None = None) -> None:
        super().__init__(
            [app, "--host", "127.0.0.1", "--port", "0", "--app-dir", str(APPS_DIR)], env=env
        )
        self.url = ""

    def run(self) -> Uvicorn:
        match = self.start(r"Uvicorn running on (?P<url>http://\S+)")
        self.url = match["url"]
        return self


# ----------------------------------------------------------------------
# What is sent, and how the answers are compared


@dataclass(frozen=True)
class Req:
    """One HTTP request and the status the app is expected to answer."""

    method: str
    path: str
    status: int
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WsExchange:
    """One WebSocket session: connect, read ``greetings`` messages, then send each
    item and read one reply, until the server closes or the items run out."""

    path: str
    sends: tuple[str | bytes, ...] = ()
    subprotocols: tuple[str, ...] = ()
    greetings: int = 0


@dataclass(frozen=True)
class Case:
    app: str
    requests: tuple[Req, ...]
    exchanges: tuple[WsExchange, ...]
    #: Sanity checks on our transcripts: substrings each must contain.
    expect_in_ws: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    out = []
    for name, value in response.headers.multi_items():
        name = name.lower()
        if name in _UNCOMPARED_HEADERS:
            continue
        if name == "allow":
            # Starlette builds it from a set: its order follows the process's hash seed.
            value = ", ".join(sorted(value.split(", ")))
        out.append((name, value))
    return sorted(out)


async def _answer(client: httpx.AsyncClient, req: Req) -> dict[str, Any]:
    response = await client.request(req.method, req.path, **req.kwargs)
    return {
        "status": response.status_code,
        "body": response.content,
        "headers": _headers(response),
    }


async def _recv(ws: ClientConnection) -> tuple[Any, ...]:
    try:
        return ("message", await ws.recv())
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = exc.rcvd.reason if exc.rcvd is not None else None
        return ("closed", code, reason)


async def _transcript(base_ws_url: str, exchange: WsExchange) -> list[Any]:
    """Everything observable about one session, in order."""
    try:
        async with connect(
            base_ws_url + exchange.path,
            subprotocols=list(exchange.subprotocols) or None,  # type: ignore[arg-type]
            open_timeout=10,
        ) as ws:
            out: list[Any] = [("accepted", ws.subprotocol)]
            for _ in range(exchange.greetings):
                out.append(await _recv(ws))
            for item in exchange.sends:
                await ws.send(item)
                reply = await _recv(ws)
                out.append(reply)
                if reply[0] == "closed":
                    return out
            out.append(("client closes",))
            return out
    except InvalidStatus as exc:
        # Rejected before accept: the status is the app's; the error page is
        # the terminating server's, so it is not compared.
        return [("rejected", exc.response.status_code)]


async def _observe(http_url: str, case: Case) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    async with httpx.AsyncClient(base_url=http_url, timeout=15) as client:
        answers = [await _answer(client, req) for req in case.requests]
    ws_url = http_url.replace("http://", "ws://", 1)
    transcripts = [await _transcript(ws_url, exchange) for exchange in case.exchanges]
    return answers, transcripts


# ----------------------------------------------------------------------
# The apps

BIG = {"blob": "x" * 300_000, "n": 1}  # larger than one relay chunk (256 KiB)

STARLETTE = Case(
    app="starlette_app:app",
    requests=(
        Req("GET", "/json?b=2&a=1&a=3", 200),
        Req("HEAD", "/json", 200),
        Req("GET", "/stream?n=7", 200),
        Req("POST", "/echo", 200, {"json": {"name": "ünïcode", "values": [1, 2.5, None]}}),
        Req("POST", "/echo", 200, {"data": {"a": "1", "b": "two words", "c": ""}}),
        Req("POST", "/echo", 200, {"json": BIG}),
        Req("POST", "/echo", 415, {"content": b"\x00\x01raw", "headers": {"content-type": "x/y"}}),
        Req("GET", "/status/418", 418),
        Req("POST", "/status/201", 201),
        Req("GET", "/no/such/route", 404),
        Req("DELETE", "/json", 405),
    ),
    exchanges=(
        WsExchange("/ws", ("hello", b"\x01\x02\x03", "bye"), greetings=1),
        WsExchange("/ws", ("one", "two"), subprotocols=("chat.v2", "chat.v1"), greetings=1),
        WsExchange("/no/such/socket", ("hello",)),
    ),
    expect_in_ws=("hello from lifespan", "echo: hello", "4000", "chat.v2", "403"),
)

FASTAPI = Case(
    app="fastapi_app:app",
    requests=(
        Req("GET", "/items/1?q=fruit&limit=5", 200),
        Req("GET", "/items/2", 200),
        Req("GET", "/items/99", 404),
        Req("GET", "/items/not-an-int", 422),
        Req("GET", "/items/1?limit=many", 422),
        Req(
            "POST",
            "/items",
            201,
            {
                "json": {"name": "pear", "price": 2.5, "tags": ["green"]},
                "headers": {"x-token": "secret"},
            },
        ),
        Req("POST", "/items", 401, {"json": {"name": "pear", "price": 2.5}}),
        Req(
            "POST",
            "/items",
            422,
            {"json": {"name": "", "price": -1}, "headers": {"x-token": "secret"}},
        ),
        Req(
            "POST",
            "/items",
            422,
            {
                "content": b"{not json",
                "headers": {"x-token": "secret", "content-type": "application/json"},
            },
        ),
        Req("GET", "/sync?n=6", 200),
        Req("GET", "/openapi.json", 200),
    ),
    exchanges=(
        WsExchange("/ws/alice", ('{"a": 1}', "[1, 2, 3]", '"text"')),
        WsExchange("/nope", ("x",)),
    ),
    expect_in_ws=('"client":"alice"', "[1,2,3]", "403"),
)

DJANGO = Case(
    app="djproject.asgi:application",
    requests=(
        Req("GET", "/hello/", 200),
        Req("GET", "/hello", 301),  # APPEND_SLASH redirect by CommonMiddleware
        Req("GET", "/info/?x=1&x=2&y=", 200),
        Req("POST", "/echo/", 200, {"json": {"k": ["v", 1]}}),
        Req("POST", "/echo/", 200, {"data": {"a": "1", "b": "é"}}),
        Req("POST", "/echo/", 200, {"json": BIG}),
        Req(
            "POST",
            "/echo/",
            400,
            {"content": b"{bad", "headers": {"content-type": "application/json"}},
        ),
        Req("GET", "/echo/", 405),
        Req("GET", "/missing/", 404),
    ),
    exchanges=(),
    expect_in_ws=(),
    env={"DJANGO_SETTINGS_MODULE": "djproject.settings"},
)

CHANNELS = Case(
    app="djproject.channels_asgi:application",
    requests=(
        Req("GET", "/hello/", 200),
        Req("GET", "/info/?channels=yes", 200),
        Req("POST", "/echo/", 200, {"json": {"through": "ProtocolTypeRouter"}}),
        Req("GET", "/missing/", 404),
    ),
    exchanges=(
        WsExchange("/ws/echo/", ("hi", b"bytes", "again", "close")),
        WsExchange("/ws/echo/", ("open",)),
        WsExchange("/ws/no-route/", ("x",)),  # URLRouter raises before accept
    ),
    expect_in_ws=("echo: hi", "BYTES", "4001", "500"),
    env={"DJANGO_SETTINGS_MODULE": "djproject.settings"},
)


def _deployment(
    deploy: Deploy, redis_url: str, app: str, env: dict[str, str], *args: str
) -> Deployment:
    deployment = deploy(None)
    for _ in range(2):
        deployment.add_worker(app, *args, env={"REDIS_URL": redis_url, **env})
    return deployment


@pytest.fixture
def uvicorn_apps() -> Iterator[list[Uvicorn]]:
    started: list[Uvicorn] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    "case", [STARLETTE, FASTAPI, DJANGO, CHANNELS], ids=lambda c: c.app.split(":")[0]
)
async def test_same_answers_under_uvicorn_and_channels_lite(
    case: Case, deploy: Deploy, redis_url: str, uvicorn_apps: list[Uvicorn]
) -> None:
    # Each side's channel layer (Channels) gets its own key prefix on the shared Redis.
    reference = Uvicorn(
        case.app, env={"REDIS_URL": redis_url, "CHANNEL_LAYER_PREFIX": "uv", **case.env}
    )
    uvicorn_apps.append(reference)
    reference.run()
    ours = _deployment(deploy, redis_url, case.app, {"CHANNEL_LAYER_PREFIX": "cl", **case.env})

    expected_answers, expected_transcripts = await _observe(reference.url, case)
    answers, transcripts = await _observe(ours.url, case)

    assert [a["status"] for a in expected_answers] == [r.status for r in case.requests]
    for req, reference_answer, answer in zip(case.requests, expected_answers, answers, strict=True):
        assert answer == reference_answer, f"{req.method} {req.path}"
    for exchange, reference_transcript, transcript in zip(
        case.exchanges, expected_transcripts, transcripts, strict=True
    ):
        assert transcript == reference_transcript, f"WebSocket {exchange.path}"
    flat = repr(transcripts)
    for needle in case.expect_in_ws:
        assert needle in flat


async def test_channels_chat_group_across_worker_processes(deploy: Deploy, redis_url: str) -> None:
    # --concurrency 1: the first client's worker is full, so the second client
    # is necessarily held by the other worker process.
    ours = _deployment(
        deploy,
        redis_url,
        CHANNELS.app,
        {"CHANNEL_LAYER_PREFIX": "chat", **CHANNELS.env},
        "--concurrency",
        "1",
    )
    url = ours.ws_url + "/ws/chat/lobby/"
    async with connect(url, open_timeout=10) as alice, connect(url, open_timeout=10) as bob:
        alice_pid = json.loads(await alice.recv())["pid"]
        bob_pid = json.loads(await bob.recv())["pid"]
        assert alice_pid != bob_pid
        assert {alice_pid, bob_pid} == {worker.pid for worker in ours.workers}

        await alice.send("hello from alice")
        for ws, pid in ((alice, alice_pid), (bob, bob_pid)):
            got = json.loads(await ws.recv())
            assert got == {
                "type": "message",
                "text": "hello from alice",
                "from": alice_pid,
                "to": pid,
            }

        await bob.send("hi alice")
        for ws, pid in ((alice, alice_pid), (bob, bob_pid)):
            got = json.loads(await ws.recv())
            assert got == {"type": "message", "text": "hi alice", "from": bob_pid, "to": pid}


async def test_a_channels_consumer_joins_a_group_with_its_reply_channel_and_gets_pushes(
    deploy: Deploy, redis_url: str
) -> None:
    # The consumers' layer (CHANNEL_LAYERS) on the deployment's own prefix:
    # a push must reach the protocol servers' streams.
    ours = _deployment(
        deploy, redis_url, CHANNELS.app, {"CHANNEL_LAYER_PREFIX": "asgi", **CHANNELS.env}
    )
    async with connect(ours.ws_url + "/ws/push/lobby/", open_timeout=10) as ws:
        assert json.loads(await ws.recv())["type"] == "joined"
        async with AsyncPublisher.from_url(redis_url) as publisher:
            await publisher.group_send("pushed_lobby", {"type": "websocket.push", "text": "hi"})
        with anyio.fail_after(10):
            assert await ws.recv() == "hi"
