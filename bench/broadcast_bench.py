"""Broadcast latency: one group_send to 1,000 WebSocket clients over two protocol servers.

Ours: a private ``redis-server``, 2 protocol servers and 2 workers
(``python -m channels_lite``) running ``tests/e2e/apps/layer_app.py``, whose
``/chat`` WebSocket joins group ``room`` and relays each group message to its
client; the bench publishes with :class:`channels_lite.client.AsyncPublisher`.

The peer, in the same invocation (these machines are shared and noisy, so only
a ratio measured side by side means much): what a user would deploy instead,
2 uvicorn processes serving the Django Channels app ``bench/apps/channels_peer.py``
in-process, with channels_redis's ``RedisChannelLayer`` on another database of
the same Redis; the bench publishes with that layer's ``group_send``.
``--no-peer`` skips it; ``--rounds N`` alternates the two N times (in turn
first) and reports medians over the rounds.

For each system the bench opens the clients (round-robin over the servers),
waits until every one has joined the group, then publishes ``--messages``
messages, ``--interval`` to 2 x ``--interval`` seconds apart (the same
pseudo-random schedule for every run, ``--seed``), each carrying its publish
time. Every client must get every message once, in order. ``--burst``
publishes back to back instead, which measures fan-out throughput (its
latencies are queueing).

The clients are a load generator, like wrk for HTTP: a minimal RFC 6455
client per connection (an asyncio Protocol: handshake, frame parsing, pong,
close) that records when each complete text message arrived and parses it
only after the run. It offers no permessage-deflate, like most non-browser
clients, so what is measured is our system rather than zlib in the clients.
``--deflate`` uses the ``websockets`` library's clients instead, which offer
permessage-deflate as browsers do (the servers agree by default), to measure
what compression costs end to end. The clients run in ``--client-procs``
processes (default 1, besides this one, which only publishes); the client
processes share the two cores with the systems measured.

Reported, per system: median, p90, p99 and max delivery latency over all
deliveries, deliveries per second (deliveries / (last delivery - first
publish)), deliveries missing, duplicated, out of order; then ours / peer,
and ours against the aims (median <= 20 ms, p99 <= 100 ms).

    python bench/broadcast_bench.py [--clients 1000] [--messages 50] [--interval 0.05]
                                    [--burst] [--rounds 1] [--no-peer] [--deflate]
                                    [--client-procs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "e2e" / "apps"
BENCH_APPS = ROOT / "bench" / "apps"
PY = sys.executable
LISTENING = re.compile(r"listening on [^\s]+:(\d+)")
UVICORN_RUNNING = re.compile(r"Uvicorn running on http://[^\s]+:(\d+)")
AIM_MEDIAN_MS = 20.0
AIM_P99_MS = 100.0
#: Handshakes in flight at once while opening the clients (the accept
#: backlog), in all: shared out between the client processes, so that more
#: processes do not make a harsher connection storm (the peer's consumers
#: fail under 200 at once).
OPEN_AT_ONCE = 100
#: Seconds every client gets to have every message, after the last publish.
DELIVERY_TIMEOUT = 60.0

# Every timestamp is time.monotonic(): CLOCK_MONOTONIC on Linux, one clock for
# the whole machine, so a publish time taken in this process and a receive
# time taken in a client process can be subtracted. (time.perf_counter() is
# CLOCK_MONOTONIC too on Linux, but Python documents it as per-process;
# time.time() can be stepped by NTP in the middle of a run.)
now = time.monotonic


# ----------------------------------------------------------------------
# The lean client: a load generator's WebSocket client (RFC 6455)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_MESSAGE = 1 << 20
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (RFC 6455 5.3), as one big int."""
    size = len(payload)
    if not size:
        return b""
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        size, "little"
    )


