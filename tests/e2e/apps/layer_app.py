"""A Starlette app that reaches the channel layer through the scope.

``scope["channel_layer"]`` and ``scope["channel_name"]`` are what the worker
gives every connection: a chat room where each socket joins a group and
relays group messages to its client, whichever worker it runs on.
"""

from __future__ import annotations

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


app = Starlette(routes=[Route("/whoami", whoami), WebSocketRoute("/chat", chat)])
