"""A plain ASGI 3 app for the fault-injection tests: it counts what it runs.

Every HTTP request and WebSocket with ``?id=ID`` appends ``ID PID`` to
``$E2E_DIR/runs.log`` the moment the app starts it (one ``O_APPEND`` write,
so lines from several worker processes never interleave). A test counts the
lines per id to prove that no request ran twice and none was lost.

HTTP (the path decides):

* ``/sleep?id=ID&ms=N``: waits N ms, then answers ``ID PID``.
* ``/gate?id=ID``: writes ``$E2E_DIR/started-ID``, then answers ``ID PID``
  once the test creates ``$E2E_DIR/release-ID`` (at most 20 s; then 504).
* ``/hold?id=ID``: writes ``started-ID``, then waits for ``http.disconnect``
  and records when it came (``disconnect-ID.json``); it never answers.
* anything else: answers ``ID PID`` at once.

WebSocket (any path): accepts, echoes text, and records the
``websocket.disconnect`` it gets (``ws-ID.json``: code and time).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio


def _dir() -> Path:
    return Path(os.environ["E2E_DIR"])


def _query(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope["query_string"].decode("latin-1"))
    return {key: values[-1] for key, values in parsed.items()}


def _note_run(request_id: str) -> None:
    line = f"{request_id} {os.getpid()}\n".encode()
    fd = os.open(_dir() / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _record(name: str, data: dict[str, Any]) -> None:
    tmp = _dir() / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(_dir() / f"{name}.json")  # atomic: the test never reads half a file


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    request_id = _query(scope).get("id", "")
    if request_id:
        _note_run(request_id)
    if scope["type"] == "http":
        await http(scope, receive, send, request_id)
    elif scope["type"] == "websocket":
        await websocket(receive, send, request_id)


async def http(scope: dict[str, Any], receive: Any, send: Any, request_id: str) -> None:
    path = scope["path"]
    status = 200
    if path == "/hold":
        (_dir() / f"started-{request_id}").touch()
        while (await receive())["type"] != "http.disconnect":
            pass
        _record(f"disconnect-{request_id}", {"at": time.time()})
        return
    if path == "/sleep":
        await anyio.sleep(int(_query(scope)["ms"]) / 1000)
    elif path == "/gate":
        (_dir() / f"started-{request_id}").touch()
        release = anyio.Path(_dir() / f"release-{request_id}")
        for _ in range(2000):  # at most 20 s: a file from another process, no event
            if await release.exists():
                break
            await anyio.sleep(0.01)
        else:
            status = 504
    body = f"{request_id} {os.getpid()}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def websocket(receive: Any, send: Any, request_id: str) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            if request_id:
                _record(f"ws-{request_id}", {"at": time.time(), "code": message.get("code")})
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