def _frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (a client must mask every frame: 5.1)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class LeanClient(asyncio.Protocol):
    """One WebSocket connection that reads a server's messages and records when they came.

    It speaks enough of RFC 6455 to be correct as a client: the opening
    handshake (``Sec-WebSocket-Key``, the answer's ``Sec-WebSocket-Accept``
    checked, no extension or subprotocol offered, so none may be answered),
    server frames with 7-, 16- and 64-bit lengths, fragmented messages, control
    frames between fragments, Ping answered with Pong, Close answered with
    Close; its own frames masked. A violation by the server is recorded in
    ``error`` and closes the connection (1002, or 1009 for a message over
    1 MiB). What it does not do, for speed: validate UTF-8 (the bench decodes
    every message after the run, which would fail on invalid text).

    The first text message is ``joined`` (the app's greeting); each later one
    is appended to ``received`` as ``(receive time, payload)``, the time taken
    once per read from the socket; ``on_complete`` is called when there are
    ``expect`` of them.
    """

    def __init__(self, host: str, target: str, expect: int, on_complete: Callable[[], None]):
        loop = asyncio.get_running_loop()
        self._key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._expect = expect
        self._on_complete = on_complete
        self.opened: asyncio.Future[None] = loop.create_future()
        self.joined: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.received: list[tuple[float, bytes]] = []
        self.binary = 0
        self.error: str | None = None
        self.close_code: int | None = None
        self._transport: asyncio.Transport | None = None
        self._handshaking = True
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragments_opcode = 0  # 0: no fragmented message in progress
        self._fragments_size = 0
        self._close_sent = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        self._transport = cast(asyncio.Transport, transport)
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        received_at = now()
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        if self._handshaking:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    self._fail(1002, "handshake response over 16 KiB")
                else:
                    self._buffer += data
                return
            problem = self._check_handshake(data[:end])
            if problem is not None:
                self._fail(1002, problem)
                return
            self._handshaking = False
            self.opened.set_result(None)
            data = data[end + 4 :]
        self._read_frames(data, received_at)

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionError(f"connection lost: {exc or self.error or 'closed by the server'}")
        for future in (self.opened, self.joined):
            if not future.done():
                future.set_exception(lost)
                future.exception()  # retrieved: whoever awaits it sees it, nobody else warns
        if self.close_code is None and not self._close_sent and self.error is None:
            self.error = "connection lost without a closing handshake"
        if not self.closed.done():
            self.closed.set_result(None)

    # Sending

    def close(self, code: int = 1000) -> asyncio.Future[None]:
        """Start the closing handshake; the future resolves when the server has closed TCP."""
        self._send_close(code.to_bytes(2, "big"))
        return self.closed

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_frame(opcode, payload))

    def _send_close(self, payload: bytes) -> None:
        if not self._close_sent and not self._handshaking:
            self._close_sent = True
            self._send(_CLOSE, payload)

    def _fail(self, code: int, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self._send_close(code.to_bytes(2, "big"))
        if self._transport is not None:
            self._transport.close()

    # Reading

    def _check_handshake(self, head: bytes) -> str | None:
        """What is wrong with the server's answer to the opening handshake, if anything."""
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "101":
            return f"handshake answered {lines[0]!r}"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                return f"malformed header line {line!r}"
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            return f"Upgrade: {headers.get('upgrade')!r}"
        tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        if "upgrade" not in tokens:
            return f"Connection: {headers.get('connection')!r}"
        accept = headers.get("sec-websocket-accept")
        if accept != self._accept:
            return f"Sec-WebSocket-Accept {accept!r}, not {self._accept!r}"
        for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
            if name in headers:
                return f"{name}: {headers[name]!r} answered, none offered"
        return None

    def _read_frames(self, data: bytes, received_at: float) -> None:
        pos, size = 0, len(data)
        while size - pos >= 2 and self.error is None:
            first, second = data[pos], data[pos + 1]
            length, start = second & 0x7F, pos + 2
            if length == 126:
                if size - start < 2:
                    break
                length, start = int.from_bytes(data[start : start + 2], "big"), start + 2
            elif length == 127:
                if size - start < 8:
                    break
                length, start = int.from_bytes(data[start : start + 8], "big"), start + 8
            if second & 0x80:
                self._fail(1002, "a masked frame from the server")
                return
            if first & 0x70:
                self._fail(1002, "an RSV bit set, with no extension agreed")
                return
            if length > _MAX_MESSAGE:
                self._fail(1009, f"a {length}-byte frame")
                return
            end = start + length
            if end > size:
                break
            self._on_frame(bool(first & 0x80), first & 0x0F, data[start:end], received_at)
            pos = end
        if pos < size and self.error is None:
            self._buffer += data[pos:]

    def _on_frame(self, fin: bool, opcode: int, payload: bytes, received_at: float) -> None:
        if opcode & 0x8:  # control frames may come between a message's fragments
            if not fin or len(payload) > 125:
                self._fail(1002, "a fragmented or over-long control frame")
            elif opcode == _CLOSE:
                self._on_close(payload)
            elif opcode == _PING:
                self._send(_PONG, payload)
            elif opcode != _PONG:  # an unsolicited Pong is allowed, and ignored
                self._fail(1002, f"reserved opcode {opcode:#x}")
            return
        if self.close_code is not None:
            return  # nothing is read after a Close
        if opcode == _CONT:
            if not self._fragments_opcode:
                self._fail(1002, "a continuation frame with no message to continue")
                return
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if self._fragments_size > _MAX_MESSAGE:
                self._fail(1009, "a fragmented message over 1 MiB")
                return
            if not fin:
                return
            opcode, payload = self._fragments_opcode, b"".join(self._fragments)
            self._fragments, self._fragments_opcode, self._fragments_size = [], 0, 0
        elif opcode in (_TEXT, _BINARY):
            if self._fragments_opcode:
                self._fail(1002, "a new message inside a fragmented one")
                return
            if not fin:
                self._fragments, self._fragments_opcode = [payload], opcode
                self._fragments_size = len(payload)
                return
        else:
            self._fail(1002, f"reserved opcode {opcode:#x}")
            return
        if opcode == _BINARY:
            self.binary += 1
        elif not self.joined.done():
            self.joined.set_result(payload)
        else:
            self.received.append((received_at, payload))
            if len(self.received) == self._expect:
                self._on_complete()

    def _on_close(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._fail(1002, "a one-byte Close payload")
            return
        self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
        # Answer with the same code (5.5.1); the server then closes TCP (7.1.1).
        self._send_close(payload[:2])


async def open_lean(url: str, expect: int, on_complete: Callable[[], None]) -> LeanClient:
    """Connect, handshake and read the app's greeting; the client then records the rest."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: LeanClient(f"{host}:{port}", target, expect, on_complete), host, port
    )
    await client.opened
    await client.joined
    return client


# ----------------------------------------------------------------------
# The client processes


@dataclass(frozen=True)
class ClientJob:
    """What one client process does: open ``indexes`` (client i on ``urls[i % len]``)."""

    urls: tuple[str, ...]
    indexes: tuple[int, ...]
    messages: int
    deflate: bool
    procs: int  # client processes in all
    loop: str  # asyncio or uvloop


def clients_main(job: ClientJob, conn: Connection) -> None:
    """A client process: open, report, record until done or told to stop, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (and the deployment)
    try:
        if job.loop == "uvloop":
            import uvloop  # installed with uvicorn[standard]

            result = uvloop.run(_run_clients(job, conn))
        else:
            result = asyncio.run(_run_clients(job, conn))
    except BaseException as exc:
        os.set_blocking(conn.fileno(), True)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    # uvloop's add_reader leaves the pipe non-blocking, and a large result
    # then fails with EAGAIN half-written.
    os.set_blocking(conn.fileno(), True)
    conn.send(("result", result))


async def _run_clients(job: ClientJob, conn: Connection) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_parent() -> None:  # "stop": the parent's deadline passed
        loop.remove_reader(conn.fileno())
        stop.set()

    loop.add_reader(conn.fileno(), on_parent)
    remaining = len(job.indexes)
    all_done = asyncio.Event()

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            all_done.set()

    gate = asyncio.Semaphore(max(1, OPEN_AT_ONCE // job.procs))
    started = now()
    if job.deflate:
        session: _Session = await _WebsocketsSession.open(job, gate, one_done)
    else:
        session = await _LeanSession.open(job, gate, one_done)
    conn.send(("opened", {"pids": session.pids, "seconds": now() - started}))
    cpu_from = time.process_time()

    waits = [asyncio.ensure_future(all_done.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    cpu = time.process_time() - cpu_from  # receiving only: parsing comes after
    for task in waits:
        task.cancel()
    await asyncio.sleep(0.5)  # let any extra delivery already on its way show up
    records, errors = session.records(), session.errors()
    await session.close()
    return {**summarize(records, job.messages, errors), "cpu_seconds": cpu}


class _Session:
    """The clients of one process, whichever kind."""

    pids: dict[int, int]

    def records(self) -> list[list[tuple[float, str | bytes]]]:
        raise NotImplementedError

    def errors(self) -> list[str]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def _count_pid(pids: dict[int, int], joined: str | bytes) -> None:
    pid = json.loads(joined)["pid"]
    pids[pid] = pids.get(pid, 0) + 1


class _LeanSession(_Session):
    def __init__(self, clients: list[LeanClient], pids: dict[int, int]) -> None:
        self.clients, self.pids = clients, pids

    @classmethod
    async def open(
        cls, job: ClientJob, gate: asyncio.Semaphore, one_done: Callable[[], None]
    ) -> _LeanSession:
        pids: dict[int, int] = {}

        async def open_one(i: int) -> LeanClient:
            async with gate, asyncio.timeout(60):
                client = await open_lean(job.urls[i % len(job.urls)], job.messages, one_done)
            _count_pid(pids, client.joined.result())
            return client

        return cls(list(await asyncio.gather(*(open_one(i) for i in job.indexes))), pids)

    def records(self) -> list[list[tuple[float, str | bytes]]]:
        return [list(client.received) for client in self.clients]

    def errors(self) -> list[str]:
        errors = [c.error for c in self.clients if c.error is not None]
        errors += [f"{c.binary} binary messages" for c in self.clients if c.binary]
        return errors

    async def close(self) -> None:
        await asyncio.wait([client.close() for client in self.clients], timeout=10)
        for client in self.clients:
            if not client.closed.done():
                client.abort()


class _WebsocketsSession(_Session):
    """The ``websockets`` library's clients, permessage-deflate offered (``--deflate``)."""

    def __init__(
        self, clients: list[Any], pids: dict[int, int], expect: int, one_done: Callable[[], None]
    ) -> None:
        self.clients, self.pids, self._expect = clients, pids, expect
        self._received: list[list[tuple[float, str | bytes]]] = [[] for _ in clients]
        self._errors: list[str] = []
        self._readers = [
            asyncio.ensure_future(self._read(ws, received, one_done))
            for ws, received in zip(clients, self._received, strict=True)
        ]

    @classmethod
    async def open(
        cls, job: ClientJob, gate: asyncio.Semaphore, one_done: Callable[[], None]
    ) -> _WebsocketsSession:
        from websockets.asyncio.client import connect

        pids: dict[int, int] = {}

        async def open_one(i: int) -> Any:
            async with gate:
                ws = await connect(job.urls[i % len(job.urls)], open_timeout=60, max_queue=None)
                _count_pid(pids, await ws.recv())
                return ws

        clients = list(await asyncio.gather(*(open_one(i) for i in job.indexes)))
        return cls(clients, pids, job.messages, one_done)

    async def _read(
        self, ws: Any, into: list[tuple[float, str | bytes]], one_done: Callable[[], None]
    ) -> None:
        try:
            async for raw in ws:
                into.append((now(), raw))
                if len(into) == self._expect:
                    one_done()
        except Exception as exc:  # recorded: the report counts what went wrong
            self._errors.append(f"{type(exc).__name__}: {exc}")

    def records(self) -> list[list[tuple[float, str | bytes]]]:
        return [list(received) for received in self._received]

    def errors(self) -> list[str]:
        return list(self._errors)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.clients), return_exceptions=True)


def summarize(
    records: list[list[tuple[float, str | bytes]]], messages: int, errors: list[str]
) -> dict[str, Any]:
    """Each client's messages, parsed now (after the run): latencies and what went wrong."""
    latencies: list[float] = []
    first: dict[int, float] = {}  # message -> its earliest delivery's latency
    missing = duplicates = out_of_order = incomplete = 0
    last_receive: float | None = None
    for received in records:
        seen: set[int] = set()
        expected = 0
        for received_at, raw in received:
            try:
                seq_text, sent_text = json.loads(raw)["text"].split(":")
                seq, sent = int(seq_text), float(sent_text)
            except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
                errors.append(f"unreadable message {raw[:80]!r}: {exc}")
                continue
            if seq in seen:
                duplicates += 1
            seen.add(seq)
            if seq != expected:
                out_of_order += 1
            expected = seq + 1
            latencies.append(received_at - sent)
            first[seq] = min(first.get(seq, received_at - sent), received_at - sent)
            last_receive = received_at if last_receive is None else max(last_receive, received_at)
        lost = messages - len(seen & set(range(messages)))
        missing += lost
        incomplete += lost > 0
    return {
        "latencies": latencies,
        "first": first,
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "incomplete_clients": incomplete,
        "last_receive": last_receive,
        "errors": errors,
    }


# ----------------------------------------------------------------------
# The deployments


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The deployments' processes by pid: ("ours" | "peer" | "shared", role), for CPU accounting.
ROLES: dict[int, tuple[str, str]] = {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def spawn(
    args: list[str],
    log: Path,
    ready: re.Pattern[str],
    env: dict[str, str] | None = None,
    role: tuple[str, str] | None = None,
) -> Iterator[re.Match[str]]:
    """Run ``args`` in its own process group, logging to ``log``; yield the ready match."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    if role is not None:
        ROLES[proc.pid] = role
    try:
        deadline = time.monotonic() + 30
        while True:
            match = ready.search(log.read_text())
            if match:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[:4]} not ready:\n{log.read_text()}")
            time.sleep(0.05)  # a benchmark, not a test: polling the log is fine
        yield match
    finally:
        ROLES.pop(proc.pid, None)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_redis(stack: ExitStack, logs: Path) -> int:
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    stack.enter_context(
        spawn(
            [
                "redis-server",
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(logs)),
            ],
            logs / "redis.log",
            re.compile(r"Ready to accept connections"),
            role=("shared", "redis"),
        )
    )
    return port


def start_ours(stack: ExitStack, logs: Path, redis_url: str, args: argparse.Namespace) -> list[str]:
    """Our workers and protocol servers; the servers' ws URLs."""
    common = ["--redis-url", redis_url]
    for i in range(args.workers):
        stack.enter_context(
            spawn(
                [
                    *(PY, "-m", "channels_lite", "worker", "layer_app:app"),
                    *("--app-dir", str(APPS), "--concurrency", str(args.concurrency), *common),
                ],
                logs / f"worker{i}.log",
                re.compile(r"serving "),
                role=("ours", "workers"),
            )
        )
    urls = []
    for i in range(args.servers):
        match = stack.enter_context(
            spawn(
                [PY, "-m", "channels_lite", "protocol-server", "--bind", "127.0.0.1:0", *common],
                logs / f"server{i}.log",
                LISTENING,
                role=("ours", "servers"),
            )
        )
        urls.append(f"ws://127.0.0.1:{match[1]}")
    return urls


def start_peer(stack: ExitStack, logs: Path, redis_url: str, args: argparse.Namespace) -> list[str]:
    """The peer's uvicorn processes (uvicorn's defaults but the loop); their ws URLs."""
    urls = []
    for i in range(args.servers):
        match = stack.enter_context(
            spawn(
                [
                    *(PY, "-m", "uvicorn", "channels_peer:application"),
                    *("--app-dir", str(BENCH_APPS), "--host", "127.0.0.1", "--port", "0"),
                    *("--loop", args.peer_loop, "--lifespan", "off", "--no-access-log"),
                ],
                logs / f"peer{i}.log",
                UVICORN_RUNNING,
                env={"BENCH_PEER_REDIS_URL": redis_url},
                role=("peer", "servers"),
            )
        )
        urls.append(f"ws://127.0.0.1:{match[1]}/chat")
    return urls


# ----------------------------------------------------------------------
# Publishing

Publish = Callable[[list[float], bool], Coroutine[Any, Any, tuple[float, int | None]]]


async def _publish(
    send: Callable[[str], Awaitable[object]], schedule: list[float], burst: bool
) -> float:
    """Send message ``seq`` as ``"seq:publish time"``, pausing as scheduled; the first time."""
    first = now()
    for seq, pause in enumerate(schedule):
        await send(f"{seq}:{now()!r}")
        if not burst:
            await asyncio.sleep(pause)
    return first


def publish_ours(redis_url: str, *, push: bool = False) -> Publish:
    """Through the apps (group ``room`` of ``/chat``), or pushed (group
    ``pushed`` of ``/push``: the sockets' reply channels), the same text."""

    async def publish(schedule: list[float], burst: bool) -> tuple[float, int | None]:
        from channels_lite.client import AsyncPublisher

        async with AsyncPublisher.from_url(redis_url) as publisher:
            # Warm up the connection and scripts with a message to nobody.
            await publisher.group_send("warmup", {"type": "chat.message", "text": "-"})

            async def send(text: str) -> None:
                if push:
                    # What /chat's app would have sent, written by the servers.
                    frame = json.dumps({"text": text})
                    await publisher.group_send("pushed", {"type": "websocket.push", "text": frame})
                else:
                    await publisher.group_send("room", {"type": "chat.message", "text": text})

            first = await _publish(send, schedule, burst)
            return first, publisher.statistics().dropped

    return publish


def publish_peer(redis_url: str) -> Publish:
    async def publish(schedule: list[float], burst: bool) -> tuple[float, int | None]:
        from channels_redis.core import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[redis_url])
        try:
            await layer.group_send("warmup", {"type": "chat.message", "text": "-"})

            async def send(text: str) -> None:
                await layer.group_send("room", {"type": "chat.message", "text": text})

            first = await _publish(send, schedule, burst)
        finally:
            await layer.close_pools()
        # channels_redis drops a group message for a member at capacity
        # without saying so: only the deliveries tell.
        return first, None

    return publish


# ----------------------------------------------------------------------
# One measured run


def _receive(conn: Connection, timeout: float, what: str) -> tuple[str, Any]:
    if not conn.poll(timeout):
        raise RuntimeError(f"a client process said nothing within {timeout:.0f} s ({what})")
    try:
        kind, data = conn.recv()
    except EOFError:
        raise RuntimeError(f"a client process died ({what})") from None
    if kind == "error":
        raise RuntimeError(f"a client process failed ({what}): {data}")
    return kind, data


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_once(
    system: str, urls: list[str], publish: Publish, schedule: list[float], args: argparse.Namespace
) -> dict[str, Any]:
    """Open the clients (in their processes), publish, collect: one row of the report."""
    context = multiprocessing.get_context("spawn")  # a clean interpreter, no copied loop
    procs = []
    for p in range(args.client_procs):
        mine, theirs = context.Pipe()
        indexes = tuple(range(p, args.clients, args.client_procs))
        job = ClientJob(
            tuple(urls), indexes, args.messages, args.deflate, args.client_procs, args.client_loop
        )
        proc = context.Process(target=clients_main, args=(job, theirs), daemon=True)
        proc.start()
        theirs.close()
        procs.append((proc, mine))
    try:
        pids: Counter[int] = Counter()
        opened_in = 0.0
        for _, conn in procs:
            _, opened = _receive(conn, 120, "opening the clients")
            pids.update(opened["pids"])
            opened_in = max(opened_in, opened["seconds"])
        print(
            f"  {system}: opened {args.clients} clients in {opened_in:.1f} s; "
            f"per app pid: {dict(pids)}",
            file=sys.stderr,
        )
        # CPU of everything this run makes work, from the first publish to
        # the last delivery collected: where a delivery's cost goes.
        accounted = {
            pid: role
            for pid, (owner, role) in ROLES.items()
            if owner in (system.split("-")[0], "shared")
        }
        cpu_before = {pid: cpu_seconds(pid) for pid in accounted}
        publisher_before = time.process_time()
        first_publish, dropped = asyncio.run(publish(schedule, args.burst))
        deadline = now() + DELIVERY_TIMEOUT
        parts, late = [], False
        for _, conn in procs:
            if not conn.poll(max(0.0, deadline - now())):
                late = True
                with suppress(BrokenPipeError):  # it has just finished and gone
                    conn.send("stop")
            parts.append(_receive(conn, 30, "collecting")[1])
        cpu: dict[str, float] = {"publisher": time.process_time() - publisher_before}
        for pid, role in accounted.items():
            cpu[role] = cpu.get(role, 0.0) + cpu_seconds(pid) - cpu_before[pid]
        cpu["clients"] = sum(part["cpu_seconds"] for part in parts)
        if late:
            print(
                f"  !! {system}: not every client got every message within "
                f"{DELIVERY_TIMEOUT:.0f} s",
                file=sys.stderr,
            )
    finally:
        for proc, conn in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()

    latencies = [x for part in parts for x in part["latencies"]]
    receives = [part["last_receive"] for part in parts if part["last_receive"] is not None]
    errors = [error for part in parts for error in part["errors"]]
    ms = [x * 1000 for x in latencies]
    deliveries = len(latencies)
    # How soon a broadcast starts to arrive, apart from how long it takes to
    # reach everyone: the earliest delivery of each message, over all clients.
    firsts: dict[int, float] = {}
    for part in parts:
        for seq, latency in part["first"].items():
            firsts[seq] = min(firsts.get(seq, latency), latency)
    return {
        "system": system,
        "clients": args.clients,
        "servers": len(urls),
        "messages": args.messages,
        "expected_deliveries": args.clients * args.messages,
        "deliveries": deliveries,
        "missing": sum(part["missing"] for part in parts),
        "duplicates": sum(part["duplicates"] for part in parts),
        "out_of_order": sum(part["out_of_order"] for part in parts),
        "incomplete_clients": sum(part["incomplete_clients"] for part in parts),
        "client_errors": len(errors),
        "client_error_examples": errors[:5],
        "dropped": dropped,
        "open_seconds": opened_in,
        "median_ms": statistics.median(ms) if ms else None,
        "p90_ms": percentile(ms, 0.90) if ms else None,
        "p99_ms": percentile(ms, 0.99) if ms else None,
        "max_ms": max(ms) if ms else None,
        "first_ms": statistics.median(firsts.values()) * 1000 if firsts else None,
        # CPU microseconds per delivery, by role.
        "cpu_us_per_delivery": {
            role: seconds * 1e6 / deliveries for role, seconds in sorted(cpu.items())
        }
        if deliveries
        else {},
        "throughput_per_s": deliveries / (max(receives) - first_publish) if receives else None,
    }


# ----------------------------------------------------------------------
# The report

_FIGURES = ("median_ms", "p90_ms", "p99_ms", "max_ms", "throughput_per_s", "first_ms")
_COUNTS = ("deliveries", "missing", "duplicates", "out_of_order", "client_errors")


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's rounds: the median of each figure, the sum of each count."""
    combined: dict[str, Any] = {"rounds": len(rounds)}
    for key in _FIGURES:
        values = [r[key] for r in rounds if r[key] is not None]
        combined[key] = statistics.median(values) if values else None
    for key in (*_COUNTS, "expected_deliveries"):
        combined[key] = sum(r[key] for r in rounds)
    dropped = [r["dropped"] for r in rounds if r["dropped"] is not None]
    combined["dropped"] = sum(dropped) if dropped else None
    roles = {role for r in rounds for role in r["cpu_us_per_delivery"]}
    combined["cpu_us_per_delivery"] = {
        role: statistics.median(r["cpu_us_per_delivery"].get(role, 0.0) for r in rounds)
        for role in sorted(roles)
    }
    return combined


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _row(label: str, cells: list[str]) -> str:
    return f"{label:<10}" + "".join(f" {cell:>13}" for cell in cells)


def report(
    combined: dict[str, dict[str, Any]], args: argparse.Namespace, mode: str
) -> dict[str, float | None]:
    """Print the table and the ratios; return the ratios."""
    clients = "websockets, permessage-deflate" if args.deflate else "lean, no compression"
    print(
        f"\n{args.clients} clients ({clients}, {args.client_procs} process(es) on "
        f"{args.client_loop}), "
        f"{args.servers} servers, {args.messages} messages ({mode}), "
        f"medians over {args.rounds} round(s)"
    )
    if "peer" in combined:
        print(f"peer: Django Channels + channels_redis under uvicorn --loop {args.peer_loop}")
    print(_row("", ["median ms", "p90 ms", "p99 ms", "max ms", "deliv/s", "delivered"]))
    for system, row in combined.items():
        cells = [_fmt(row[key]) for key in _FIGURES[:4]]
        cells += [_fmt(row["throughput_per_s"], 0)]
        cells += [f"{row['deliveries']}/{row['expected_deliveries']}"]
        print(_row(system, cells))
    ratios: dict[str, float | None] = {}
    for system in ("ours", "ours-push"):
        if system in combined and "peer" in combined:
            mine, peer = combined[system], combined["peer"]
            prefix = "" if system == "ours" else "push_"
            for key in _FIGURES:
                ratio = mine[key] / peer[key] if mine[key] and peer[key] else None
                ratios[prefix + key] = ratio
            label = "ours/peer" if system == "ours" else "push/peer"
            print(_row(label, [_fmt(ratios[prefix + key], 2) for key in _FIGURES[:5]]))
    if ratios:
        print("(latency ratio below 1: ours quicker; deliveries/s above 1: ours faster)")
    firsts = ", ".join(f"{system} {_fmt(row['first_ms'])} ms" for system, row in combined.items())
    print(f"first delivery of a message (median over messages): {firsts}")
    for system, row in combined.items():
        shares = row["cpu_us_per_delivery"]
        total = sum(shares.values())
        detail = ", ".join(f"{role} {_fmt(us)}" for role, us in shares.items())
        print(f"CPU us per delivery, {system}: {_fmt(total)} ({detail})")
    for system, row in combined.items():
        problems = [f"{key.replace('_', ' ')} {row[key]}" for key in _COUNTS[1:] if row[key]]
        if row["dropped"]:
            problems.append(f"dropped by group_send {row['dropped']}")
        if problems:
            print(f"!! {system}: " + ", ".join(problems))
    for system in ("ours", "ours-push"):
        mine = combined.get(system)
        if mine and mine["median_ms"] is not None and mine["p99_ms"] is not None:
            med, p99 = mine["median_ms"], mine["p99_ms"]
            print(
                f"aim ({system}): median <= {AIM_MEDIAN_MS:.0f} ms: "
                f"{'MET' if med <= AIM_MEDIAN_MS else 'MISSED'}; p99 <= {AIM_P99_MS:.0f} ms: "
                f"{'MET' if p99 <= AIM_P99_MS else 'MISSED'}"
            )
    return ratios


def _progress(result: dict[str, Any], number: int) -> None:
    problems = sum(result[key] for key in _COUNTS[1:])
    print(
        f"round {number} {result['system']}: median {_fmt(result['median_ms'])} ms, "
        f"p99 {_fmt(result['p99_ms'])} ms, {_fmt(result['throughput_per_s'], 0)} deliveries/s, "
        f"{result['deliveries']}/{result['expected_deliveries']} delivered"
        + (f", {problems} problems" if problems else "")
        + "".join(f"\n  !! {error}" for error in result["client_error_examples"]),
        file=sys.stderr,
    )


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for dist in ("channels-lite", "uvicorn", "websockets", "channels", "channels_redis", "redis"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--burst", action="store_true", help="publish back to back")
    parser.add_argument("--seed", type=int, default=0, help="of the publishing schedule")
    parser.add_argument("--servers", type=int, default=2, help="protocol servers / uvicorns")
    parser.add_argument("--workers", type=int, default=2, help="our workers")
    parser.add_argument("--concurrency", type=int, default=1000, help="of each of our workers")
    parser.add_argument("--rounds", type=int, default=1, help="ours and the peer, alternated")
    parser.add_argument(
        "--peer", action=argparse.BooleanOptionalAction, default=True, help="run the peer"
    )
    parser.add_argument(
        "--peer-loop",
        default="auto",
        choices=("auto", "asyncio", "uvloop"),
        help="the peer's uvicorn --loop (auto: uvloop, installed with uvicorn[standard])",
    )
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="websockets-library clients offering permessage-deflate, instead of lean ones",
    )
    parser.add_argument("--client-procs", type=int, default=1, help="processes for the clients")
    parser.add_argument(
        "--client-loop",
        default="uvloop",
        choices=("asyncio", "uvloop"),
        help="the clients' event loop (uvloop: the load generator's own CPU, half asyncio's, "
        "is less of what is measured)",
    )
    parser.add_argument(
        "--push",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run ours pushing to the sockets' reply channels (no app per delivery)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if min(args.clients, args.messages, args.rounds, args.client_procs, args.servers) < 1:
        parser.error("--clients, --messages, --rounds, --client-procs, --servers must be >= 1")

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the deployments are always stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    # Inherited by the client processes: one descriptor per client, plus some.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients // args.client_procs + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    rng = random.Random(args.seed)
    schedule = [rng.uniform(args.interval, 2 * args.interval) for _ in range(args.messages)]
    mode = "burst" if args.burst else f"interval {args.interval}-{2 * args.interval} s"
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        logs = Path(tmp)
        redis_port = start_redis(stack, logs)
        # Ours on database 0, the peer on 1: neither sees the other's keys.
        ours_url, peer_url = (f"redis://127.0.0.1:{redis_port}/{db}" for db in (0, 1))
        ours = start_ours(stack, logs, ours_url, args)
        systems = [("ours", [f"{url}/chat" for url in ours], publish_ours(ours_url))]
        if args.push:
            # The same processes; the sockets join with their reply channels.
            push = publish_ours(ours_url, push=True)
            systems.append(("ours-push", [f"{url}/push" for url in ours], push))
        if args.peer:
            systems.append(
                ("peer", start_peer(stack, logs, peer_url, args), publish_peer(peer_url))
            )
        for number in range(1, args.rounds + 1):
            # Each goes first in turn, so a drift in the machine's load hits both.
            order = systems if number % 2 else systems[::-1]
            for system, urls, publish in order:
                result = run_once(system, urls, publish, schedule, args)
                result["round"] = number
                rounds.append(result)
                _progress(result, number)

    combined = {
        system: combine([r for r in rounds if r["system"] == system]) for system, *_ in systems
    }
    ratios = report(combined, args, mode)
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        document = {
            "settings": settings,
            "versions": _versions(),
            "mode": mode,
            "combined": combined,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps({**document, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
