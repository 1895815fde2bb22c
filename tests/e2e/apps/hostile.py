"""A plain ASGI 3 app for the backpressure and hostile-input tests.

What the app saw after the client has gone is written as JSON to
``$E2E_DIR/<name>.json`` (the test owns the directory), whichever worker ran
the connection.

HTTP (the path decides):

* ``/hold?id=ID``: records that it started (``hold-ID-started.json``), then
  waits for ``http.disconnect`` (recorded in ``hold-ID.json``) or for the
  test to create ``$E2E_DIR/release-ID`` (then answers 200 ``released``);
  at most 20 s.
* ``/stream?mib=N&chunk=K``: N MiB of ``x`` in sends of K bytes (64 KiB by
  default), stopping early if its ``receive`` says the client left; with
  ``&id=ID`` it records how much it sent and whether the client left
  (``stream-ID.json``).
* anything else: 200 with ``ok <method> <path> <body size>``.

WebSocket:

* ``/ws/slow?id=ID``: accepts, then reads nothing until the test creates
  ``$E2E_DIR/release-ID`` (at most 20 s); then reads and counts messages
  until the disconnect, which it records with the count (``ws-ID.json``).
* ``/ws/echo?id=ID``: echoes every message; records the disconnect.
* ``/ws/group?group=G``: joins the channel-layer group G and forwards every
  group message's ``text`` to the client; a client message is group-sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel

MiB = 1024 * 1024


def _record(name: str, data: dict[str, Any]) -> None:
    directory = Path(os.environ["E2E_DIR"])
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps({**data, "at": time.time()}))
    tmp.replace(directory / f"{name}.json")  # atomic: the test never reads half a file


def _query(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope["query_string"].decode("latin-1"))
    return {key: values[-1] for key, values in parsed.items()}


async def _released(ident: str) -> bool:
    release = anyio.Path(os.environ["E2E_DIR"]) / f"release-{ident}"
    for _ in range(2000):  # at most 20 s
        if await release.exists():
            return True
        await anyio.sleep(0.01)
    return False


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
        path = scope["path"]
        if path == "/ws/slow":
            await ws_slow(scope, receive, send)
        elif path == "/ws/group":
            await ws_group(scope, receive, send)
        else:
            await ws_echo(scope, receive, send)


# ----------------------------------------------------------------------
# HTTP


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/hold":
        await hold(scope, receive, send)
    elif path == "/stream":
        await stream(scope, receive, send)
    else:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await _respond(send, f"ok {scope['method']} {path} {size}".encode())


async def _respond(send: Any, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def hold(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ident = _query(scope)["id"]
    _record(f"hold-{ident}-started", {})
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            _record(f"hold-{ident}", {"disconnect": True})
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        if await _released(ident):
            await _respond(send, b"released")
        tg.cancel_scope.cancel()


async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    query = _query(scope)
    size = int(query.get("mib", 1)) * MiB
    chunk = b"x" * int(query.get("chunk", 65536))
    ident = query.get("id")
    left = anyio.Event()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(size).encode())],
        }
    )
    sent = 0
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            left.set()

        tg.start_soon(watch)
        while sent < size and not left.is_set():
            piece = chunk[: size - sent]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += len(piece)
            await anyio.lowlevel.checkpoint()  # let the watcher hear of a disconnect
        if not left.is_set():
            await send({"type": "http.response.body", "body": b""})
        tg.cancel_scope.cancel()
    if ident:
        _record(f"stream-{ident}", {"sent": sent, "disconnected": left.is_set()})


# ----------------------------------------------------------------------
# WebSocket


async def _accept(receive: Any, send: Any) -> bool:
    if (await receive())["type"] != "websocket.connect":
        return False
    await send({"type": "websocket.accept"})
    return True


async def ws_slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ident = _query(scope)["id"]
    if not await _accept(receive, send):
        return
    await _released(ident)
    count = 0
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _record(f"ws-{ident}", {"code": message.get("code"), "count": count})
            return
        count += 1


async def ws_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ident = _query(scope).get("id")
    if not await _accept(receive, send):
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            if ident:
                _record(f"ws-{ident}", {"code": message.get("code")})
            return
        reply = {"type": "websocket.send"}
        if message.get("bytes") is not None:
            reply["bytes"] = message["bytes"]
        else:
            reply["text"] = message.get("text", "")
        # The client may have left meanwhile (ASGI: send raises); receive() says how.
        with contextlib.suppress(OSError):
            await send(reply)


async def ws_group(scope: dict[str, Any], receive: Any, send: Any) -> None:
    layer = scope["channel_layer"]
    name = scope["channel_name"]
    group = _query(scope)["group"]
    if not await _accept(receive, send):
        return
    await layer.group_add(group, name)
    await send({"type": "websocket.send", "text": f"joined {name}"})
    try:
        async with anyio.create_task_group() as tg:

            async def forward() -> None:
                while True:
                    message = await layer.receive(name)
                    await send({"type": "websocket.send", "text": str(message.get("text"))})

            tg.start_soon(forward)
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                await layer.group_send(group, {"type": "chat", "text": message.get("text")})
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await layer.group_discard(group, name)
