"""An app for the worker-behaviour tests: lifespan markers, gated requests, pids.

Start-up stores the pid and a Redis client in ``state`` and writes
``startup-<pid>`` into ``$MARKER_DIR``; shutdown writes ``shutdown-<pid>``.

``/info`` reports the worker's pid and the pid that lifespan state recorded.
``/gate/{name}`` is a request that blocks until the test releases it: it pushes
``<name> <pid>`` onto the Redis list ``started`` and then waits on
``gate:<name>`` (``LPUSH gate:<name> 1`` releases it). It reports how many
gated requests ran at once in this process, at most, over its life.
``/ws`` echoes every text message with the worker's pid.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

_running = {"now": 0, "max": 0}


def _mark(kind: str) -> None:
    marker_dir = os.environ.get("MARKER_DIR")
    if marker_dir:
        (Path(marker_dir) / f"{kind}-{os.getpid()}").write_text(kind)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    _mark("startup")
    try:
        yield {"pid": os.getpid(), "redis": client}
    finally:
        await client.aclose()
        _mark("shutdown")


async def info(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid(), "state_pid": request.state.pid})


async def gate(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    client: aioredis.Redis = request.state.redis
    _running["now"] += 1
    _running["max"] = max(_running["max"], _running["now"])
    try:
        await client.rpush("started", f"{name} {os.getpid()}")
        released = await client.blpop([f"gate:{name}"], timeout=30)
    finally:
        _running["now"] -= 1
    return JSONResponse(
        {
            "name": name,
            "pid": os.getpid(),
            "state_pid": request.state.pid,
            "released": released is not None,
            "max_concurrent": _running["max"],
        }
    )


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_json({"text": text, "pid": os.getpid()})
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[Route("/info", info), Route("/gate/{name}", gate), WebSocketRoute("/ws", ws)],
    lifespan=lifespan,
)


async def failing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app whose start-up reports failure (and which serves nothing)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    raise RuntimeError("never served")


async def raising_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app that raises on start-up (fatal under ``--lifespan on``)."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("start-up exploded")
    raise RuntimeError("never served")
