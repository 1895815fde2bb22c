"""Broadcast latency: one group_send to 1,000 WebSocket clients over two protocol servers.

The deployment is real processes, started as a user would start them: a
private ``redis-server``, 2 protocol servers and 2 workers
(``python -m channels_lite``) running ``tests/e2e/apps/layer_app.py``, whose
``/chat`` WebSocket joins group ``room`` and relays each group message to its
client. This script opens the clients (round-robin over the servers), waits
until every one has joined, then publishes ``--messages`` messages with
:class:`channels_lite.client.AsyncPublisher`, ``--interval`` seconds apart
(random in [interval, 2 x interval]), each carrying ``time.perf_counter()`` at
publish. The clients run in this process, so receive time - publish time is
one clock. Every client must get every message once, in order.

Reported: median, p90, p99 and max delivery latency over all deliveries,
against the aims (median <= 20 ms, p99 <= 100 ms), and the throughput
(deliveries / (last delivery - first publish)). ``--burst`` publishes back to
back instead, which measures fan-out throughput (its latencies are queueing).

The clients' event loop is one of the processes sharing the two cores, so what
is measured includes its own time to read 1,000 frames per message.

    python bench/broadcast_bench.py [--clients 1000] [--messages 50] [--interval 0.05]
                                    [--burst] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from channels_lite.client import AsyncPublisher

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "e2e" / "apps"
PY = sys.executable
LISTENING = re.compile(r"listening on [^\s]+:(\d+)")
AIM_MEDIAN_MS = 20.0
AIM_P99_MS = 100.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def spawn(args: list[str], log: Path, ready: re.Pattern[str]) -> Iterator[re.Match[str]]:
    """Run ``args`` in its own process group, logging to ``log``; yield the ready match."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
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
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def deployment(servers: int, workers: int, concurrency: int) -> Iterator[tuple[str, list[str]]]:
    """Start Redis, the workers and the servers; yield the Redis URL and the ws URLs."""
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        logs = Path(tmp)
        port = free_port()
        stack.enter_context(
            spawn(
                [
                    "redis-server",
                    *("--port", str(port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", tmp),
                ],
                logs / "redis.log",
                re.compile(r"Ready to accept connections"),
            )
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        common = ["--redis-url", redis_url]
        for i in range(workers):
            stack.enter_context(
                spawn(
                    [
                        *(PY, "-m", "channels_lite", "worker", "layer_app:app"),
                        *("--app-dir", str(APPS), "--concurrency", str(concurrency), *common),
                    ],
                    logs / f"worker{i}.log",
                    re.compile(r"serving "),
                )
            )
        urls = []
        for i in range(servers):
            match = stack.enter_context(
                spawn(
                    [
                        PY,
                        "-m",
                        "channels_lite",
                        "protocol-server",
                        "--bind",
                        "127.0.0.1:0",
                        *common,
                    ],
                    logs / f"server{i}.log",
                    LISTENING,
                )
            )
            urls.append(f"ws://127.0.0.1:{match[1]}/chat")
        yield redis_url, urls


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, redis_url: str, urls: list[str]) -> dict[str, object]:
    n = args.clients
    clients: list[ClientConnection] = []
    pids: dict[int, int] = {}
    sem = asyncio.Semaphore(100)

    async def open_one(i: int) -> ClientConnection:
        async with sem:
            ws = await connect(urls[i % len(urls)], open_timeout=60, max_queue=None)
            joined = json.loads(await ws.recv())
            pids[joined["pid"]] = pids.get(joined["pid"], 0) + 1
            return ws

    t0 = time.perf_counter()
    clients = list(await asyncio.gather(*(open_one(i) for i in range(n))))
    print(f"opened {n} clients in {time.perf_counter() - t0:.1f} s; per worker pid: {pids}")

    latencies: list[float] = []
    wrong = 0
    last_receive = 0.0
    all_done = asyncio.Event()
    remaining = n

    async def reader(ws: ClientConnection) -> None:
        nonlocal wrong, last_receive, remaining
        expected = 0
        async for raw in ws:
            now = time.perf_counter()
            seq, sent = json.loads(raw)["text"].split(":")
            if int(seq) != expected:
                wrong += 1
            expected = int(seq) + 1
            latencies.append(now - float(sent))
            last_receive = max(last_receive, now)
            if expected == args.messages:
                remaining -= 1
                if remaining == 0:
                    all_done.set()

    readers = [asyncio.create_task(reader(ws)) for ws in clients]
    async with AsyncPublisher.from_url(redis_url) as publisher:
        # Warm up the publisher's connection and scripts with a message to nobody.
        await publisher.group_send("warmup", {"type": "chat.message", "text": "-"})
        first_publish = time.perf_counter()
        for seq in range(args.messages):
            text = f"{seq}:{time.perf_counter()!r}"
            await publisher.group_send("room", {"type": "chat.message", "text": text})
            if not args.burst:
                await asyncio.sleep(random.uniform(args.interval, 2 * args.interval))
        dropped = publisher.statistics().dropped
    try:
        await asyncio.wait_for(all_done.wait(), 60)
    except TimeoutError:
        print("!! not every client got every message within 60 s")
    await asyncio.sleep(0.5)  # let any extra delivery show up
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)

    deliveries = len(latencies)
    ms = [x * 1000 for x in latencies]
    result: dict[str, object] = {
        "clients": n,
        "servers": len(urls),
        "messages": args.messages,
        "mode": "burst" if args.burst else f"interval {args.interval}-{2 * args.interval} s",
        "expected_deliveries": n * args.messages,
        "deliveries": deliveries,
        "out_of_order": wrong,
        "dropped": dropped,
        "median_ms": statistics.median(ms) if ms else None,
        "p90_ms": percentile(ms, 0.90) if ms else None,
        "p99_ms": percentile(ms, 0.99) if ms else None,
        "max_ms": max(ms) if ms else None,
        "throughput_per_s": deliveries / (last_receive - first_publish) if ms else None,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--burst", action="store_true", help="publish back to back")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the deployment is always stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    with deployment(args.servers, args.workers, args.concurrency) as (redis_url, urls):
        result = asyncio.run(run(args, redis_url, urls))

    print(
        f"{result['deliveries']}/{result['expected_deliveries']} deliveries "
        f"({result['mode']}), out of order {result['out_of_order']}, "
        f"dropped by group_send {result['dropped']}"
    )
    if result["median_ms"] is not None:
        med, p99 = float(result["median_ms"]), float(result["p99_ms"])  # type: ignore[arg-type]
        print(
            f"latency ms: median {med:.1f}  p90 {result['p90_ms']:.1f}  "
            f"p99 {p99:.1f}  max {result['max_ms']:.1f}"
        )
        print(f"throughput: {result['throughput_per_s']:.0f} deliveries/s")
        print(
            f"aim: median <= {AIM_MEDIAN_MS:.0f} ms: {'MET' if med <= AIM_MEDIAN_MS else 'MISSED'}"
            f"; p99 <= {AIM_P99_MS:.0f} ms: {'MET' if p99 <= AIM_P99_MS else 'MISSED'}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
