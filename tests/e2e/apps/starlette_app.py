"""A Starlette app for the framework tests: the same file runs under uvicorn and our workers.

Routes: ``/json`` (JSON, reads lifespan state and query params), ``/stream``
(a ``StreamingResponse`` in several chunks), ``/echo`` (echoes a JSON or
urlencoded form body), ``/status/{code}`` (any status, custom headers and a
cookie), ``/ws`` (a WebSocket echo endpoint). The lifespan puts a greeting and
a counter in ``state``; requests read them through ``request.state``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": "hello from lifespan", "settings": {"debug": False}}


async def json_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "greeting": request.state.greeting,
            "query": sorted(request.query_params.multi_items()),
            "path": request.url.path,
            "method": request.method,
            "user_agent": request.headers.get("user-agent"),
        }
    )


async def stream_endpoint(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("n", "5"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo_endpoint(request: Request) -> Response:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return JSONResponse({"kind": "json", "data": await request.json()})
    if content_type.startswith("application/x-www-form-urlencoded"):
        # Parsed by hand: request.form() needs python-multipart even for urlencoded.
        form = parse_qsl((await request.body()).decode(), keep_blank_values=True)
        return JSONResponse({"kind": "form", "data": form})
    body = await request.body()
    return PlainTextResponse(f"{len(body)} bytes of {content_type or 'nothing'}", status_code=415)


async def status_endpoint(request: Request) -> Response:
    code = int(request.path_params["code"])
    response = PlainTextResponse(f"status {code}\n", status_code=code, headers={"x-custom": "yes"})
    response.set_cookie("session", "abc123", httponly=True)
    return response


async def ws_endpoint(websocket: WebSocket) -> None:
    subprotocols = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=subprotocols[0] if subprotocols else None)
    await websocket.send_json({"greeting": websocket.state.greeting})
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            if message["text"] == "bye":
                await websocket.close(code=4000, reason="bye")
                return
            await websocket.send_text("echo: " + message["text"])
        else:
            await websocket.send_bytes(message["bytes"][::-1])


app = Starlette(
    routes=[
        Route("/json", json_endpoint),
        Route("/stream", stream_endpoint),
        Route("/echo", echo_endpoint, methods=["POST"]),
        Route("/status/{code:int}", status_endpoint, methods=["GET", "POST"]),
        WebSocketRoute("/ws", ws_endpoint),
    ],
    lifespan=lifespan,
)
