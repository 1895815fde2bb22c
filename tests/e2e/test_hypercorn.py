"""The gateway under hypercorn: HTTP/2 end to end, trailers, WebSocket.

hypercorn serves ``protocol_server.asgi:app`` as a user would start it
(``python -m hypercorn``, settings from ``CHANNELS_LITE_*``), on a TLS bind
(HTTP/2 by ALPN) and a cleartext one (HTTP/1.1, h2c with prior knowledge,
WebSocket). Two workers run ``probe:app``; one uvicorn protocol server
(``channels-lite protocol-server``) shares their Redis, for what differs
between the two hosts. Clients: httpx with ``http2=True``, the ``h2``
library itself where trailers must be seen, the ``websockets`` client.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests._redis import TlsCerts

from ._procs import Process
from ._shared import log_marks, logs_since, own_logs_on_failure, shared_deployment
from .apps.probe import pattern
from .conftest import Deployment

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


class Hypercorn(Process):
    """``python -m hypercorn``; stopped as a user would stop it.

    hypercorn's parent process supervises a spawned worker process that
    leaves SIGTERM at its default (it waits for the parent's shutdown event
    instead), so SIGTERM goes to the parent alone: sent to the whole group,
    it would kill the worker before it drained.
    """

    module = "hypercorn"

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig in (signal.SIGTERM, signal.SIGINT):
            os.kill(self.proc.pid, sig)
        else:
            super().signal(sig)


@dataclass
class Site:
    deployment: Deployment
    hypercorn: Hypercorn
    https: str  # TLS bind: HTTP/2 by ALPN
    http: str  # cleartext bind: HTTP/1.1, h2c, WebSocket
    ca: Path  # the test CA, which signed hypercorn's certificate
    e2e_dir: Path  # the probe app's scratch directory

    def ssl(self, *alpn: str) -> ssl.SSLContext:
        """A client context trusting the test CA (one per use: clients set ALPN on it)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    @property
    def uvicorn(self) -> str:
        return self.deployment.url

    @property
    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.deployment.workers}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsCerts) -> Iterator[Site]:
    with shared_deployment(tmp_path_factory.mktemp("hypercorn"), "probe:app") as (
        deployment,
        e2e_dir,
    ):
        hypercorn = Hypercorn(
            [
                *("--bind", "127.0.0.1:0", "--insecure-bind", "127.0.0.1:0"),
                *("--certfile", str(tls_certs.cert), "--keyfile", str(tls_certs.key)),
                *("--graceful-timeout", "5"),
                "protocol_server.asgi:app",
            ],
            env={"CHANNELS_LITE_REDIS_URL": deployment.redis_url},
        )
        # Stopped (SIGTERM, drain, exit 0 checked) with the rest of the deployment.
        deployment.servers.append(hypercorn)
        # Printed once the gateway's lifespan start-up (Redis) has completed.
        hypercorn.start(r"Running on http://")
        ports: dict[str, str] = {}
        for scheme in ("https", "http"):
            match = hypercorn.wait_for(rf"Running on {scheme}://127\.0\.0\.1:(?P<port>\d+)")
            ports[scheme] = match["port"]
        deployment.urls.append(f"https://127.0.0.1:{ports['https']}")
        yield Site(
            deployment,
            hypercorn,
            https=f"https://127.0.0.1:{ports['https']}",
            http=f"http://127.0.0.1:{ports['http']}",
            ca=tls_certs.ca,
            e2e_dir=e2e_dir,
        )


@pytest.fixture
def deployment(site: Site, request: pytest.FixtureRequest) -> Iterator[Site]:
    with own_logs_on_failure(site.deployment, request):
        yield site


def _h2_client(site: Site, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=site.https, http2=True, verify=site.ssl(), timeout=10, **kwargs
    )


# ----------------------------------------------------------------------
# HTTP/2


async def test_an_http2_request_is_answered_by_a_worker(deployment: Site) -> None:
    async with _h2_client(deployment) as client:
        response = await client.get("/hello", params={"q": "1"})
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    info = response.json()
    assert info["http_version"] == "2"
    assert info["scheme"] == "https"
    assert info["path"] == "/hello"
    assert info["query_string"] == "q=1"
    assert info["worker_pid"] in deployment.worker_pids
    # hypercorn advertises trailers for HTTP/2 and it crosses to the worker;
    # push and early hints are hypercorn's alone and do not.
    assert "http.response.trailers" in info["extensions"]
    assert "http.response.push" not in info["extensions"]
    assert "http.response.early_hint" not in info["extensions"]


