"""HTTP through a whole deployment, as a client sees it.

One protocol server (two when a limit needs its own), two workers running
``probe:app`` (tests/e2e/apps/probe.py), real httpx clients or raw sockets
where the exact bytes on the wire matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx
import pytest
from anyio.abc import SocketAttribute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ._shared import shared_deployment, wait_for_file
from .apps.probe import pattern
from .conftest import Deploy, Deployment

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
SMALL_LIMIT = 1 * MiB  # --max-body-size of the second protocol server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    with shared_deployment(
        tmp_path_factory.mktemp("http"),
        "probe:app",
        servers=[(), ("--max-body-size", str(SMALL_LIMIT))],
    ) as pair:
        yield pair


def _client(url: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, **kwargs)


# ----------------------------------------------------------------------
# Raw HTTP/1.1, for exact bytes on the wire


async def read_to_eof(url: str, request: bytes) -> tuple[bytes, int]:
    """Send raw ``request`` bytes; return all the server sends until it closes,
    and the client's port."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    async with await anyio.connect_tcp(parts.hostname, parts.port) as stream:
        local_port = stream.extra(SocketAttribute.local_port)
        await stream.send(request)
        data = b""
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    return data, local_port


async def raw_exchange(url: str, request: bytes) -> tuple[int, bytes, bytes, int]:
    """Send ``request`` (which must ask for ``Connection: close``) and read to EOF.

    Returns the status, the raw header block, the body and the client's port.
    """
    data, local_port = await read_to_eof(url, request)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, body, local_port


