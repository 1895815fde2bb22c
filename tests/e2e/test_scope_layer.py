"""Apps reach the channel layer and their own channel name through the scope."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from channels_lite.layer import RedisStreamsChannelLayer

from .conftest import Deploy

pytestmark = pytest.mark.anyio


async def test_http_scope_has_layer_and_a_fresh_channel(deploy: Deploy) -> None:
    deployment = deploy("layer_app:app", workers=1)
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        first = (await client.get("/whoami")).json()
        second = (await client.get("/whoami")).json()
    assert first["has_layer"] is True
    assert "!" in first["channel_name"]  # process-specific, as new_channel() gives
    assert first["channel_name"] != second["channel_name"]


async def test_app_environment_names_the_workers_broker(deploy: Deploy) -> None:
    # The worker's own settings, however given, are what the app's clients
    # (a Django CHANNEL_LAYERS reading CHANNELS_LITE_REDIS_URL) find: here an
    # option that overrides a stale variable.
    deployment = deploy(None, server_args=("--prefix", "other"))
    deployment.add_worker(
        "layer_app:app",
        "--prefix",
        "other",
        env={"CHANNELS_LITE_REDIS_URL": "redis://127.0.0.1:1/0", "CHANNELS_LITE_PREFIX": "asgi"},
    )
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        seen = (await client.get("/whoami")).json()
    assert seen["env_redis_url"] == deployment.redis_url
    assert seen["env_prefix"] == "other"


async def test_starlette_websockets_chat_across_workers_and_from_outside(
    deploy: Deploy, redis_url: str
) -> None:
    # concurrency 1: the two sockets must land on different worker processes.
    deployment = deploy("layer_app:app", workers=2, worker_args=("--concurrency", "1"))
    async with (
        connect(deployment.ws_url + "/chat") as alice,
        connect(deployment.ws_url + "/chat") as bob,
    ):
        with anyio.fail_after(10):
            joined = [json.loads(await alice.recv()), json.loads(await bob.recv())]
        assert joined[0]["pid"] != joined[1]["pid"]

        await alice.send("hello from alice")
        with anyio.fail_after(10):
            for ws in (alice, bob):
                assert json.loads(await ws.recv())["text"] == "hello from alice"

        # An external service publishes to the same group with the layer alone.
        publisher = RedisStreamsChannelLayer(hosts=[redis_url])
        try:
            await publisher.group_send("room", {"type": "chat.message", "text": "from outside"})
        finally:
            await publisher.close()
        with anyio.fail_after(10):
            for ws in (alice, bob):
                assert json.loads(await ws.recv())["text"] == "from outside"
