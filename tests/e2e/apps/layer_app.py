"""A Starlette app that reaches the channel layer through the scope.

``scope["channel_layer"]`` and ``scope["channel_name"]`` are what the worker
gives every connection: a chat room where each socket joins a group and
relays group messages to its client, whichever worker it runs on.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "channel_name": request.scope.get("channel_name"),
            "has_layer": request.scope.get("channel_layer") is not None,
            "pid": os.getpid(),
            # What the app's own clients (Django's CHANNEL_LAYERS, ...) read.
            "env_redis_url": os.environ.get("CHANNELS_LITE_REDIS_URL"),
            "env_prefix": os.environ.get("CHANNELS_LITE_PREFIX"),
        }
    )


async def chat(websocket: WebSocket) -> None:
    layer: Any = websocket.scope["channel_layer"]
    name: str = websocket.scope["channel_name"]
    await websocket.accept()
    await layer.group_add("room", name)
    await websocket.send_json({"joined": name, "pid": os.getpid()})
    try:
        async with anyio.create_task_group() as tg:

            async def relay_group() -> None:
                while True:
                    message = await layer.receive(name)
                    await websocket.send_json({"text": message["text"], "pid": os.getpid()})

            tg.start_soon(relay_group)
            try:
                while True:
                    text = await websocket.receive_text()
                    await layer.group_send("room", {"type": "chat.message", "text": text})
            except WebSocketDisconnect:
                pass
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await layer.group_discard("room", name)


async def push(websocket: WebSocket) -> None:
    """Joins group ``pushed`` with the socket's reply channel, so pushes to
    the group reach the client without this app; it only says hello, and
    ``whoami`` (the worker's pid) on request."""
    layer: Any = websocket.scope["channel_layer"]
    reply_channel: str = websocket.scope["reply_channel"]
    await layer.group_add("pushed", reply_channel)
    try:
        await websocket.accept()
        await websocket.send_json({"joined": reply_channel, "pid": os.getpid()})
        while True:
            await websocket.receive_text()
            await websocket.send_json({"pid": os.getpid()})
    except WebSocketDisconnect:
        pass
    finally:
        with anyio.CancelScope(shield=True):
            await layer.group_discard("pushed", reply_channel)


async def push_watched(websocket: WebSocket) -> None:
    """``/push``, and when the client is gone, says so on channel ``push-left``."""
    layer: Any = websocket.scope["channel_layer"]
    try:
        await push(websocket)
    finally:
        with anyio.CancelScope(shield=True):
            await layer.send("push-left", {"type": "left"})


async def welcome(websocket: WebSocket) -> None:
    """Accepts, pushes ``welcome`` to its own reply channel, then sends
    ``after`` itself: the client must get them in that order."""
    layer: Any = websocket.scope["channel_layer"]
    await websocket.accept()
    push = {"type": "websocket.push", "text": "welcome"}
    await layer.send(websocket.scope["reply_channel"], push)
    await websocket.send_text("after")
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()


async def interleave(websocket: WebSocket) -> None:
    """On ``"n own size"``: for i < n, pushes ``p<i>`` to its own reply
    channel, then sends ``own`` messages ``a<i>.<j>`` of ``size`` characters
    itself; the client must get exactly that sequence, however each push is
    written (straight as it arrives, or queued behind the app's own
    messages)."""
    layer: Any = websocket.scope["channel_layer"]
    reply_channel: str = websocket.scope["reply_channel"]
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            count, own, size = map(int, (await websocket.receive_text()).split())
            for i in range(count):
                await layer.send(reply_channel, {"type": "websocket.push", "text": f"p{i}"})
                for j in range(own):
                    await websocket.send_text(f"a{i}.{j}".ljust(size, "."))


async def push_before_accept(websocket: WebSocket) -> None:
    """Joins group ``early`` (the socket) and ``early-go`` (the app) before
    accepting, says so on channel ``early-ready``, and accepts only when
    ``{"type": "go"}`` comes to ``early-go``: a push that arrives before then
    must not reach the client."""
    layer: Any = websocket.scope["channel_layer"]
    await layer.group_add("early", websocket.scope["reply_channel"])
    await layer.group_add("early-go", websocket.scope["channel_name"])
    await layer.send("early-ready", {"type": "ready"})
    await layer.receive(websocket.scope["channel_name"])
    await websocket.accept()
    await websocket.send_text("accepted")
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()


app = Starlette(
    routes=[
        Route("/whoami", whoami),
        WebSocketRoute("/chat", chat),
        WebSocketRoute("/push", push),
        WebSocketRoute("/interleave", interleave),
        WebSocketRoute("/push-before-accept", push_before_accept),
        WebSocketRoute("/push-watched", push_watched),
        WebSocketRoute("/welcome", welcome),
    ]
)
