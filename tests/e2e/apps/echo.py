"""A plain ASGI 3 app used by the end-to-end tests: echoes what it gets.

HTTP: responds with a JSON description of the request (method, path, scope
fields, body length and a digest) unless the path asks for something else:
``/stream?n=N`` streams N server-sent events, ``/raise`` raises, ``/big?mb=N``
sends N MiB. WebSocket: accepts (with the first offered subprotocol) and
echoes every message; ``/ws/reject`` closes before accepting.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["pid"] = os.getpid()
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/raise":
        raise RuntimeError("the app failed on purpose")
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        if not message.get("more_body", False):
            break
    payload = {
        "method": scope["method"],
        "path": path,
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope.get("root_path", ""),
        "scheme": scope["scheme"],
        "http_version": scope["http_version"],
        "client": scope["client"],
        "server": scope["server"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body_size": size,
        "body_sha256": digest.hexdigest(),
        "worker_pid": os.getpid(),
        "state_pid": scope.get("state", {}).get("pid"),
        "extensions": sorted((scope.get("extensions") or {}).keys()),
    }
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    if scope["path"] == "/ws/reject":
        await send({"type": "websocket.close", "code": 1000})
        return
    subprotocols = scope.get("subprotocols") or []
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if subprotocols:
        accept["subprotocol"] = subprotocols[0]
    await send(accept)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
