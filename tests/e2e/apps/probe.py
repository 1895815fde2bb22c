"""A plain ASGI 3 app that lets the end-to-end tests observe what an app sees.

Whatever the app must report after the client has gone (a disconnect, a
close code) is written as JSON to ``$E2E_DIR/<name>.json``, a directory the
test owns, so the test can read it whichever worker ran the connection.

HTTP (the path decides):

* ``/raise``: raises before responding.
* ``/sse?id=ID``: server-sent events; sends ``one``, then waits until the
  test creates ``$E2E_DIR/release-ID`` (at most 10 s) and sends ``two``.
* ``/big?mib=N``: ``N`` MiB of :func:`pattern` bytes in 1 MiB sends.
* ``/wait-disconnect?id=ID``: reads the body, then waits for
  ``http.disconnect`` and records when it came (``disconnect-ID.json``).
* ``/early``: starts the response (200), then reads the body and ends the
  response with its size.
* ``/trailers``: when the server advertises ``http.response.trailers`` (or
  with ``?force=1``), a response announcing trailers: two body chunks, then
  ``x-checksum`` (their sha256) and ``x-chunks`` as trailers. Without the
  extension and ``force``, the same body and no trailers.
* ``/firehose?id=ID&mib=N``: streams N MiB in 64 KiB sends without ever
  calling ``receive``, then records when it finished (``firehose-ID.json``).
* anything else: a JSON description of the request (scope fields, body size
  and sha256, the worker's pid); HEAD gets the same headers and no body.
  With an ``x-record: ID`` header it also notes that it ran (``seen-ID.json``).

WebSocket:

* ``/ws/reject``: closes before accepting (the client sees 403).
* ``/ws/deny``: answers 401 with a body (``websocket.http.response``).
* ``/ws/raise-before-accept`` and ``/ws/raise-after-accept``: raise.
* anything else: accepts with ``chat.v2`` if offered (else the first offered
  subprotocol) and an ``x-accepted-by`` header; echoes every message; the text
  ``close CODE REASON`` makes it close with that code and reason, ``send N``
  makes it send N bytes (``s`` repeated), ``extensions`` makes it send the
  scope's extension names (JSON list). With
  ``?id=ID`` it records the ``websocket.disconnect`` it receives
  (``ws-ID.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio

MiB = 1024 * 1024


def pattern(size: int, seed: int = 7) -> bytes:
    """Deterministic bytes the tests can regenerate to check a download."""
    return random.Random(seed).randbytes(size)


def _record(name: str, data: dict[str, Any]) -> None:
    directory = Path(os.environ["E2E_DIR"])
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(directory / f"{name}.json")  # atomic: the test never reads half a file


def _query(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope["query_string"].decode("latin-1"))
    return {key: values[-1] for key, values in parsed.items()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)


# ----------------------------------------------------------------------
# HTTP


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/raise":
        raise RuntimeError("the app failed on purpose")
    if path == "/sse":
        await sse(scope, send)
    elif path == "/big":
        await big(scope, send)
    elif path == "/wait-disconnect":
        await wait_disconnect(scope, receive)
    elif path == "/firehose":
        await firehose(scope, send)
    elif path == "/early":
        await early(receive, send)
    elif path == "/trailers":
        await trailers(scope, send)
    else:
        await describe(scope, receive, send)


async def _read_body(receive: Any) -> tuple[int, str] | None:
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        if not message.get("more_body", False):
            return size, digest.hexdigest()


async def describe(scope: dict[str, Any], receive: Any, send: Any) -> None:
    for name, value in scope["headers"]:
        if name == b"x-record":
            _record(f"seen-{value.decode()}", {"at": time.time(), "pid": os.getpid()})
    body = await _read_body(receive)
    if body is None:
        return
    payload = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope.get("root_path"),
        "scheme": scope["scheme"],
        "http_version": scope["http_version"],
        "client": scope["client"],
        "server": scope["server"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body_size": body[0],
        "body_sha256": body[1],
        "worker_pid": os.getpid(),
        "extensions": sorted((scope.get("extensions") or {}).keys()),
        "asgi": scope.get("asgi"),
    }
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"x-method", scope["method"].encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def sse(scope: dict[str, Any], send: Any) -> None:
    release = Path(os.environ["E2E_DIR"]) / f"release-{_query(scope)['id']}"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
    for _ in range(1000):  # at most 10 s
        if await anyio.Path(release).exists():
            second = b"data: two\n\n"
            break
        await anyio.sleep(0.01)
    else:
        second = b"data: timeout\n\n"
    await send({"type": "http.response.body", "body": second, "more_body": False})


async def big(scope: dict[str, Any], send: Any) -> None:
    data = pattern(int(_query(scope)["mib"]) * MiB)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    view = memoryview(data)
    for start in range(0, len(data), MiB):
        chunk = bytes(view[start : start + MiB])
        await send(
            {"type": "http.response.body", "body": chunk, "more_body": start + MiB < len(data)}
        )


async def early(receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    body = await _read_body(receive)
    if body is not None:
        await send({"type": "http.response.body", "body": str(body[0]).encode()})


async def trailers(scope: dict[str, Any], send: Any) -> None:
    chunks = [b"first chunk\n", b"second chunk\n"]
    advertised = "http.response.trailers" in (scope.get("extensions") or {})
    announce = advertised or _query(scope).get("force") == "1"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"trailer", b"x-checksum, x-chunks")],
            "trailers": announce,
        }
    )
    for index, chunk in enumerate(chunks):
        more = index < len(chunks) - 1
        await send({"type": "http.response.body", "body": chunk, "more_body": more})
    if announce:
        digest = hashlib.sha256(b"".join(chunks)).hexdigest().encode()
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-checksum", digest), (b"x-chunks", str(len(chunks)).encode())],
                "more_trailers": False,
            }
        )


async def firehose(scope: dict[str, Any], send: Any) -> None:
    query = _query(scope)
    chunk = b"f" * 65536
    count = int(query["mib"]) * 16
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(count):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    _record(f"firehose-{query['id']}", {"at": time.time()})


async def wait_disconnect(scope: dict[str, Any], receive: Any) -> None:
    name = f"disconnect-{_query(scope)['id']}"
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        received += len(message.get("body", b""))
        if received:
            # The test waits for this before it hangs up.
            _record(f"{name}-started", {"at": time.time(), "received": received})
    _record(name, {"at": time.time(), "received": received})


# ----------------------------------------------------------------------
# WebSocket


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    connect = await receive()
    assert connect["type"] == "websocket.connect"
    if path == "/ws/reject":
        await send({"type": "websocket.close", "code": 1000})
        return
    if path == "/ws/deny":
        body = b"no entry without a token\n"
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    if path == "/ws/raise-before-accept":
        raise RuntimeError("the app failed on purpose before accepting")
    offered = scope.get("subprotocols") or []
    accept: dict[str, Any] = {
        "type": "websocket.accept",
        "headers": [(b"x-accepted-by", b"probe")],
    }
    if offered:
        accept["subprotocol"] = "chat.v2" if "chat.v2" in offered else offered[0]
    await send(accept)
    if path == "/ws/raise-after-accept":
        raise RuntimeError("the app failed on purpose after accepting")
    record = _query(scope).get("id")
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            if record:
                _record(
                    f"ws-{record}",
                    {
                        "at": time.time(),
                        "code": message.get("code"),
                        "reason": message.get("reason", ""),
                    },
                )
            return
        text = message.get("text")
        if text is not None:
            if text.startswith("close "):
                _, code, reason = text.split(" ", 2)
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
                continue  # the disconnect that follows is recorded above
            if text == "extensions":
                names = sorted((scope.get("extensions") or {}).keys())
                await send({"type": "websocket.send", "text": json.dumps(names)})
                continue
            if text.startswith("send "):
                await send({"type": "websocket.send", "bytes": b"s" * int(text.split()[1])})
                continue
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
