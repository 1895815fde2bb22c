"""The smallest whole deployment: one protocol server, two workers, real clients."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect

from .conftest import Deploy

pytestmark = pytest.mark.anyio


async def test_http_and_websocket_through_two_workers(deploy: Deploy) -> None:
    deployment = deploy("echo:app", workers=2)
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        response = await client.post("/hello?x=1", content=b"payload")
    assert response.status_code == 200
    info = response.json()
    assert (info["method"], info["path"], info["query_string"]) == ("POST", "/hello", "x=1")
    assert info["body_size"] == 7
    assert info["state_pid"] == info["worker_pid"]  # lifespan state reached the request
    async with connect(deployment.ws_url + "/ws") as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"