# ----------------------------------------------------------------------
# Methods and bodies


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_method_reaches_the_app_and_the_response_comes_back(
    deployment: Deployment, method: str
) -> None:
    body = f"a {method} body".encode()
    async with _client(deployment.url) as client:
        response = await client.request(method, "/things/1?x=y", content=body)
    assert response.status_code == 200
    assert response.headers["x-method"] == method
    info = response.json()
    assert (info["method"], info["path"], info["query_string"]) == (method, "/things/1", "x=y")
    assert info["body_size"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_head_has_the_headers_of_get_and_no_body(deployment: Deployment) -> None:
    async with _client(deployment.url, limits=httpx.Limits(max_connections=1)) as client:
        head = await client.head("/page")
        # Same connection next: any body bytes after HEAD would corrupt this response.
        get = await client.get("/page")
    assert head.status_code == 200
    assert head.headers["x-method"] == "HEAD"
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0  # what a GET would carry
    assert get.status_code == 200
    assert get.json()["method"] == "GET"


async def test_chunked_request_body_arrives_complete(deployment: Deployment) -> None:
    sizes = [1, 7, 4096, 65536, 100_000, 3, 250_000, 17, 1, 65535] * 5
    chunks = [os.urandom(size) for size in sizes]
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
            await anyio.lowlevel.checkpoint()

    async with _client(deployment.url) as client:
        response = await client.post("/upload", content=body())
    assert response.status_code == 200
    info = response.json()
    assert ["transfer-encoding", "chunked"] in info["headers"]
    assert info["body_size"] == sum(sizes)
    assert info["body_sha256"] == expected


async def test_body_at_the_limit_passes(deployment: Deployment) -> None:
    body = os.urandom(SMALL_LIMIT)
    async with _client(deployment.urls[1]) as client:
        response = await client.post("/upload", content=body)
    assert response.status_code == 200
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_body_over_the_limit_with_content_length_gets_413(deployment: Deployment) -> None:
    # Answered from the headers alone, before the body is read. The server
    # then reads and discards the body rather than reset a client still
    # sending it (which would lose the 413), and the connection lives on.
    async with _client(deployment.urls[1], limits=httpx.Limits(max_connections=1)) as client:
        response = await client.post("/upload", content=os.urandom(4 * SMALL_LIMIT))
        after = await client.post("/upload", content=b"small")
    assert response.status_code == 413
    assert response.text == "Request body too large\n"
    assert after.status_code == 200


async def test_body_over_the_limit_with_expect_100_continue_is_never_sent(
    deployment: Deployment,
) -> None:
    parts = urlsplit(deployment.urls[1])
    assert parts.hostname is not None
    assert parts.port is not None
    async with await anyio.connect_tcp(parts.hostname, parts.port) as stream:
        await stream.send(
            b"POST /upload HTTP/1.1\r\nHost: test\r\n"
            + f"Content-Length: {4 * SMALL_LIMIT}\r\n".encode()
            + b"Expect: 100-continue\r\n\r\n"
        )
        data = b""
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
    assert data.startswith(b"HTTP/1.1 413 "), data


async def test_chunked_body_over_the_limit_gets_413(deployment: Deployment) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(2 * SMALL_LIMIT // 65536):
            yield b"x" * 65536

    async with _client(deployment.urls[1]) as client:
        response = await client.post("/upload", content=body())
    assert response.status_code == 413


async def test_body_over_the_limit_after_the_response_started_cuts_the_connection(
    deployment: Deployment,
) -> None:
    # Too late for a 413: the response must not look complete, nor hang.
    async def body() -> AsyncIterator[bytes]:
        for _ in range(2 * SMALL_LIMIT // 65536):
            yield b"x" * 65536
            await anyio.sleep(0.001)

    async with _client(deployment.urls[1]) as client:
        with anyio.fail_after(5), pytest.raises(httpx.TransportError):
            await client.post("/early", content=body())
        # The server and the workers serve on.
        assert (await client.post("/early", content=b"12345")).text == "5"


# ----------------------------------------------------------------------
# Streaming and size


async def test_streamed_response_reaches_the_client_before_it_ends(
    deployment: Deployment, e2e_dir: Path
) -> None:
    token = uuid.uuid4().hex
    async with (
        _client(deployment.url) as client,
        client.stream("GET", f"/sse?id={token}") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.aiter_lines()
        with anyio.fail_after(5):
            first = await anext(lines)
        # The app sends "two" only once we create the release file, so
        # "one" cannot have waited for the end of the response.
        assert first == "data: one"
        assert not response.is_closed
        (e2e_dir / f"release-{token}").touch()
        rest = [line async for line in lines]
    assert [line for line in rest if line] == ["data: two"]


async def test_large_response_arrives_intact(deployment: Deployment) -> None:
    expected = hashlib.sha256(pattern(20 * MiB)).hexdigest()
    async with _client(deployment.url) as client:
        response = await client.get("/big?mib=20")
    assert response.status_code == 200
    assert len(response.content) == 20 * MiB
    assert hashlib.sha256(response.content).hexdigest() == expected


async def test_large_upload_arrives_intact(deployment: Deployment) -> None:
    body = os.urandom(20 * MiB)
    async with _client(deployment.url) as client:
        response = await client.post("/upload", content=body)
    assert response.status_code == 200
    info = response.json()
    assert info["body_size"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


# ----------------------------------------------------------------------
# Connection and scope


async def test_keep_alive_reuses_the_connection(deployment: Deployment) -> None:
    async with _client(deployment.url, limits=httpx.Limits(max_connections=1)) as client:
        responses = [await client.post("/k", content=b"x" * n) for n in range(5)]
    assert all(r.status_code == 200 for r in responses)
    ports = {r.json()["client"][1] for r in responses}
    assert len(ports) == 1, ports


async def test_pipelined_requests_are_answered_in_order(deployment: Deployment) -> None:
    # All four arrive in one segment: uvicorn queues the last three and starts
    # each when the one before has been answered, all writing through the one
    # per-connection cork (protocol_server/cork.py); a HEAD has no body, and
    # the last asks for the connection to close.
    methods = ["GET", "HEAD", "POST", "GET"]
    request = b"".join(
        [
            b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /p2 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /p3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /p4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ]
    )
    data, _ = await read_to_eof(deployment.url, request)
    paths = []
    for method in methods:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, (method, head)
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 200 "), lines[0]
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = 0 if method == "HEAD" else int(fields[b"content-length"])
        body, data = data[:length], data[length:]
        if method != "HEAD":
            paths.append(json.loads(body)["path"])
    assert data == b""  # nothing more, nothing left over
    assert paths == ["/p1", "/p3", "/p4"]


async def test_scope_is_what_the_client_sent(deployment: Deployment) -> None:
    port = urlsplit(deployment.url).port
    request = (
        b"GET /a%20b/caf%C3%A9/%2F?x=1&y=%20z&x=2 HTTP/1.1\r\n"
        b"Host: example.test:8080\r\n"
        b"X-Dup: One\r\n"
        b"x-dup: two\r\n"
        b"X-Mixed-Case: VaLuE  with  spaces\r\n"
        b"X-Latin: caf\xe9\r\n"
        b"X-Dup: three\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )
    status, _, body, local_port = await raw_exchange(deployment.url, request)
    assert status == 200
    info = json.loads(body)
    assert info["client"] == ["127.0.0.1", local_port]
    assert info["server"] == ["127.0.0.1", port]
    assert info["scheme"] == "http"
    assert info["http_version"] == "1.1"
    assert info["method"] == "GET"
    assert info["path"] == "/a b/café//"
    assert info["raw_path"] == "/a%20b/caf%C3%A9/%2F"
    assert info["query_string"] == "x=1&y=%20z&x=2"
    assert info["root_path"] == ""
    assert info["asgi"]["version"] == "3.0"
    # Names lowercased (as uvicorn and the ASGI spec have them); values as sent,
    # byte for byte; every duplicate, in order.
    assert info["headers"] == [
        ["host", "example.test:8080"],
        ["x-dup", "One"],
        ["x-dup", "two"],
        ["x-mixed-case", "VaLuE  with  spaces"],
        ["x-latin", "caf\xe9"],
        ["x-dup", "three"],
        ["connection", "close"],
    ]


async def test_local_only_extensions_are_not_advertised(deployment: Deployment) -> None:
    async with _client(deployment.url) as client:
        info = (await client.get("/")).json()
    assert "http.response.zerocopysend" not in info["extensions"]
    assert "http.response.pathsend" not in info["extensions"]


@pytest.mark.parametrize("body_complete", [False, True], ids=["mid-body", "body-complete"])
async def test_disconnect_reaches_the_app_within_a_second(
    deployment: Deployment, e2e_dir: Path, body_complete: bool
) -> None:
    token = uuid.uuid4().hex
    parts = urlsplit(deployment.url)
    assert parts.hostname is not None
    assert parts.port is not None
    sent = b"0123456789"
    length = len(sent) if body_complete else 1000
    async with await anyio.connect_tcp(parts.hostname, parts.port) as stream:
        await stream.send(
            f"POST /wait-disconnect?id={token} HTTP/1.1\r\n"
            f"Host: test\r\nContent-Length: {length}\r\n\r\n".encode()
            + sent
        )
        started = await wait_for_file(e2e_dir / f"disconnect-{token}-started.json")
        assert started["received"] == len(sent)
    left = time.time()
    record = await wait_for_file(e2e_dir / f"disconnect-{token}.json", seconds=5)
    assert record["at"] - left < 1.0


async def test_app_streaming_to_a_client_that_left_is_not_stuck(
    deployment: Deployment, e2e_dir: Path
) -> None:
    """The app never reads; once the client is gone its sends must not wait for credit."""
    token = uuid.uuid4().hex
    async with (
        _client(deployment.url) as client,
        client.stream("GET", f"/firehose?id={token}&mib=1024") as response,
    ):
        assert response.status_code == 200
        with anyio.fail_after(5):
            await anext(response.aiter_raw())
    left = time.time()
    record = await wait_for_file(e2e_dir / f"firehose-{token}.json", seconds=5)
    assert record["at"] - left < 1.0


# ----------------------------------------------------------------------
# Failures


async def test_app_exception_is_a_500_and_the_worker_serves_on(deploy: Deploy) -> None:
    single = deploy("probe:app", workers=1)
    (worker,) = single.workers
    async with _client(single.url) as client:
        failed = await client.get("/raise")
        after = [await client.get(f"/after/{i}") for i in range(3)]
    assert failed.status_code == 500
    assert all(r.status_code == 200 for r in after)
    assert {r.json()["worker_pid"] for r in after} == {worker.pid}
    worker.wait_for("the app failed on purpose", timeout=5)


async def test_no_worker_is_a_503_after_the_queue_timeout(deploy: Deploy, tmp_path: Path) -> None:
    bare = deploy(None, server_args=("--queue-timeout", "1"))
    async with _client(bare.url) as client:
        started = time.monotonic()
        response = await client.get("/nobody-home", headers={"x-record": "early"})
        waited = time.monotonic() - started
        assert response.status_code == 503
        assert 0.9 <= waited < 3, waited
        # A WebSocket handshake likewise gets a 503 (the denial extension).
        with pytest.raises(InvalidStatus) as info:
            async with connect(bare.ws_url + "/ws", proxy=None, open_timeout=10):
                pass
        assert info.value.response.status_code == 503
        bare.add_worker("probe:app", env={"E2E_DIR": str(tmp_path)})
        later = await client.get("/somebody-home", headers={"x-record": "later"})
    assert later.status_code == 200
    assert later.json()["path"] == "/somebody-home"
    # The request that got its 503 was withdrawn: the new worker never ran it.
    assert (tmp_path / "seen-later.json").exists()
    assert not (tmp_path / "seen-early.json").exists()
