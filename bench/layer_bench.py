"""Channel layer benchmark: channels_lite's Redis Streams layer against channels_redis.

What is measured
================

Six workloads, each run on three layers in the same invocation, against the
same private ``redis-server``:

* ``RedisStreamsChannelLayer`` (ours, ``channels_lite.layer``),
* ``RedisChannelLayer`` (``channels_redis.core``: sorted sets + BZPOPMIN),
* ``RedisPubSubChannelLayer`` (``channels_redis.pubsub``: Redis pub/sub, lossy
  by design: a message published while nobody is subscribed is gone).

Workloads (one asyncio event loop per run; every "process" is its own layer
instance, so process-specific channels, per-process streams and connections
behave as they would across real processes):

``pingpong``
    A client sends a request to a normal named channel and awaits the reply a
    server sends back to the client's process-specific channel, one at a time.
    Latency-bound: reports round trips/s and round-trip latency.
``stream``, ``stream-named``
    One producer sends N messages back to back to one channel while one
    consumer receives them concurrently: to a process-specific channel (what a
    WebSocket consumer's channel is) and to a normal named channel.
``stream-crowd``
    ``stream`` to one process-specific channel while 1,000 other consumers of
    the same process sit idle in ``receive``: a server process with many
    connected WebSockets, one of which is busy. A layer whose wake-ups scale
    with the number of waiting consumers shows it here.
``concurrent``
    50 producer/consumer pairs on 50 process-specific channels at once: what a
    busy server process looks like, and where per-event-loop-turn batching of
    Redis writes applies.
``group-<members>x<processes>``
    One sender does M ``group_send`` calls back to back to a group of 100 or
    1,000 process-specific members hosted by one layer instance (one process
    hosting many WebSocket consumers, the common Channels shape) or spread over
    four. One receiving task per member. Reports deliveries/s.

Every message carries a sequence number and its send time
(``time.perf_counter()``; all sides share one process, so the clocks agree).
Receivers record latency = receive time - send time and check that every
message arrives exactly once. Throughput is deliveries divided by the time from
the first send to the last delivery. Lost or duplicated messages are counted
and printed: a benchmark that silently loses messages is worthless. Capacity is
set high enough that no layer has to drop anything.

Latency here is under load (senders do not pace themselves), so it includes
queueing behind earlier messages: for the streaming and fan-out workloads it
says how far delivery lags behind sending; ``pingpong`` is the unloaded latency.

Why
===

The design brief bets that batching what crosses Redis (one pipeline per
event-loop turn, ``COUNT`` on every read, one entry per destination process for
a group) beats per-message round trips, and that the remaining cost is Python
work per message. This script puts numbers on both layers of that claim and
compares them with the layers people use today.

Method (the machines are shared and noisy)
==========================================

* A private ``redis-server --save "" --appendonly no`` on a free port, started
  here and killed at the end; ``FLUSHALL`` before every run.
* Every (workload, layer) pair runs ``--rounds`` times. Layers are interleaved
  round by round, in a rotated order, so a burst of noise hits all of them
  alike. The table shows medians over the rounds; ``--json`` keeps every round.
* Each run warms up (connections, script cache, pub/sub subscriptions) before
  it starts the clock, and the measured code path is identical for all layers:
  only the layer object differs.

Run ``python bench/layer_bench.py --help`` and see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import math
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import redis

# ---------------------------------------------------------------------------
# Parameters

CAPACITY = 1_000_000  # per channel: high enough that nothing is ever refused
STALL_SECONDS = 10.0  # no delivery for this long: the rest is counted as lost
WARMUP_SECONDS = 30.0  # a warm-up that never arrives aborts the run
PAYLOAD = "x" * 64  # a chat-message-sized text field, the same for every layer

MESSAGE = "bench.message"
WARMUP = "bench.warmup"
NAMED_CHANNEL = "bench.named"
GROUP = "bench-group"


@dataclass(frozen=True)
class Sizes:
    """How much each workload does in one run."""

    pings: int = 2_000  # pingpong round trips
    messages: int = 5_000  # stream / stream-named: messages per run
    concurrent_messages: int = 10_000  # concurrent: total over the pairs
    pairs: int = 50  # concurrent producer/consumer pairs
    crowd: int = 1_000  # stream-crowd: idle consumers beside the one that receives
    crowd_messages: int = 1_000  # stream-crowd: messages per run
    group_messages: int = 200  # group_send calls per fan-out run (to 100 members)
    big_group_messages: int = 50  # group_send calls per fan-out run (to 1,000 members)
    group_sizes: tuple[int, ...] = (100, 1_000)
    spread: int = 4  # processes in the spread fan-out variant


FULL = Sizes()
QUICK = Sizes(
    pings=300,
    messages=1_000,
    concurrent_messages=2_000,
    crowd_messages=200,
    group_messages=20,
    big_group_messages=5,
)


# ---------------------------------------------------------------------------
# The layers under test


class ChannelLayer(Protocol):
    """The part of the Channels channel layer API the workloads use."""

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...
    async def receive(self, channel: str) -> dict[str, Any]: ...
    async def new_channel(self) -> str: ...
    async def group_add(self, group: str, channel: str) -> None: ...
    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LayerSpec:
    """How to build and tear down one layer implementation."""

    key: str
    label: str
    build: Callable[[str], ChannelLayer]
    close: Callable[[Any], Awaitable[None]]


def _build_ours(url: str) -> ChannelLayer:
    from channels_lite.layer import RedisStreamsChannelLayer

    layer: ChannelLayer = RedisStreamsChannelLayer(hosts=[url], capacity=CAPACITY)
    return layer


def _build_redis(url: str) -> ChannelLayer:
    from channels_redis.core import RedisChannelLayer

    layer: ChannelLayer = RedisChannelLayer(hosts=[url], capacity=CAPACITY)
    return layer


def _build_pubsub(url: str) -> ChannelLayer:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer: ChannelLayer = RedisPubSubChannelLayer(hosts=[url])
    return layer


async def _close_ours(layer: Any) -> None:
    await layer.close()


async def _close_redis(layer: Any) -> None:
    await layer.close_pools()


async def _close_pubsub(layer: Any) -> None:
    await layer.flush()  # its only way to close the connections it opened


LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("ours", "channels_lite.layer.RedisStreamsChannelLayer", _build_ours, _close_ours),
    LayerSpec("redis", "channels_redis.core.RedisChannelLayer", _build_redis, _close_redis),
    LayerSpec(
        "pubsub", "channels_redis.pubsub.RedisPubSubChannelLayer", _build_pubsub, _close_pubsub
    ),
)
PEERS = ("redis", "pubsub")


# ---------------------------------------------------------------------------
# Measuring

_profiler: cProfile.Profile | None = None  # set by --profile


@contextlib.contextmanager
def measured() -> Iterator[None]:
    """Mark the measured section of a run (the only part --profile records)."""
    if _profiler is None:
        yield
        return
    _profiler.enable()
    try:
        yield
    finally:
        _profiler.disable()


@dataclass
class Sample:
    """The outcome of one run of one workload on one layer."""

    throughput: float
    p50_ms: float
    p99_ms: float
    delivered: int
    lost: int
    duplicates: int
    seconds: float


class Tally:
    """Deliveries seen by the receivers of one run."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies: list[float] = []
        self.duplicates = 0
        self.last_at = 0.0
        self.done = asyncio.Event()

    def record(self, sent_at: float, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.latencies.append(now - sent_at)
        self.last_at = now
        if len(self.latencies) >= self.expected:
            self.done.set()

    async def wait(self) -> None:
        """Return once everything arrived, or nothing did for ``STALL_SECONDS``."""
        while not self.done.is_set():
            before = len(self.latencies)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), STALL_SECONDS)
            if len(self.latencies) == before:
                return

    def sample(self, started_at: float) -> Sample:
        delivered = len(self.latencies)
        seconds = max(self.last_at - started_at, 1e-9) if delivered else math.nan
        return Sample(
            throughput=delivered / seconds if delivered else 0.0,
            p50_ms=percentile(self.latencies, 50) * 1000,
            p99_ms=percentile(self.latencies, 99) * 1000,
            delivered=delivered,
            lost=self.expected - delivered,
            duplicates=self.duplicates,
            seconds=seconds,
        )