async def test_h2c_with_prior_knowledge(deployment: Site) -> None:
    async with httpx.AsyncClient(base_url=deployment.http, http1=False, http2=True) as client:
        response = await client.post("/h2c", content=b"x" * 1000)
    assert response.http_version == "HTTP/2"
    info = response.json()
    assert info["http_version"] == "2"
    assert info["scheme"] == "http"
    assert info["body_size"] == 1000


async def test_http2_streamed_upload_and_download(deployment: Site) -> None:
    chunk = pattern(64 * 1024, seed=3)
    count = 48  # 3 MiB: several flow-control windows each way

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk
            await anyio.lowlevel.checkpoint()

    async with _h2_client(deployment) as client:
        response = await client.post("/upload", content=upload())
        assert response.http_version == "HTTP/2"
        info = response.json()
        assert info["body_size"] == len(chunk) * count
        assert info["body_sha256"] == hashlib.sha256(chunk * count).hexdigest()

        received = bytearray()
        async with client.stream("GET", "/big", params={"mib": 3}) as stream:
            assert stream.http_version == "HTTP/2"
            pieces = 0
            async for piece in stream.aiter_raw():
                received += piece
                pieces += 1
        assert bytes(received) == pattern(3 * MiB)
        assert pieces > 1


async def test_concurrent_streams_share_one_connection(deployment: Site) -> None:
    """Responses in flight at once on one HTTP/2 connection, each through a worker.

    The raw ``h2`` client, not httpx: httpcore 1.0.9 can leave a stream's
    already-received data unread while another stream's reader holds its
    read lock waiting on the socket, which stalls exactly this pattern.
    """
    ids = [uuid.uuid4().hex for _ in range(8)]
    requests = [(f"/sse?id={request_id}", []) for request_id in ids]
    requests += [(f"/describe/{i}", []) for i in range(4)]
    ended_before_release: list[int] = []

    def release(ended: int) -> None:
        # Every stream has its first bytes: all are open at once.
        ended_before_release.append(ended)
        for request_id in ids:
            (deployment.e2e_dir / f"release-{request_id}").touch()

    responses = await h2_exchange(deployment, requests, when_all_started=release)

    assert ended_before_release[0] <= 4  # at most the describes had finished
    for response in responses[: len(ids)]:
        assert response.headers[":status"] == "200"
        assert response.body == b"data: one\n\ndata: two\n\n"
    infos = [json.loads(response.body) for response in responses[len(ids) :]]
    assert all(info["http_version"] == "2" for info in infos)
    assert len({tuple(info["client"]) for info in infos}) == 1  # one TCP connection
    assert {info["worker_pid"] for info in infos} <= deployment.worker_pids


# ----------------------------------------------------------------------
# Trailers


@dataclass
class H2Response:
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[str, str] | None = None


