"""Hostile clients: each gets the right status or close code, and others are served.

Slow headers (slowloris), oversized headers, malformed requests, lying
Content-Length, invalid WebSocket frames, clients that vanish mid-request
or mid-response. In every test a normal client is served while or after
the hostile one does its worst, and where the app was running it saw the
disconnect.

Three protocol servers with ``--header-timeout 1 --max-header-size 8192``:
httptools (the default), h11, and one with a 1 MiB ``--max-body-size``; one
worker running ``hostile:app`` (tests/e2e/apps/hostile.py). Raw sockets,
since these clients break the protocol on purpose. The WebSocket frames go
to the default ``websockets-sansio`` implementation (uvicorn's ``wsproto``
one drops the TCP connection without a Close frame on a protocol error, so
its clients see 1006; its apps still get the right code).
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from websockets.asyncio.client import connect

from ._shared import shared_deployment, wait_for_file
from .conftest import Deployment

pytestmark = pytest.mark.anyio

HEADER_TIMEOUT = 1.0
MAX_HEADER = 8192
LIMITS = ("--header-timeout", str(HEADER_TIMEOUT), "--max-header-size", str(MAX_HEADER))
SERVERS = {"httptools": 0, "h11": 1}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    with shared_deployment(
        tmp_path_factory.mktemp("hostile"),
        "hostile:app",
        workers=1,
        servers=[
            LIMITS,
            (*LIMITS, "--http", "h11"),
            (*LIMITS, "--max-body-size", "1048576"),
        ],
    ) as pair:
        yield pair


async def _open(url: str) -> SocketStream:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return await anyio.connect_tcp(parts.hostname, parts.port)


async def _read_to_eof(stream: SocketStream, limit: float = 5.0) -> bytes:
    data = b""
    with anyio.fail_after(limit):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


async def _normal_request(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post("/normal", content=b"abc")
    assert response.text == "ok POST /normal 3"


# ----------------------------------------------------------------------
# Request heads


@pytest.mark.parametrize("http", list(SERVERS))
async def test_slowloris_headers_get_408_and_others_are_served(
    deployment: Deployment, http: str
) -> None:
    url = deployment.urls[SERVERS[http]]
    async with await _open(url) as stream:
        started = time.monotonic()
        await stream.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n")
        reply = b""
        with anyio.fail_after(HEADER_TIMEOUT + 4):
            for n in range(100):  # one header line every 0.1 s, never the blank line
                if n == 3:
                    await _normal_request(url)  # served while the drip goes on
                try:
                    await stream.send(b"X-Drip-%d: slowly\r\n" % n)
                except (anyio.BrokenResourceError, OSError):
                    break
                with anyio.move_on_after(0.1):
                    reply += await stream.receive()
                if reply:
                    break
            reply += await _read_to_eof(stream)
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert HEADER_TIMEOUT - 0.1 < waited < HEADER_TIMEOUT + 3, waited
    deployment.servers[SERVERS[http]].wait_for("request headers incomplete after 1.0 s")
    await _normal_request(url)


async def test_a_connection_that_sends_nothing_is_closed(deployment: Deployment) -> None:
    async with await _open(deployment.url) as stream:
        started = time.monotonic()
        assert await _read_to_eof(stream, limit=HEADER_TIMEOUT + 4) == b""
    assert time.monotonic() - started > HEADER_TIMEOUT - 0.1
    await _normal_request(deployment.url)


@pytest.mark.parametrize("http", list(SERVERS))
@pytest.mark.parametrize("how", ["one-write", "trickled"])
async def test_oversized_headers_get_431(deployment: Deployment, http: str, how: str) -> None:
    url = deployment.urls[SERVERS[http]]
    head = b"GET / HTTP/1.1\r\nHost: test\r\n" + b"X-Big: " + b"b" * 2 * MAX_HEADER + b"\r\n\r\n"
    async with await _open(url) as stream:
        if how == "one-write":
            await stream.send(head)
        else:
            for start in range(0, len(head), 1024):
                try:
                    await stream.send(head[start : start + 1024])
                except (anyio.BrokenResourceError, OSError):
                    break
                await anyio.sleep(0.01)
        reply = await _read_to_eof(stream)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    await _normal_request(url)


@pytest.mark.parametrize("http", list(SERVERS))
async def test_headers_just_under_the_limit_pass(deployment: Deployment, http: str) -> None:
    url = deployment.urls[SERVERS[http]]
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get("/fine", headers={"x-big": "b" * (MAX_HEADER - 512)})
    assert response.text == "ok GET /fine 0"


MALFORMED = {
    "garbage": b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n",
    "bad-protocol": b"GET / HTTQ/1.1\r\nHost: test\r\n\r\n",
    "no-host-space": b"GET /  HTTP/1.1 extra\r\nHost: test\r\n\r\n",
    "bad-header-line": b"GET / HTTP/1.1\r\nHost: test\r\nno colon here\r\n\r\n",
    "negative-length": b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: -3\r\n\r\nabc",
    "length-and-chunked": (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "bad-chunk-size": (
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    ),
    # More body than Content-Length says: the rest is no request.
    "length-lie": (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc\x00\x01garbage\r\n\r\n"
    ),
}


@pytest.mark.parametrize(
    ("http", "case"),
    # h11 takes Transfer-Encoding over Content-Length (RFC 9112 6.3 allows
    # either); httptools refuses the pair, the safer choice.
    [(h, c) for h in SERVERS for c in MALFORMED if (h, c) != ("h11", "length-and-chunked")],
)
async def test_malformed_requests_get_400(deployment: Deployment, http: str, case: str) -> None:
    url = deployment.urls[SERVERS[http]]
    async with await _open(url) as stream:
        await stream.send(MALFORMED[case])
        reply = await _read_to_eof(stream)
    assert b"HTTP/1.1 400 " in reply, reply[:300]
    await _normal_request(url)


async def test_body_over_the_limit_in_chunks_gets_413(deployment: Deployment) -> None:
    url = deployment.urls[2]  # --max-body-size 1 MiB
    chunk = b"%x\r\n%s\r\n" % (65536, b"c" * 65536)
    async with await _open(url) as stream:
        await stream.send(b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply = b""
        with anyio.fail_after(10):
            for _ in range(64):  # 4 MiB
                try:
                    await stream.send(chunk)
                except (anyio.BrokenResourceError, OSError):
                    break
                with anyio.move_on_after(0.001):
                    reply += await stream.receive()
                if reply:
                    break
            # The server reads and discards the rest of the body (the
            # connection lives on), so read the response head, not to EOF.
            while b"\r\n\r\n" not in reply:
                reply += await stream.receive()
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    await _normal_request(url)


# ----------------------------------------------------------------------
# Clients that vanish


async def test_client_vanishing_mid_request_gives_the_app_a_disconnect(
    deployment: Deployment, e2e_dir: Path
) -> None:
    token = uuid.uuid4().hex
    async with await _open(deployment.url) as stream:
        # Content-Length promises 1000 bytes; 10 come, then the client is gone.
        await stream.send(
            f"POST /hold?id={token} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"0123456789"
        )
        await wait_for_file(e2e_dir / f"hold-{token}-started.json")
    left = time.time()
    record = await wait_for_file(e2e_dir / f"hold-{token}.json")
    assert record["disconnect"] is True
    assert record["at"] - left < 2.0
    await _normal_request(deployment.url)


async def test_client_vanishing_mid_response_stops_the_app(
    deployment: Deployment, e2e_dir: Path
) -> None:
    token = uuid.uuid4().hex
    async with await _open(deployment.url) as stream:
        await stream.send(f"GET /stream?mib=256&id={token} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        got = 0
        with anyio.fail_after(5):
            while got < 1024 * 1024:
                got += len(await stream.receive())
    left = time.time()
    # The app hears of it (its receive gives http.disconnect) and stops,
    # well short of 256 MiB; its sends did not wait for credit meanwhile.
    record = await wait_for_file(e2e_dir / f"stream-{token}.json", seconds=10)
    assert record["disconnected"] is True
    assert record["sent"] < 256 * 1024 * 1024
    assert record["at"] - left < 2.0
    await _normal_request(deployment.url)


# ----------------------------------------------------------------------
# WebSocket frames


def _frame(
    opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True, rsv: int = 0
) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode, (0x80 if mask else 0) | len(payload)])
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


BAD_FRAMES = {
    "unmasked": (_frame(0x1, b"hi", mask=False), 1002),
    "reserved-opcode": (_frame(0x3, b"hi"), 1002),
    "reserved-bit": (_frame(0x1, b"hi", rsv=0x40), 1002),
    "fragmented-ping": (_frame(0x9, b"p", fin=False), 1002),
    "continuation-first": (_frame(0x0, b"x"), 1002),
    "invalid-close-code": (_frame(0x8, struct.pack("!H", 999)), 1002),
    "invalid-utf8": (_frame(0x1, b"\xff\xfe"), 1007),
}


async def _ws_handshake(url: str, path: str) -> tuple[SocketStream, bytes]:
    stream = await _open(url)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    await stream.send(
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    with anyio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return stream, rest


def _close_code(data: bytes) -> int | None:
    """The code of the first server Close frame in ``data`` (frames are unmasked)."""
    while len(data) >= 2:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        if size > 125:
            return None  # the tests' echoes are short; nothing larger precedes a close
        if opcode == 0x8:
            return int(struct.unpack("!H", data[2:4])[0]) if size >= 2 else 1005
        data = data[2 + size :]
    return None


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_invalid_websocket_frames_close_with_the_right_code(
    deployment: Deployment, e2e_dir: Path, case: str
) -> None:
    url = deployment.url
    frame, code = BAD_FRAMES[case]
    token = uuid.uuid4().hex
    normal_url = url.replace("http://", "ws://", 1) + "/ws/echo"
    async with connect(normal_url, proxy=None, open_timeout=10) as normal:
        stream, rest = await _ws_handshake(url, f"/ws/echo?id={token}")
        async with stream:
            await stream.send(_frame(0x1, b"first"))
            await stream.send(frame)
            # Up to the server's Close frame.
            reply = rest
            with anyio.fail_after(5):
                while _close_code(reply) is None:
                    try:
                        reply += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
            # Answer the Close as a client should: the closing handshake
            # completes (where the server waits for it) and the app hears.
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await stream.send(_frame(0x8, struct.pack("!H", code)))
        assert _close_code(reply) == code, reply
        record = await wait_for_file(e2e_dir / f"ws-{token}.json")
        assert record["code"] == code  # the app saw the disconnect, with the code
        await normal.send("unaffected")
        with anyio.fail_after(5):
            assert await normal.recv() == "unaffected"