class Gate:
    """Opens once ``n`` distinct receivers have seen a warm-up message."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived: set[str] = set()
        self.opened = asyncio.Event()

    def arrive(self, who: str) -> None:
        self.arrived.add(who)
        if len(self.arrived) >= self.n:
            self.opened.set()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def message(seq: int, **extra: Any) -> dict[str, Any]:
    return {"type": MESSAGE, "seq": seq, "t": time.perf_counter(), "text": PAYLOAD, **extra}


def warmup_message(**extra: Any) -> dict[str, Any]:
    return {"type": WARMUP, "seq": -1, "t": time.perf_counter(), **extra}


# ---------------------------------------------------------------------------
# Building blocks of the workloads


@dataclass(frozen=True)
class Factory:
    """Builds instances of one layer implementation on the bench's Redis."""

    spec: LayerSpec
    url: str

    def __call__(self) -> ChannelLayer:
        return self.spec.build(self.url)


@contextlib.asynccontextmanager
async def layer_instances(factory: Factory, n: int) -> AsyncIterator[list[Any]]:
    """``n`` layer instances ("processes"), closed at the end."""
    instances = [factory() for _ in range(n)]
    try:
        yield instances
    finally:
        for layer in instances:
            await factory.spec.close(layer)


@contextlib.asynccontextmanager
async def background(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run ``coros`` as tasks; cancel what is left at the end and re-raise a crash."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        yield tasks
    finally:
        await cancel_all(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


async def cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again while any is left.

    Repeating is needed on Python 3.11: ``asyncio.wait_for`` (which redis-py
    wraps around every socket write when ``socket_timeout`` is set) loses a
    cancellation that lands as the write completes (CPython gh-86296), and the
    cancelled receive loop carries on.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


async def consume(layer: ChannelLayer, channel: str, want: int, tally: Tally, gate: Gate) -> None:
    """Receive on ``channel`` until ``want`` distinct measured messages arrived."""
    seen: set[int] = set()
    while len(seen) < want:
        received = await layer.receive(channel)
        if received["type"] == WARMUP:
            gate.arrive(channel)
            continue
        seq = received["seq"]
        if seq in seen:
            tally.duplicates += 1
            continue
        seen.add(seq)
        tally.record(received["t"])


async def warm_up(poke: Callable[[], Awaitable[Any]], gate: Gate) -> None:
    """Poke until the gate opens: connections are up, scripts loaded, subscriptions live.

    Pub/sub drops what is published before a subscription is live, hence the
    retries; warm-up messages that arrive late are skipped by the receivers.
    """
    timeout = 0.25
    deadline = time.perf_counter() + WARMUP_SECONDS
    while True:
        await poke()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.opened.wait(), timeout)
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"warm-up: {len(gate.arrived)} of {gate.n} receivers reached")
        timeout = min(timeout * 2, 2.0)


