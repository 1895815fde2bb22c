"""The quick-start app: a page, a WebSocket echo and a chat room, on Starlette.

    channels-lite run hello_app:app --app-dir examples

then open http://127.0.0.1:8000 in two browser tabs. ``/`` is plain HTTP;
``/ws`` echoes every message; ``/chat`` joins the group ``chat`` through the
channel layer the worker puts in ``scope["channel_layer"]`` (the socket's own
channel is ``scope["channel_name"]``), so a message typed in one tab reaches
every tab, whichever worker process runs it.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PAGE = """<!doctype html>
<meta charset="utf-8"><title>channels-lite</title>
<h1>Hello from channels-lite</h1>
<p>Served by worker process %(pid)d. Chat with every other tab:</p>
<form id="f"><input id="m" autocomplete="off" autofocus> <button>send</button></form>
<pre id="log"></pre>
<script>
const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/chat");
const log = (text) => document.getElementById("log").textContent += text + "\\n";
ws.onmessage = (event) => log(event.data);
ws.onclose = (event) => log("(closed: " + event.code + ")");
document.getElementById("f").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("m");
  ws.send(input.value);
  input.value = "";
};
</script>
"""


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE % {"pid": os.getpid()})


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def chat(websocket: WebSocket) -> None:
    layer: Any = websocket.scope["channel_layer"]
    channel: str = websocket.scope["channel_name"]
    await websocket.accept()
    await layer.group_add("chat", channel)
    try:
        async with anyio.create_task_group() as tg:

            async def relay_group() -> None:
                while True:
                    message = await layer.receive(channel)
                    await websocket.send_text(message["text"])

            tg.start_soon(relay_group)
            try:
                while True:
                    text = await websocket.receive_text()
                    await layer.group_send("chat", {"type": "chat.message", "text": text})
            except WebSocketDisconnect:
                pass
            tg.cancel_scope.cancel()
    finally:
        # Shielded: the group must forget this channel even if we are cancelled.
        with anyio.CancelScope(shield=True):
            await layer.group_discard("chat", channel)


app = Starlette(
    routes=[Route("/", homepage), WebSocketRoute("/ws", echo), WebSocketRoute("/chat", chat)]
)
