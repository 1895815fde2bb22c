"""A connection started by a worker that dies before its claim arrives.

Why: a worker acks a connection (from then on nobody else will run it)
before the protocol server hears who took it. If the worker dies in between,
the server cannot tell which heartbeat to watch: it waits ``queue_timeout``
twice and gives up. ``bench/soak.py`` caught what happened when the client
had left by then: the server tried to tell the (unknown) worker, failed on
the empty channel name, and logged the failure as an exception of the ASGI
application. The client is gone either way; the server must end such a
connection quietly and serve on.

The dying worker is a raw Redis client doing what a worker does up to
that point: ``XREADGROUP`` the connect entry, ``XACK`` + ``XDEL`` it, then
nothing.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from channels_lite import keys

from .conftest import Deploy

pytestmark = pytest.mark.anyio


async def test_a_client_that_left_before_the_server_gave_up(deploy: Deploy, redis_url: str) -> None:
    deployment = deploy(app=None, server_args=("--queue-timeout", "0.5"))
    server = deployment.servers[0]
    stream = keys.connect_stream("asgi")
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with (
            httpx.AsyncClient(base_url=deployment.url) as client,
            anyio.create_task_group() as tg,
        ):

            async def impatient() -> None:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get("/", timeout=httpx.Timeout(5, read=0.3))

            tg.start_soon(impatient)
            with anyio.fail_after(5):
                reply = await raw.xreadgroup(
                    keys.WORKERS_GROUP, "doomed", {stream: ">"}, count=1, block=5000
                )
            [(_, [(entry_id, _)])] = reply
            await raw.xack(stream, keys.WORKERS_GROUP, entry_id)  # started...
            await raw.xdel(stream, entry_id)  # ...and then the worker died
        # The server gives up after twice the queue timeout, the client long
        # gone; the access line is written when it is done with the request.
        await anyio.to_thread.run_sync(server.wait_for, r'"GET / HTTP/1.1"', 10)
        # And it serves on (no worker now: a clean 503 after the queue timeout).
        async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
            response = await client.get("/")
        assert (response.status_code, response.text) == (503, "No worker available\n")
    finally:
        await raw.aclose()
    assert "Exception in ASGI application" not in server.log()
    assert "Traceback" not in server.log()
