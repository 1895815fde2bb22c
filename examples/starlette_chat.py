"""A chat on Starlette: rooms are channel-layer groups, so any worker runs any socket.

    channels-lite run starlette_chat:app --app-dir examples

then open http://127.0.0.1:8000/ in two browser tabs (``/?room=ops&name=ada``
picks a room and a name). On a deployment of your own, every worker runs the
same command::

    channels-lite worker starlette_chat:app --app-dir examples

``/`` is the chat page (``examples/chat.html``, which ``django_chat`` serves
too), ``/hello`` plain text naming the worker that answered. The WebSocket
``/ws/chat/<room>/?name=<name>`` joins the group ``chat-<room>`` through the
channel layer the worker puts in ``scope["channel_layer"]``, under the socket's
own channel ``scope["channel_name"]``. What a member sends is a group message
of type ``chat.message``, which reaches every member on whichever worker it
runs. Any other service can post to a room the same way:

    channels-lite publish --group chat-lobby '{"type": "chat.message", "name": "ops", "text": "hi"}'

FastAPI is Starlette underneath: its ``WebSocket`` has the same ``scope``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

logger = logging.getLogger("starlette_chat")

PAGE = (Path(__file__).parent / "chat.html").read_text()
ROOM = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_NAME = 32
MAX_TEXT = 2000
PID = os.getpid()


def clean_name(raw: str) -> str:
    """A display name: trimmed, at most MAX_NAME characters, never empty."""
    return " ".join(raw.split())[:MAX_NAME] or "guest"


def parse_text(frame: str | None) -> str:
    """The text of a client frame ``{"text": "..."}``; ValueError says what is wrong."""
    if frame is None:
        raise ValueError('send text frames of JSON: {"text": "..."}')
    try:
        data = json.loads(frame)
    except ValueError:
        raise ValueError('not JSON: send {"text": "..."}') from None
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ValueError('"text" must be a non-empty string')
    if len(text) > MAX_TEXT:
        raise ValueError(f"a message has at most {MAX_TEXT} characters")
    return text


def to_client(event: dict[str, Any]) -> dict[str, Any] | None:
    """What a group message becomes on the socket (None: not one of ours)."""
    kind = event.get("type")
    name = str(event.get("name") or "server")
    worker = event.get("worker")  # absent when posted from outside the deployment
    if kind == "chat.message" and isinstance(event.get("text"), str):
        return {"type": "message", "name": name, "text": event["text"], "worker": worker}
    if kind == "chat.join":
        return {"type": "join", "name": name, "worker": worker}
    if kind == "chat.leave":
        return {"type": "leave", "name": name}
    return None


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"Hello from Starlette on worker {PID}\n")


async def chat(websocket: WebSocket) -> None:
    room = websocket.path_params["room"]
    if not ROOM.fullmatch(room):
        await websocket.close(code=1008)  # before accept: the handshake gets 403
        return
    name = clean_name(websocket.query_params.get("name", ""))
    layer: Any = websocket.scope["channel_layer"]
    channel: str = websocket.scope["channel_name"]
    group = f"chat-{room}"
    await websocket.accept()
    welcome = {"type": "welcome", "room": room, "name": name, "worker": PID}
    await websocket.send_json({**welcome, "framework": "Starlette"})
    await layer.group_add(group, channel)
    try:
        await layer.group_send(group, {"type": "chat.join", "name": name, "worker": PID})
        async with anyio.create_task_group() as tg:
            tg.start_soon(_relay, websocket, layer, channel, tg.cancel_scope)
            await _read(websocket, layer, group, name)
            tg.cancel_scope.cancel()
    finally:
        # Shielded, and bounded: the room must forget this socket even when
        # we are cancelled (worker shutdown), but not hang on a dead broker.
        with anyio.move_on_after(5, shield=True):
            await layer.group_discard(group, channel)
            await layer.group_send(group, {"type": "chat.leave", "name": name})


async def _read(websocket: WebSocket, layer: Any, group: str, name: str) -> None:
    """The client's frames, until it leaves: each one a message to the room."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            text = parse_text(message.get("text"))
        except ValueError as exc:  # the sender hears why; the socket stays open
            await websocket.send_json({"type": "error", "error": str(exc)})
            continue
        event = {"type": "chat.message", "name": name, "text": text, "worker": PID}
        await layer.group_send(group, event)


async def _relay(websocket: WebSocket, layer: Any, channel: str, done: anyio.CancelScope) -> None:
    """The room's messages to the client, until the client is gone."""
    try:
        while True:
            # Cancellation point: a message not yet received stays in Redis.
            event = await layer.receive(channel)
            out = to_client(event)
            if out is None:
                logger.warning("ignored a group message of type %r", event.get("type"))
                continue
            await websocket.send_json(out)
    except WebSocketDisconnect:
        done.cancel()  # the client left while we sent: stop reading too


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/hello", hello),
        WebSocketRoute("/ws/chat/{room}/", chat),
    ]
)