# ---------------------------------------------------------------------------
# Workloads


async def pingpong(build: Factory, sizes: Sizes) -> Sample:
    """Request to a named channel, reply to the client's process-specific channel."""
    async with layer_instances(build, 2) as (client, server):
        reply_to = await client.new_channel()
        replies: dict[int, asyncio.Future[float]] = {}
        gate = Gate(1)

        async def serve() -> None:
            while True:
                request = await server.receive(NAMED_CHANNEL)
                await server.send(
                    request["reply"], {"type": request["type"], "seq": request["seq"]}
                )

        async def listen() -> None:
            while True:
                answer = await client.receive(reply_to)
                if answer["type"] == WARMUP:
                    gate.arrive(reply_to)
                waiter = replies.pop(answer["seq"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(time.perf_counter())

        async with background(serve(), listen()):
            await warm_up(lambda: client.send(NAMED_CHANNEL, warmup_message(reply=reply_to)), gate)
            loop = asyncio.get_running_loop()
            tally = Tally(sizes.pings)
            started = time.perf_counter()
            with measured():
                for seq in range(sizes.pings):
                    waiter = replies[seq] = loop.create_future()
                    request = message(seq, reply=reply_to)
                    await client.send(NAMED_CHANNEL, request)
                    with contextlib.suppress(TimeoutError):
                        answered_at = await asyncio.wait_for(waiter, STALL_SECONDS)
                        tally.record(request["t"], answered_at)
            return tally.sample(started)


async def stream(build: Factory, sizes: Sizes, *, named: bool) -> Sample:
    """One producer sends back to back while one consumer receives."""
    async with layer_instances(build, 2) as (producer, consumer):
        channel = NAMED_CHANNEL if named else await consumer.new_channel()
        tally, gate = Tally(sizes.messages), Gate(1)
        async with background(consume(consumer, channel, sizes.messages, tally, gate)):
            await warm_up(lambda: producer.send(channel, warmup_message()), gate)
            started = time.perf_counter()
            with measured():
                await produce(producer, channel, sizes.messages)
                await tally.wait()
            return tally.sample(started)


async def produce(layer: ChannelLayer, channel: str, count: int) -> None:
    for seq in range(count):
        await layer.send(channel, message(seq))


async def crowded_stream(build: Factory, sizes: Sizes) -> Sample:
    """``stream`` to one consumer while ``sizes.crowd`` idle consumers share its process."""
    async with layer_instances(build, 2) as (producer, consumer):
        channel = await consumer.new_channel()
        idle = [idle_consumer(consumer, await consumer.new_channel()) for _ in range(sizes.crowd)]
        count = sizes.crowd_messages
        tally, gate = Tally(count), Gate(1)
        async with background(consume(consumer, channel, count, tally, gate), *idle):
            await warm_up(lambda: producer.send(channel, warmup_message()), gate)
            started = time.perf_counter()
            with measured():
                await produce(producer, channel, count)
                await tally.wait()
            return tally.sample(started)


async def idle_consumer(layer: ChannelLayer, channel: str) -> None:
    """A connected consumer nobody writes to: parked in ``receive`` all along."""
    while True:
        await layer.receive(channel)


async def concurrent(build: Factory, sizes: Sizes) -> Sample:
    """``sizes.pairs`` producer/consumer pairs, each on its own process-specific channel."""
    async with layer_instances(build, 2) as (producer, consumer):
        channels = [await consumer.new_channel() for _ in range(sizes.pairs)]
        each = sizes.concurrent_messages // sizes.pairs
        tally, gate = Tally(each * sizes.pairs), Gate(sizes.pairs)
        receivers = (consume(consumer, channel, each, tally, gate) for channel in channels)
        async with background(*receivers):
            await warm_up(
                lambda: asyncio.gather(*(producer.send(c, warmup_message()) for c in channels)),
                gate,
            )
            started = time.perf_counter()
            with measured():
                await asyncio.gather(*(produce(producer, c, each) for c in channels))
                await tally.wait()
            return tally.sample(started)


async def fan_out(build: Factory, sizes: Sizes, *, members: int, processes: int) -> Sample:
    """One sender, ``group_send`` back to back to ``members`` over ``processes`` instances."""
    sends = sizes.group_messages if members <= 100 else sizes.big_group_messages
    async with layer_instances(build, processes + 1) as (sender, *hosts):
        joined = [
            (hosts[i % processes], await hosts[i % processes].new_channel()) for i in range(members)
        ]
        await join_group(joined)
        tally, gate = Tally(members * sends), Gate(members)
        receivers = (consume(host, channel, sends, tally, gate) for host, channel in joined)
        async with background(*receivers):
            await warm_up(lambda: sender.group_send(GROUP, warmup_message()), gate)
            started = time.perf_counter()
            with measured():
                for seq in range(sends):
                    await sender.group_send(GROUP, message(seq))
                await tally.wait()
            return tally.sample(started)


async def join_group(members: list[tuple[ChannelLayer, str]], concurrency: int = 50) -> None:
    """``group_add`` every member through its own instance (as a consumer does), in chunks."""
    for start in range(0, len(members), concurrency):
        chunk = members[start : start + concurrency]
        await asyncio.gather(*(host.group_add(GROUP, channel) for host, channel in chunk))


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    run: Callable[[Factory, Sizes], Awaitable[Sample]]


def workloads(sizes: Sizes) -> list[Workload]:
    found = [
        Workload("pingpong", "rt/s", pingpong),
        Workload("stream", "msg/s", partial(stream, named=False)),
        Workload("stream-named", "msg/s", partial(stream, named=True)),
        Workload("stream-crowd", "msg/s", crowded_stream),
        Workload("concurrent", "msg/s", concurrent),
    ]
    for members in sizes.group_sizes:
        for processes in (1, sizes.spread):
            found.append(
                Workload(
                    f"group-{members}x{processes}",
                    "deliv/s",
                    partial(fan_out, members=members, processes=processes),
                )
            )
    return found


# ---------------------------------------------------------------------------
# The private Redis server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Start ``redis-server`` on a free port without persistence; kill it at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="layer-bench-") as scratch:
        # fmt: off
        argv = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", scratch, "--logfile", "redis.log",
        ]
        # fmt: on
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_for_ping(url, proc, Path(scratch) / "redis.log")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_ping(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    client = redis.Redis.from_url(url)
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"redis-server exited:\n{log.read_text(errors='replace')}")
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                sys.exit("redis-server did not answer PING within 10 s")
            time.sleep(0.05)
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Running


Results = dict[str, dict[str, list[Sample]]]  # workload -> layer key -> one sample per round


def run_once(workload: Workload, spec: LayerSpec, url: str, sizes: Sizes, admin: Any) -> Sample:
    """One run on a flushed Redis, in its own event loop."""
    admin.flushall()
    gc.collect()
    return asyncio.run(workload.run(Factory(spec, url), sizes))


def run_all(
    url: str, layers: Sequence[LayerSpec], chosen: Sequence[Workload], rounds: int, sizes: Sizes
) -> Results:
    results: Results = {w.name: {spec.key: [] for spec in layers} for w in chosen}
    admin = redis.Redis.from_url(url)
    try:
        for round_no in range(rounds):
            shift = round_no % len(layers)
            order = [*layers[shift:], *layers[:shift]]  # rotate: nobody always goes first
            for workload in chosen:
                line = []
                for spec in order:
                    sample = run_once(workload, spec, url, sizes, admin)
                    results[workload.name][spec.key].append(sample)
                    lost = f" LOST {sample.lost}" if sample.lost else ""
                    line.append(f"{spec.key} {sample.throughput:,.0f}{lost}")
                print(
                    f"  round {round_no + 1}/{rounds} {workload.name:<16} " + "  ".join(line),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        admin.close()
    return results


# ---------------------------------------------------------------------------
# Reporting


@dataclass
class Summary:
    throughput: float
    p50_ms: float
    p99_ms: float
    lost: int
    duplicates: int
    spread_pct: float  # (max - min) / median of throughput over the rounds
    rounds: list[dict[str, Any]] = field(default_factory=list)


def summarize(samples: list[Sample]) -> Summary:
    throughputs = [s.throughput for s in samples]
    median = statistics.median(throughputs)
    return Summary(
        throughput=median,
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        lost=sum(s.lost for s in samples),
        duplicates=sum(s.duplicates for s in samples),
        spread_pct=(max(throughputs) - min(throughputs)) / median * 100 if median else math.nan,
        rounds=[asdict(s) for s in samples],
    )


def ratio(ours: float, peer: float) -> float:
    return ours / peer if peer and not math.isnan(peer) else math.nan


def format_ratio(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def print_table(
    summaries: dict[str, dict[str, Summary]], layers: Sequence[LayerSpec], units: dict[str, str]
) -> None:
    keys = [spec.key for spec in layers]
    peers = [p for p in PEERS if p in keys and "ours" in keys]
    header = ["workload", "metric", *keys, *(f"ours/{p}" for p in peers), "spread"]
    rows: list[list[str]] = []
    for name, by_layer in summaries.items():
        metrics = (
            (units[name], "throughput", lambda v: f"{v:,.0f}"),
            ("p50 ms", "p50_ms", lambda v: f"{v:.2f}"),
            ("p99 ms", "p99_ms", lambda v: f"{v:.2f}"),
        )
        for i, (label, attr, fmt) in enumerate(metrics):
            values = {k: getattr(by_layer[k], attr) for k in keys}
            row = [name if i == 0 else "", label, *(fmt(values[k]) for k in keys)]
            row += [format_ratio(ratio(values["ours"], values[p])) for p in peers]
            spread = max(by_layer[k].spread_pct for k in keys)
            row.append(f"{spread:.0f}%" if i == 0 else "")
            rows.append(row)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print(
        "  ".join(
            h.ljust(w) if c < 2 else h.rjust(w)
            for c, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    print(line)
    for row in rows:
        cells = (
            v.ljust(w) if c < 2 else v.rjust(w)
            for c, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells))
    print(line)
    print("  ".join(f"{spec.key} = {spec.label}" for spec in layers))
    print(
        "medians over the rounds. ratios: ours / peer, above 1 is better for throughput,"
        " below 1 is better for latency.\nspread: largest (max - min) / median of throughput"
        " over the rounds among the layers (noise indicator)."
    )
    for name, by_layer in summaries.items():
        for key in keys:
            s = by_layer[key]
            if s.lost or s.duplicates:
                print(f"!! {name} on {key}: {s.lost} lost, {s.duplicates} duplicated (all rounds)")


def environment(url: str, rounds: int, sizes: Sizes) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        server_version = client.info("server")["redis_version"]
    finally:
        client.close()
    versions = {}
    for dist in ("channels-lite", "channels_redis", "channels", "redis", "hiredis", "msgpack"):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_server": server_version,
        "packages": versions,
        "rounds": rounds,
        "sizes": asdict(sizes),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------------
# Profiling our layer (--profile)


def profile_ours(url: str, chosen: Sequence[Workload], sizes: Sizes, top: int) -> None:
    """Run each workload once on our layer with cProfile on its measured section."""
    global _profiler
    spec = next(s for s in LAYERS if s.key == "ours")
    admin = redis.Redis.from_url(url)
    try:
        for workload in chosen:
            run_once(workload, spec, url, sizes, admin)  # warm caches, imports
            _profiler = cProfile.Profile()
            try:
                sample = run_once(workload, spec, url, sizes, admin)
            finally:
                profiler, _profiler = _profiler, None
            print(
                f"\n=== {workload.name} on ours: {sample.throughput:,.0f} {workload.unit}"
                " (under the profiler: slower than unprofiled) ==="
            )
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumulative").print_stats(top)
    finally:
        admin.close()


# ---------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark channels_lite's Redis Streams layer against channels_redis.",
        epilog="Starts its own redis-server; see bench/README.md for how to read the output.",
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds per workload and layer (default 5, quick 2)"
    )
    parser.add_argument(
        "--messages",
        type=int,
        help=f"messages per stream run, twice that for concurrent (default {FULL.messages:,})",
    )
    parser.add_argument(
        "--pings", type=int, help=f"pingpong round trips per run (default {FULL.pings:,})"
    )
    parser.add_argument(
        "--group-messages",
        type=int,
        help=f"group_send calls per fan-out run (default {FULL.group_messages} to 100 members, "
        f"{FULL.big_group_messages} to 1,000)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~30 s smoke check")
    parser.add_argument("--only", help="comma-separated workload names (default: all)")
    parser.add_argument(
        "--layers", help="comma-separated layer keys: ours,redis,pubsub (default: all)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write all results to FILE")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of benchmarking, profile our layer on the chosen workloads (cProfile)",
    )
    parser.add_argument("--top", type=int, default=30, help="rows per --profile listing")
    return parser.parse_args(argv)


def choose_sizes(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.messages:
        changes["messages"] = args.messages
        changes["concurrent_messages"] = 2 * args.messages
    if args.pings:
        changes["pings"] = args.pings
    if args.group_messages:
        changes["group_messages"] = changes["big_group_messages"] = args.group_messages
    return Sizes(**{**asdict(base), **changes})


def pick(names: str | None, available: Sequence[Any], attr: str) -> list[Any]:
    if not names:
        return list(available)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {getattr(a, attr): a for a in available}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        sys.exit(f"unknown {attr} {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[n] for n in wanted]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the private redis-server is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = choose_sizes(args)
    rounds = args.rounds or (2 if args.quick else 5)
    chosen = pick(args.only, workloads(sizes), "name")
    layers = pick(args.layers, LAYERS, "key")
    with private_redis() as url:
        if args.profile:
            profile_ours(url, chosen, sizes, args.top)
            return
        meta = environment(url, rounds, sizes)
        print(
            f"redis-server {meta['redis_server']} on {url}, Python {meta['python']},"
            f" {meta['cpus']} CPUs, {rounds} rounds",
            file=sys.stderr,
        )
        started = time.perf_counter()
        results = run_all(url, layers, chosen, rounds, sizes)
        elapsed = time.perf_counter() - started
    summaries = {
        name: {key: summarize(samples) for key, samples in by_layer.items()}
        for name, by_layer in results.items()
    }
    print_table(summaries, layers, {w.name: w.unit for w in chosen})
    print(f"({elapsed:.0f} s; sizes: {asdict(sizes)})")
    if args.json:
        document = {
            "meta": {**meta, "seconds": elapsed},
            "results": {
                name: {key: asdict(s) for key, s in by_layer.items()}
                for name, by_layer in summaries.items()
            },
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
