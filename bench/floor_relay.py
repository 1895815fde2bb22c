"""The floor: the least a Redis-relayed ASGI request can cost, for the HTTP benchmark.

A measuring instrument, not a product: the bare path the design brief describes
(uvicorn hosting a gateway app, one batched ``XADD`` pipeline per event-loop
turn, ``XREADGROUP`` with ``COUNT``, one task per request in the worker), with
nothing else. No flow control, no liveness, no ownership check before the app
runs, no limits, no validation of what comes off Redis, no access log, no
signing, HTTP only, one body chunk each way. channels-lite does all of those;
this says what the architecture itself costs on this machine, so the benchmark
can tell that cost from ours.

    python bench/floor_relay.py server hello:app --port 8001 --redis-url redis://HOST:PORT
    python bench/floor_relay.py worker hello:app --app-dir bench/apps --redis-url redis://HOST:PORT

The server ignores the app argument (it only relays); both take it so the two
command lines look alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import os
import secrets
import sys
from typing import Any

import hiredis
import msgpack
import uvicorn

STREAM = "floor:connect"
GROUP = "workers"
#: Streams are trimmed to about this many entries on every append.
MAXLEN = 10_000

Message = dict[str, Any]


def command(*args: Any) -> bytes:
    """One Redis command in RESP, the protocol's own framing."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection:
    """A raw connection to Redis: RESP out, hiredis's parser in. Nothing else."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, _, port = url.split("//", 1)[1].split("/", 1)[0].rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def call(self, *args: Any) -> Any:
        """One command, one reply (the blocking reads have a connection each)."""
        self.writer.write(command(*args))
        return await self.reply()

    async def reply(self) -> Any:
        while (reply := self.parser.gets()) is False:
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.parser.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply


class Batch:
    """Commands gathered during one loop turn, written in one go at its end.

    Their replies are read (and checked) by a task of their own.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.commands: list[bytes] = []
        self.unanswered = 0
        self.replied = asyncio.Event()
        self.drainer = asyncio.ensure_future(self._drain())

    def add(self, *args: Any) -> None:
        if not self.commands:
            asyncio.get_running_loop().call_soon(self._flush)
        self.commands.append(command(*args))

    def _flush(self) -> None:
        commands, self.commands = self.commands, []
        self.connection.writer.write(b"".join(commands))
        self.unanswered += len(commands)
        self.replied.set()

    async def _drain(self) -> None:
        while True:
            while not self.unanswered:
                self.replied.clear()
                await self.replied.wait()
            await self.connection.reply()
            self.unanswered -= 1


class Gateway:
    """The server side: forward each request, wait for its one reply entry."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.reply = f"floor:reply:{secrets.token_hex(4)}"
        self.pending: dict[int, asyncio.Future[list[Any]]] = {}
        self.ids = itertools.count()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        first = await receive()
        number = next(self.ids)
        reply = self.pending[number] = asyncio.get_running_loop().create_future()
        request = {
            "id": number,
            "reply": self.reply,
            "scope": {key: scope[key] for key in _SCOPE_KEYS},
            "body": first.get("body", b""),
        }
        self.batch.add("XADD", STREAM, "MAXLEN", "~", MAXLEN, "*", "d", msgpack.packb(request))
        start, body = await reply
        await send(start)
        await send(body)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await receive()
        self.batch = Batch(await Connection.open(self.redis_url))
        reader = asyncio.ensure_future(self._read())
        await send({"type": "lifespan.startup.complete"})
        await receive()
        reader.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def _read(self) -> None:
        blocking = await Connection.open(self.redis_url)  # its own connection: it blocks
        last: bytes | str = "$"
        while True:
            read = await blocking.call(
                "XREAD", "COUNT", 1000, "BLOCK", 0, "STREAMS", self.reply, last
            )
            for _, entries in read:
                for entry_id, fields in entries:
                    last = entry_id
                    number, start, body = msgpack.unpackb(fields[1])
                    future = self.pending.pop(number, None)
                    if future is not None and not future.done():
                        future.set_result([start, body])


#: The scope keys channels-lite relays too (``channels_lite/relay.py``), kept
#: here on purpose: the floor imports nothing of ours.
_SCOPE_KEYS = (
    "type",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
)


async def work(redis_url: str, app: Any, concurrency: int) -> None:
    """The worker side: take requests as slots allow, run the app, batch the replies."""
    taker = await Connection.open(redis_url)  # its own connection: it blocks
    with contextlib.suppress(hiredis.ReplyError):  # BUSYGROUP: another worker made it
        await taker.call("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM")
    batch = Batch(await Connection.open(redis_url))
    name = secrets.token_hex(4)
    active = 0
    slot_freed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    state: dict[str, Any] = {}

    async def run(entry_id: bytes, request: dict[str, Any]) -> None:
        nonlocal active
        scope = request["scope"]
        scope["asgi"] = {"version": "3.0"}
        scope["state"] = dict(state)
        events = [{"type": "http.request", "body": request["body"], "more_body": False}]
        parts: list[Message] = []

        async def receive() -> Message:
            if events:
                return events.pop()
            await asyncio.Event().wait()  # nothing more comes in the floor
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            parts.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                reply = msgpack.packb([request["id"], *parts])
                batch.add("XADD", request["reply"], "MAXLEN", "~", MAXLEN, "*", "d", reply)
                batch.add("XACK", STREAM, GROUP, entry_id)

        try:
            await app(scope, receive, send)
        finally:
            active -= 1
            slot_freed.set()

    while True:
        free = concurrency - active
        if free <= 0:
            slot_freed.clear()
            await slot_freed.wait()
            continue
        taken = await taker.call(
            "XREADGROUP", "GROUP", GROUP, name, "COUNT", free, "BLOCK", 1000, "STREAMS", STREAM, ">"
        )
        for _, entries in taken or ():
            for entry_id, fields in entries:
                active += 1
                task = asyncio.ensure_future(run(entry_id, msgpack.unpackb(fields[1])))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.sleep(0)  # the apps just started run before the next take


def load(spec: str, app_dir: str) -> Any:
    sys.path.insert(0, os.path.abspath(app_dir))
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("role", choices=("server", "worker"))
    parser.add_argument("app")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--app-dir", default=".")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    if args.role == "server":
        gateway = Gateway(args.redis_url)
        uvicorn.run(
            gateway,
            host="127.0.0.1",
            port=args.port,
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
    else:
        asyncio.run(work(args.redis_url, load(args.app, args.app_dir), args.concurrency))


if __name__ == "__main__":
    main()
