"""HTTP and WebSocket through channels-lite, against uvicorn and daphne, in one run.

What is measured (hello-world app, ``bench/apps/hello.py``, the same file for
every server):

* throughput: ``wrk`` with 50 connections for a few seconds, requests/s;
* added latency: ``wrk`` with one connection, median latency;
* WebSocket echo: one client sending and awaiting 2,000 echoes, median RTT;
* CPU per request during the throughput run, by process (server, worker,
  Redis; from ``/proc``, Linux): what the rate costs, and where.

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
def redis_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        spawn(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            port=port,
        ) as redis,
    ):
        yield f"redis://127.0.0.1:{port}/0", redis.pid


@contextmanager
def uvicorn_server() -> Iterator[tuple[str, Roles]]:
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
    with spawn(args, port=port) as server:
        yield f"127.0.0.1:{port}", {"server": server.pid}


@contextmanager
def daphne_server() -> Iterator[tuple[str, Roles]]:
    port = free_port()
    with spawn([PY, "-m", "daphne", "-p", str(port), "hello:app"], port=port) as server:
        yield f"127.0.0.1:{port}", {"server": server.pid}


@contextmanager
def channels_lite_server(redis_url: str, redis_pid: int) -> Iterator[tuple[str, Roles]]:
    port = free_port()
    common = ["--redis-url", redis_url, "--log-level", "warning"]
    worker = [PY, "-m", "channels_lite", "worker", "hello:app", "--app-dir", str(APPS), *common]
    server = [PY, "-m", "channels_lite", "protocol-server", "--bind", f"127.0.0.1:{port}", *common]
    with spawn(worker) as worker_proc, spawn(server, port=port) as server_proc:
        yield warmed_up(port, server_proc.pid, worker_proc.pid, redis_pid)


def warmed_up(port: int, server: int, worker: int, redis: int) -> tuple[str, Roles]:
    """After one request end to end (so the worker is known to be pulling):
    the address and the serving processes by role."""
    subprocess.run(
        ["wrk", "-t1", "-c1", "-d1s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        check=True,
    )
    return f"127.0.0.1:{port}", {"server": server, "worker": worker, "redis": redis}


@contextmanager
def floor_server(redis_url: str, redis_pid: int) -> Iterator[tuple[str, Roles]]:
    """The bare relay of ``floor_relay.py``: what the architecture costs with nothing of ours."""
    port = free_port()
    common = ["hello:app", "--redis-url", redis_url, "--app-dir", str(APPS)]
    relay = [PY, str(HERE / "floor_relay.py")]
    with (
        spawn([*relay, "worker", *common]) as worker_proc,
        spawn([*relay, "server", *common, "--port", str(port)], port=port) as server_proc,
    ):
        yield warmed_up(port, server_proc.pid, worker_proc.pid, redis_pid)


#: The processes that serve, by role, for CPU accounting.
Roles = dict[str, int]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(address: str, connections: int, duration: float) -> tuple[float, float, int]:
    """Requests/s, median latency (ms) and requests made, from one wrk run."""
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
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return rps, float(p50[1]) * scale, requests  # type: ignore[index]


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
    name: str,
    address: str,
    roles: Roles,
    duration: float,
    results: dict[str, dict[str, list[float]]],
) -> None:
    # CPU per request under load, by process: where the time goes, which
    # a rate alone does not say (wrk's own CPU not included).
    before = {role: cpu_seconds(pid) for role, pid in roles.items()}
    rps, _, requests = wrk(address, 50, duration)
    cpu = {role: (cpu_seconds(pid) - before[role]) * 1e6 / requests for role, pid in roles.items()}
    _, p50, _ = wrk(address, 1, duration)
    # daphne's hello app has no echo route; the floor relays HTTP only.
    rtt = asyncio.run(ws_rtt(address)) if name not in ("daphne", "floor") else float("nan")
    entry = results.setdefault(name, {"rps": [], "p50_ms": [], "ws_rtt_ms": []})
    entry["rps"].append(rps)
    entry["p50_ms"].append(p50)
    entry["ws_rtt_ms"].append(rtt)
    for role, us in cpu.items():
        entry.setdefault(f"cpu_us_{role}", []).append(us)
    shares = ", ".join(f"{role} {us:.0f}" for role, us in cpu.items())
    print(
        f"  {name:13s} {rps:9.0f} req/s   c=1 p50 {p50:6.3f} ms   ws rtt {rtt:6.3f} ms"
        f"   CPU us/request at c=50: {shares}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the bare relay of floor_relay.py (the architecture's own cost)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required (apt-get install wrk)")
    results: dict[str, dict[str, list[float]]] = {}
    with redis_server() as (redis_url, redis_pid):
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}/{args.rounds}", flush=True)
            with uvicorn_server() as (address, roles):
                run_round("uvicorn", address, roles, args.duration, results)
            with daphne_server() as (address, roles):
                run_round("daphne", address, roles, args.duration, results)
            with channels_lite_server(redis_url, redis_pid) as (address, roles):
                run_round("channels-lite", address, roles, args.duration, results)
            if args.floor:
                with floor_server(redis_url, redis_pid) as (address, roles):
                    run_round("floor", address, roles, args.duration, results)
    med = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in results.items()}
    ours, uv, dp = med["channels-lite"], med["uvicorn"], med["daphne"]
    print("\nmedians over rounds")
    for name, m in med.items():
        line = f"  {name:13s} {m['rps']:9.0f} req/s   c=1 p50 {m['p50_ms']:6.3f} ms"
        cpu = {key[len("cpu_us_") :]: us for key, us in m.items() if key.startswith("cpu_us_")}
        shares = ", ".join(f"{role} {us:.0f}" for role, us in cpu.items())
        total = sum(cpu.values())
        print(f"{line}   ws rtt {m['ws_rtt_ms']:6.3f} ms   CPU us/request {total:.0f} ({shares})")
    print(f"\nchannels-lite / uvicorn req/s: {ours['rps'] / uv['rps']:.1%} (goal >= 40%)")
    print(f"channels-lite / daphne  req/s: {ours['rps'] / dp['rps']:.2f}x (goal >= 2x)")
    print(f"added median latency at c=1:   {ours['p50_ms'] - uv['p50_ms']:.3f} ms (goal <= 0.3 ms)")
    print(f"WebSocket echo median RTT:     {ours['ws_rtt_ms']:.3f} ms (goal <= 0.5 ms)")
    if "floor" in med:
        floor = med["floor"]
        added = floor["p50_ms"] - uv["p50_ms"]
        print(
            f"floor (bare relay) / uvicorn: {floor['rps'] / uv['rps']:.1%}, / daphne "
            f"{floor['rps'] / dp['rps']:.2f}x, added c=1 latency {added:.3f} ms;"
            f" channels-lite / floor req/s: {ours['rps'] / floor['rps']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