async def h2_exchange(
    site: Site,
    requests: list[tuple[str, list[tuple[str, str]]]],
    *,
    when_all_started: Callable[[int], None] | None = None,
) -> list[H2Response]:
    """GETs on one HTTP/2 connection (TLS, ALPN h2) with the ``h2`` library.

    All streams are opened at once. ``when_all_started(ended)`` is called
    once every stream has received some data, with how many had ended.
    Returns each stream's headers, body and trailers, in request order.
    """
    port = int(site.https.rsplit(":", 1)[1])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    responses: dict[int, H2Response] = {}
    started: set[int] = set()
    ended: set[int] = set()
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(
            "127.0.0.1", port, tls=True, ssl_context=site.ssl("h2"), tls_hostname="127.0.0.1"
        ) as stream:
            conn.initiate_connection()
            for path, headers in requests:
                stream_id = conn.get_next_available_stream_id()
                responses[stream_id] = H2Response()
                conn.send_headers(
                    stream_id,
                    [
                        (":method", "GET"),
                        (":scheme", "https"),
                        (":authority", f"127.0.0.1:{port}"),
                        (":path", path),
                        *headers,
                    ],
                    end_stream=True,
                )
            await stream.send(conn.data_to_send())
            while len(ended) < len(responses):
                for event in conn.receive_data(await stream.receive()):
                    if isinstance(event, h2.events.ResponseReceived):
                        received = {k.decode(): v.decode() for k, v in event.headers}
                        responses[event.stream_id].headers = received
                    elif isinstance(event, h2.events.DataReceived):
                        responses[event.stream_id].body += event.data
                        started.add(event.stream_id)
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = {k.decode(): v.decode() for k, v in event.headers}
                        responses[event.stream_id].trailers = trailers
                    elif isinstance(event, h2.events.StreamEnded):
                        ended.add(event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream {event.stream_id} reset")
                await stream.send(conn.data_to_send())
                if when_all_started is not None and len(started) == len(responses):
                    when_all_started(len(ended))
                    when_all_started = None
            conn.close_connection()
            await stream.send(conn.data_to_send())
    return list(responses.values())


_TRAILER_BODY = b"first chunk\nsecond chunk\n"


async def test_trailers_reach_an_http2_client(deployment: Site) -> None:
    [response] = await h2_exchange(deployment, [("/trailers", [("te", "trailers")])])
    assert response.headers[":status"] == "200"
    assert response.body == _TRAILER_BODY
    assert response.trailers == {
        "x-checksum": hashlib.sha256(_TRAILER_BODY).hexdigest(),
        "x-chunks": "2",
    }


async def test_trailers_the_client_did_not_ask_for_are_left_out(deployment: Site) -> None:
    # Without "te: trailers", hypercorn drops them; the response still ends.
    [response] = await h2_exchange(deployment, [("/trailers", [])])
    assert response.headers[":status"] == "200"
    assert response.body == _TRAILER_BODY
    assert response.trailers is None


async def test_uvicorn_and_http1_do_not_advertise_trailers(deployment: Site) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for base in (deployment.uvicorn, deployment.http):  # uvicorn; hypercorn HTTP/1.1
            response = await client.get(base + "/describe")
            assert response.http_version == "HTTP/1.1"
            assert "http.response.trailers" not in response.json()["extensions"]
            # so the app sends none: same body, no trailers
            response = await client.get(base + "/trailers", headers={"te": "trailers"})
            assert response.content == _TRAILER_BODY


async def test_trailers_announced_regardless_are_dropped_not_fatal(deployment: Site) -> None:
    # An app that announces trailers the server did not advertise: the
    # gateway keeps them from the server, and the response completes.
    marks = log_marks(deployment.deployment)
    async with httpx.AsyncClient(timeout=10) as client:
        for base in (deployment.uvicorn, deployment.http):
            for _ in range(2):  # the connection stays usable (keep-alive)
                response = await client.get(base + "/trailers?force=1")
                assert response.status_code == 200
                assert response.content == _TRAILER_BODY
    logs = logs_since(deployment.deployment, marks)
    assert "Traceback" not in logs
    assert "ERROR" not in logs


# ----------------------------------------------------------------------
# WebSocket


async def test_websocket_through_hypercorn(deployment: Site) -> None:
    ws_base = deployment.http.replace("http://", "ws://", 1)
    async with connect(ws_base + "/ws/echo", proxy=None, subprotocols=["chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["x-accepted-by"] == "probe"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00" * (300 * 1024))  # more than one relay chunk
        assert await ws.recv() == b"\x00" * (300 * 1024)
        await ws.send("extensions")
        assert json.loads(await ws.recv()) == ["websocket.http.response"]
    wss_base = deployment.https.replace("https://", "wss://", 1)
    async with connect(wss_base + "/ws/echo", proxy=None, ssl=deployment.ssl()) as ws:
        await ws.send("over tls")
        assert await ws.recv() == "over tls"


async def test_websocket_denial_under_hypercorn(deployment: Site) -> None:
    ws_base = deployment.http.replace("http://", "ws://", 1)
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_base + "/ws/deny", proxy=None):
            pass
    assert info.value.response.status_code == 401
    assert info.value.response.headers["www-authenticate"] == "Bearer"
    assert info.value.response.body == b"no entry without a token\n"
    # The worker denies a failed handshake with a 500 only when the
    # extension crossed (else it could only close, which is a 403).
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_base + "/ws/raise-before-accept", proxy=None):
            pass
    assert info.value.response.status_code == 500
