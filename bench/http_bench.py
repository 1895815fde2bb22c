"""HTTP and WebSocket through channels-lite, against uvicorn and daphne, in one run.

What is measured (hello-world app, ``bench/apps/hello.py``, the same file for
every server):

* throughput: ``wrk`` with 50 connections for a few seconds, requests/s;
* added latency: ``wrk`` with one connection, median latency;
* WebSocket echo: one client sending and awaiting 2,000 echoes, median RTT.

Servers: uvicorn running the app in-process (httptools), daphne in-process,
and channels-lite (one protocol server + one worker + a private Redis). The
machine is shared and noisy, so every round runs every server once, the
rounds interleave, and the report gives medians and ratios.

    python bench/http_bench.py [--rounds 5] [--duration 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).parent
APPS = HERE / "apps"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # a benchmark, not a test: a readiness poll is fine here
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def spawn(
    args: list[str], *, port: int | None = None, ready: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=APPS,
    )
    try:
        if ready is not None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if ready in line:
                    break
            else:
                raise RuntimeError(f"{args} exited before {ready!r}")
        if port is not None:
            wait_port(port)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        spawn(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            port=port,
        ),
    ):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def uvicorn_server() -> Iterator[str]:
    port = free_port()
    args = [
        PY,
        "-m",
        "uvicorn",
        "hello:app",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with spawn(args, port=port):
        yield f"127.0.0.1:{port}"


@contextmanager
def daphne_server() -> Iterator[str]:
    port = free_port()
    with spawn([PY, "-m", "daphne", "-p", str(port), "hello:app"], port=port):
        yield f"127.0.0.1:{port}"


@contextmanager
def channels_lite_server(redis_url: str) -> Iterator[str]:
    port = free_port()
    common = ["--redis-url", redis_url, "--log-level", "warning"]
    worker = [PY, "-m", "channels_lite", "worker", "hello:app", "--app-dir", str(APPS), *common]
    server = [PY, "-m", "channels_lite", "protocol-server", "--bind", f"127.0.0.1:{port}", *common]
    with spawn(worker), spawn(server, port=port):
        # One request end to end so the worker is known to be pulling.
        subprocess.run(
            ["wrk", "-t1", "-c1", "-d1s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            check=True,
        )
        yield f"127.0.0.1:{port}"


def wrk(address: str, connections: int, duration: float) -> tuple[float, float]:
    """Requests/s and median latency (ms) from one wrk run."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(duration)}s",
            "--latency",
            f"http://{address}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50[2]]  # type: ignore[index]
    return rps, float(p50[1]) * scale  # type: ignore[index]


async def ws_rtt(address: str, count: int = 2000) -> float:
    from websockets.asyncio.client import connect

    samples = []
    async with connect(f"ws://{address}/ws") as ws:
        for _ in range(100):  # warm up
            await ws.send("x")
            await ws.recv()
        for _ in range(count):
            start = time.perf_counter()
            await ws.send("x")
            await ws.recv()
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run_round(
    name: str, address: str, duration: float, results: dict[str, dict[str, list[float]]]
) -> None:
    rps, _ = wrk(address, 50, duration)
    _, p50 = wrk(address, 1, duration)
    rtt = asyncio.run(ws_rtt(address)) if name != "daphne" else float("nan")
    entry = results.setdefault(name, {"rps": [], "p50_ms": [], "ws_rtt_ms": []})
    entry["rps"].append(rps)
    entry["p50_ms"].append(p50)
    entry["ws_rtt_ms"].append(rtt)
    print(
        f"  {name:13s} {rps:9.0f} req/s   c=1 p50 {p50:6.3f} ms   ws rtt {rtt:6.3f} ms", flush=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required (apt-get install wrk)")
    results: dict[str, dict[str, list[float]]] = {}
    with redis_server() as redis_url:
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}/{args.rounds}", flush=True)
            with uvicorn_server() as address:
                run_round("uvicorn", address, args.duration, results)
            with daphne_server() as address:
                run_round("daphne", address, args.duration, results)
            with channels_lite_server(redis_url) as address:
                run_round("channels-lite", address, args.duration, results)
    med = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in results.items()}
    ours, uv, dp = med["channels-lite"], med["uvicorn"], med["daphne"]
    print("\nmedians over rounds")
    for name, m in med.items():
        line = f"  {name:13s} {m['rps']:9.0f} req/s   c=1 p50 {m['p50_ms']:6.3f} ms"
        print(f"{line}   ws rtt {m['ws_rtt_ms']:6.3f} ms")
    print(f"\nchannels-lite / uvicorn req/s: {ours['rps'] / uv['rps']:.1%} (goal >= 40%)")
    print(f"channels-lite / daphne  req/s: {ours['rps'] / dp['rps']:.2f}x (goal >= 2x)")
    print(f"added median latency at c=1:   {ours['p50_ms'] - uv['p50_ms']:.3f} ms (goal <= 0.3 ms)")
    print(f"WebSocket echo median RTT:     {ours['ws_rtt_ms']:.3f} ms (goal <= 0.5 ms)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
