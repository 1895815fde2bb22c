"""The one connection the relay's quick commands share (channels_lite/layer/_mux.py).

Why: every appended message, offer, ack and delete of the runtime goes
through it, pipelined, with replies matched to callers by order alone. A
reply handed to the wrong caller would deliver one connection's outcome to
another; a connection that broke silently would hang every caller. Real
Redis servers throughout; a private one where the test kills it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from channels_lite.layer._mux import Multiplexed
from tests._redis import RedisServer

pytestmark = pytest.mark.anyio

#: A script that keeps Redis busy for a moment (no DEBUG SLEEP: it is off by default).
_BUSY = """
local t = redis.call('TIME')
local until_us = t[1] * 1000000 + t[2] + tonumber(ARGV[1])
repeat
  local now = redis.call('TIME')
until now[1] * 1000000 + now[2] >= until_us
return 'done'
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _connections(client: aioredis.Redis) -> int:
    return len(await client.client_list())


async def test_concurrent_commands_get_their_own_replies_on_one_connection(
    client: aioredis.Redis,
) -> None:
    mux = Multiplexed(client)
    before = await _connections(client)
    await asyncio.gather(*(mux.execute("SET", f"test:mux:{i}", f"v{i}") for i in range(300)))
    replies = await asyncio.gather(*(mux.execute("GET", f"test:mux:{i}") for i in range(300)))
    assert replies == [f"v{i}".encode() for i in range(300)]
    assert await _connections(client) == before + 1
    await mux.close()


async def test_an_error_reply_fails_only_its_own_command(client: aioredis.Redis) -> None:
    mux = Multiplexed(client)
    results = await asyncio.gather(
        mux.execute("SET", "test:mux:a", "1"),
        mux.execute("EVALSHA", "0" * 40, 0),  # no such script
        mux.execute("INCR", "test:mux:a"),
        return_exceptions=True,
    )
    assert results[0] == b"OK"
    assert isinstance(results[1], redis.exceptions.NoScriptError)
    assert results[2] == 2
    assert await mux.execute("GET", "test:mux:a") == b"2"  # the connection carries on
    await mux.close()


async def test_a_cancelled_caller_leaves_the_others_their_replies(
    client: aioredis.Redis,
) -> None:
    mux = Multiplexed(client)
    await mux.execute("SET", "test:mux:b", "mine")
    busy = asyncio.ensure_future(mux.execute("EVAL", _BUSY, 0, 200_000))  # 0.2 s in Redis
    after = asyncio.ensure_future(mux.execute("GET", "test:mux:b"))
    await asyncio.sleep(0.05)  # both written; the script is running
    busy.cancel()
    with anyio.fail_after(5):
        assert await after == b"mine"  # not the cancelled script's 'done'
    assert busy.cancelled()
    assert await mux.execute("GET", "test:mux:b") == b"mine"
    await mux.close()


async def test_a_broken_connection_fails_its_callers_and_the_next_command_reconnects(
    private_redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(private_redis.url)
    mux = Multiplexed(client)
    try:
        assert await mux.execute("PING") == b"PONG"
        waiting = asyncio.ensure_future(mux.execute("EVAL", _BUSY, 0, 2_000_000))
        await asyncio.sleep(0.1)
        private_redis.kill()
        with anyio.fail_after(5), pytest.raises(redis.exceptions.ConnectionError):
            await waiting  # fails at once, not at some timeout
        with anyio.fail_after(5), pytest.raises(redis.exceptions.ConnectionError):
            await mux.execute("PING")  # nobody listens: refused
        private_redis.start()
        with anyio.fail_after(5):
            await mux.execute("SET", "test:mux:c", "back")
            assert await mux.execute("GET", "test:mux:c") == b"back"
    finally:
        await mux.close()
        await client.aclose()


async def _poll(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Wait (at most 5 s) until ``await predicate()`` is true."""
    with anyio.fail_after(5):
        while not await predicate():  # noqa: ASYNC110 (Redis offers no event)
            await asyncio.sleep(0.01)


async def test_a_caller_cancelled_while_connecting_does_not_spoil_a_later_reconnect(
    client: aioredis.Redis,
) -> None:
    # The only caller waiting for the first connection gives up (a request
    # cancelled at start-up); the connection opens anyway and serves. When it
    # later breaks, the next commands must reconnect, not reuse the dead one.
    mux = Multiplexed(client)
    first = asyncio.ensure_future(mux.execute("PING"))
    await asyncio.sleep(0)  # it now waits for the connection being opened
    first.cancel()

    async def opened() -> bool:
        # White-box, for the timing only: another command while the
        # connection is still opening would wait for it too, and hide the bug.
        return mux._conn is not None

    await _poll(opened)
    try:
        mux_id = await mux.execute("CLIENT", "ID")
        await client.client_kill_filter(_id=mux_id)
        with anyio.fail_after(5):
            while True:
                try:
                    assert await mux.execute("PING") == b"PONG"
                    break
                except redis.exceptions.ConnectionError:
                    await asyncio.sleep(0.01)  # broken, not yet noticed: next one reconnects
        assert await mux.execute("CLIENT", "ID") != mux_id
    finally:
        await mux.close()


async def test_close_while_connecting_leaves_no_connection_open(client: aioredis.Redis) -> None:
    # layer.close() at shutdown while a command waits for the connection:
    # the connection must not open behind close()'s back and stay open.
    mux = Multiplexed(client)
    before = await _connections(client)
    waiting = asyncio.ensure_future(mux.execute("PING"))
    await asyncio.sleep(0)  # waiting for the connection being opened
    await mux.close()
    with anyio.fail_after(5):
        with pytest.raises(redis.exceptions.ConnectionError):
            await waiting
    with pytest.raises(redis.exceptions.ConnectionError):
        await mux.execute("PING")  # closed is closed: nothing reopens

    async def closed() -> bool:
        return await _connections(client) == before

    await _poll(closed)


async def test_a_socket_timeout_does_not_drop_an_idle_connection(redis_url: str) -> None:
    # socket_timeout may come with the URL; idle, the shared connection waits
    # for nothing and must not be dropped (and reopened) after every quiet spell.
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.3)
    mux = Multiplexed(client)
    try:
        first = await mux.execute("CLIENT", "ID")
        await anyio.sleep(1.0)  # more than three timeouts, with nothing waiting
        assert await mux.execute("CLIENT", "ID") == first
    finally:
        await mux.close()
        await client.aclose()
