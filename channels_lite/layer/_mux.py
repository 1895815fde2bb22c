"""One Redis connection shared by every quick command of an event loop.

redis-py's pool gives each command in flight a connection of its own: every
command pays for taking and returning one, and each reply is a read of its
own. In a micro-benchmark of 50 concurrent callers here, a command cost 50
us of the caller's CPU that way, against 11 us when the commands of a loop
share one connection and its replies are read in order as they come. (The
runtime coalesces most of its commands already, so a protocol server and a
worker under 200 clients held about 10 connections before, 7 after.)

So the relay's quick commands (appends, offers, acks, deletes: none blocks
in Redis) go through a :class:`Multiplexed` connection: each is written at
once, in the order called, and one reader task hands out the replies in the
same order. Blocking reads (``XREAD BLOCK``, ``XREADGROUP BLOCK``) would
hold up every reply queued behind them, so they stay on the pool.

The connection is redis-py's own (the pool's ``make_connection``), so the
URL's TLS, AUTH, ACL user and database apply unchanged. When it breaks,
every command waiting on it fails with the connection error (the callers
map it to ``BrokerUnavailable``) and the next command opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)


class Multiplexed:
    """Pipelined commands on one connection of ``client``'s pool, replies in order."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._conn: Any = None  # redis.asyncio.Connection, once connected
        self._connecting: asyncio.Future[Any] | None = None  # settled when opened (or not)
        self._opener: asyncio.Task[Any] | None = None  # the task opening it
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        # Packed commands of this loop turn after its first, not yet written;
        # None when no command has been written this turn.
        self._out: list[bytes] | None = None
        self._closed = False  # close() was called: nothing opens again

    async def execute(self, *args: Any) -> Any:
        """Send one command; return its reply (raise its error).

        Cancellation: the command may or may not have been written; its
        reply, when it comes, is dropped. The connection is unaffected.
        """
        conn = self._conn
        if conn is None:
            conn = await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # Queued for writing and for its reply in one step, with no await
        # between: the order of the writes is the order of the replies.
        # The first command of a loop turn is written at once (the lowest
        # latency when idle); those after it in the same turn wait for the
        # turn's end and leave together, in one write.
        packed = conn.pack_command(*args)
        if self._out is None:
            conn._writer.writelines(packed)
            self._out = []
            loop.call_soon(self._write, conn)
        else:
            self._out.extend(packed)
        self._pending.append(future)
        return await future

    #: The name redis-py's clients give it: callers need not tell the two apart.
    execute_command = execute

    def _write(self, conn: Any) -> None:
        out, self._out = self._out, None
        if out and conn is self._conn:
            conn._writer.writelines(out)
        # else nothing came after the first, or the connection broke
        # meanwhile (its commands have failed)

    async def _connect(self) -> Any:
        if self._closed:
            raise RedisConnectionError("the quick-command connection is closed")
        connecting = self._connecting
        if connecting is None:
            # A future of our own, settled when the opening ends, whoever
            # still waits: were it left to the waiters to forget, a connect
            # whose callers were all cancelled would stay, and hand out its
            # connection again after that one broke.
            connecting = self._connecting = asyncio.get_running_loop().create_future()
            opener = self._opener = asyncio.ensure_future(self._open())
            opener.add_done_callback(functools.partial(self._opened, connecting))
        # Shared: concurrent first commands wait for the same connection.
        conn = await asyncio.shield(connecting)
        if conn is not self._conn:
            # Broke (or was closed) between opening and this caller waking:
            # its writer is gone, and a reply on it would match no one.
            raise RedisConnectionError("the quick-command connection closed as it opened")
        return conn

    def _opened(self, connecting: asyncio.Future[Any], opener: asyncio.Task[Any]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if self._opener is opener:
            self._opener = None
        if opener.cancelled():
            # close() (or the loop's end) stopped it: the waiters fail as on
            # a connection that broke, not as if they had been cancelled.
            exc: BaseException | None = RedisConnectionError(
                "the quick-command connection is closed"
            )
        else:
            exc = opener.exception()
        if exc is None:
            connecting.set_result(opener.result())
        else:
            connecting.set_exception(exc)
            connecting.exception()  # marked seen: a failure nobody waits for is no warning

    async def _open(self) -> Any:
        conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.connect()  # the pool's settings: TLS, AUTH, database
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)  # a socket opened before the failure
            raise
        if self._closed:
            await conn.disconnect()
            raise RedisConnectionError("the quick-command connection is closed")
        self._conn = conn
        self._reader = asyncio.ensure_future(self._read(conn))
        return conn

    async def _read(self, conn: Any) -> None:
        """Hand out the replies in order until the connection fails."""
        pending = self._pending
        try:
            while True:
                try:
                    # Idle, the connection waits for nothing: no timeout (a
                    # socket_timeout in the URL would otherwise drop it after
                    # every quiet spell, and fail a command written just as it
                    # fired). With commands waiting, the configured one applies
                    # (None: TCP keepalive finds a dead peer, as on the pool).
                    reply = await conn.read_response(timeout=None if pending else math.inf)
                except ResponseError as exc:
                    reply = exc
                future = pending.popleft()
                if future.done():
                    continue  # its caller was cancelled
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except Exception as exc:
            # Broken (Redis restarted, the network failed): the next command
            # opens a new connection; those waiting on this one fail.
            logger.debug("quick-command connection lost: %s", exc)
            self._fail(conn, exc)
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        except BaseException:
            self._fail(conn, RedisConnectionError("connection closed"))
            raise

    def _fail(self, conn: Any, exc: BaseException) -> None:
        if self._conn is conn:
            self._conn = None
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        """Close the connection; commands still waiting fail, later ones too."""
        self._closed = True
        opener = self._opener
        if opener is not None:
            # Not left to open behind our back (and serve on, unclosed).
            opener.cancel()
            await asyncio.gather(opener, return_exceptions=True)
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if conn is not None:
            await conn.disconnect()
