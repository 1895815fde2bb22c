"""Soak: mixed HTTP and WebSocket traffic for a long while, a worker SIGKILLed every so often.

The deployment is real processes, started as a user starts them: a private
``redis-server`` on a free port, ``--servers`` protocol servers and
``--workers`` workers (``python -m channels_lite``) running
``bench/apps/hello.py`` (HTTP hello world, WebSocket echo). Then, for
``--duration`` seconds:

* ``--http-clients`` clients, each in a loop: ``GET /``, expect 200 and the body;
* ``--ws-clients`` clients, each connected and sending a numbered text every
  ``--ws-interval`` seconds, expecting it echoed; a closed or failed
  connection is counted and the client reconnects;
* every ``--kill-every`` seconds one worker (round robin) is SIGKILLed and a
  new one started in its place.

Reported: requests served and echoes received; errors by kind (HTTP status
codes, connection errors, WebSocket close codes, handshake refusals,
timeouts); each kill with its restart time; traffic per interval between
kills; every process's RSS (``VmRSS`` from ``/proc/<pid>/status``) when it was
ready and when it stopped (killed workers: just before the kill), its peak
(``VmHWM``), its exit code and the warnings and errors it logged; the Redis
keys by kind at the start and at the end. ``--json FILE`` writes all of it,
plus a per-second timeline of the traffic and every process's RSS every
``--sample-every`` seconds.

Exit status 1 if a process died without being killed by the soak, a process
did not exit 0 on SIGTERM at the end, or nothing at all was served.
Errors caused by the kills (a request or WebSocket on the killed worker gets
502 / close 1011 within the heartbeat timeout) are reported, not failed on.

    python bench/soak.py [--duration 600] [--kill-every 60] [--servers 2] [--workers 3]
                         [--http-clients 20] [--ws-clients 50] [--json out.json] [--logs DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
PY = sys.executable
BODY = b"Hello, world!"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid``, KiB; empty if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


class Clock:
    """Seconds since the load began (negative before: the deployment's start-up)."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.origin

    def restart(self) -> float:
        """Make now 0; return by how much earlier readings must be shifted."""
        shift = self()
        self.origin += shift
        return shift


# --------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    """One process of the deployment, from start to exit, with its memory readings."""

    name: str
    role: str
    argv: list[str]
    log: Path
    ready: Callable[[Proc], bool]
    clock: Callable[[], float]
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready_after: float = 0.0
    ended: float | None = None
    rss_start: int | None = None
    rss_end: int | None = None
    rss_peak: int | None = None
    exit: int | None = None
    killed: bool = False
    died_early: bool = False
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until ``ready`` (blocking: run it in a thread)."""
        self.started = self.clock()
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=APPS
            )
        deadline = time.monotonic() + timeout
        while not self.ready(self):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.05)  # a benchmark, not a test: polling for readiness is fine here
        self.ready_after = self.clock() - self.started
        self.rss_start = memory(self.pid).get("VmRSS")
        if self.rss_start is not None:
            self.samples.append((self.clock(), self.rss_start))

    def sample(self) -> None:
        """The last reading (before a kill or a stop)."""
        reading = memory(self.pid)
        if reading:
            self.rss_end, self.rss_peak = reading["VmRSS"], reading["VmHWM"]
            self.samples.append((self.clock(), self.rss_end))

    def kill(self) -> None:
        assert self.popen is not None
        self.sample()
        self.killed = True
        os.killpg(self.pid, signal.SIGKILL)
        self.exit = self.popen.wait()
        self.ended = self.clock()

    def log_levels(self) -> Counter[str]:
        """Log records by level (the JSON log format), ``other`` for any other line."""
        levels: Counter[str] = Counter()
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                levels[json.loads(line)["level"]] += 1
            except (ValueError, KeyError, TypeError):
                levels["other"] += 1
        return levels

    def report(self) -> dict[str, Any]:
        levels = self.log_levels()
        return {
            "name": self.name,
            "role": self.role,
            "pid": self.pid,
            "started": round(self.started, 3),
            "ready_after": round(self.ready_after, 3),
            "ended": None if self.ended is None else round(self.ended, 3),
            "rss_start_kib": self.rss_start,
            "rss_end_kib": self.rss_end,
            "rss_peak_kib": self.rss_peak,
            "exit": self.exit,
            "killed": self.killed,
            "died_early": self.died_early,
            "warnings": levels["WARNING"],
            "errors": levels["ERROR"] + levels["CRITICAL"],
            "other_lines": levels["other"],
            "log": str(self.log),
            "rss_samples_kib": [[round(t, 1), kib] for t, kib in self.samples],
        }


def _log_has(text: str) -> Callable[[Proc], bool]:
    return lambda proc: text in proc.log.read_text(errors="replace")


def _port_ready(port: int) -> Callable[[Proc], bool]:
    return lambda proc: port_open(port)


class Deployment:
    """Redis, protocol servers and workers; workers can be killed and replaced."""

    def __init__(self, args: argparse.Namespace, logs: Path, clock: Callable[[], float]) -> None:
        self.args, self.logs, self.clock = args, logs, clock
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis: Proc | None = None
        self.servers: list[Proc] = []
        self.urls: list[str] = []
        self.workers: list[Proc] = []  # the live one of each slot
        self.everyone: list[Proc] = []
        self.generation: Counter[int] = Counter()

    def _proc(self, name: str, role: str, argv: list[str], ready: Callable[[Proc], bool]) -> Proc:
        proc = Proc(name, role, argv, self.logs / f"{name}.log", ready, self.clock)
        self.everyone.append(proc)
        proc.start()
        return proc

    def start(self) -> None:
        """Everything, ready (blocking)."""
        redis_argv = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        redis_argv += ["--save", "", "--appendonly", "no", "--dir", str(self.logs)]
        self.redis = self._proc("redis", "redis", redis_argv, _port_ready(self.redis_port))
        for slot in range(self.args.workers):
            self.workers.append(self.start_worker(slot))
        for i in range(self.args.servers):
            port = free_port()
            argv = [PY, "-m", "channels_lite", "protocol-server", "--bind", f"127.0.0.1:{port}"]
            # warning: the access log (info) would write a line per request.
            argv += [*self.common("warning"), *self.args.server_arg]
            self.servers.append(self._proc(f"server-{i + 1}", "server", argv, _port_ready(port)))
            self.urls.append(f"http://127.0.0.1:{port}")

    def common(self, level: str) -> list[str]:
        return ["--redis-url", self.redis_url, "--log-level", level, "--log-format", "json"]

    def start_worker(self, slot: int) -> Proc:
        """A worker for ``slot`` (blocking). Workers log at info: a few lines, and "serving"."""
        self.generation[slot] += 1
        name = f"worker-{slot + 1}" + (
            "" if self.generation[slot] == 1 else f".{self.generation[slot]}"
        )
        argv = [PY, "-m", "channels_lite", "worker", "hello:app", "--app-dir", str(APPS)]
        argv += [*self.common("info"), *self.args.worker_arg]
        return self._proc(name, "worker", argv, _log_has(" serving "))

    def replace_worker(self, slot: int) -> dict[str, Any]:
        """SIGKILL the slot's worker, start another (blocking); what happened."""
        victim = self.workers[slot]
        victim.kill()
        self.workers[slot] = self.start_worker(slot)
        new = self.workers[slot]
        return {
            "at": round(victim.ended or 0.0, 3),
            "killed": victim.name,
            "killed_pid": victim.pid,
            "started": new.name,
            "started_pid": new.pid,
            "ready_after": round(new.ready_after, 3),
        }

    def stop(self) -> None:
        """Last readings; SIGTERM servers and workers together, then Redis (blocking)."""
        live = [p for p in self.everyone if p.popen is not None and p.exit is None]
        for proc in live:
            if proc.popen is not None and proc.popen.poll() is not None:
                proc.died_early = True  # nobody here killed it
            proc.sample()
        apps = [p for p in live if p.role != "redis"]
        self._terminate(apps)
        self._terminate([p for p in live if p.role == "redis"])

    def _terminate(self, procs: list[Proc]) -> None:
        for proc in procs:
            if proc.popen is not None and proc.popen.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        for proc in procs:
            assert proc.popen is not None
            try:
                proc.exit = proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.exit = proc.popen.wait()
            proc.ended = self.clock()


# --------------------------------------------------------------------------
# Load


@dataclass
class Tally:
    """Everything the clients saw; ``timeline`` per second since the load began."""

    clock: Callable[[], float]
    http_ok: int = 0
    http_errors: Counter[str] = field(default_factory=Counter)
    ws_opened: int = 0
    ws_echoes: int = 0
    ws_closes: Counter[str] = field(default_factory=Counter)
    ws_errors: Counter[str] = field(default_factory=Counter)
    timeline: dict[int, Counter[str]] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        second = int(self.clock())
        self.timeline.setdefault(second, Counter())[what] += 1


async def http_client(url: str, tally: Tally, limit: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=limit) as client:
        while True:
            kind = None
            try:
                response = await client.get("/")
            except httpx.TimeoutException:
                kind = "timeout"
            except httpx.HTTPError as exc:
                kind = type(exc).__name__
            else:
                if response.status_code != 200:
                    kind = f"status {response.status_code}"
                elif response.content != BODY:
                    kind = "wrong body"
            if kind is None:
                tally.http_ok += 1
                tally.mark("http_ok")
            else:
                tally.http_errors[kind] += 1
                tally.mark("http_error")
                await anyio.sleep(0.1)  # no hot loop against a refusing server


async def ws_client(url: str, number: int, tally: Tally, interval: float, limit: float) -> None:
    sent = 0
    while True:
        try:
            async with connect(url + "/ws", open_timeout=limit, close_timeout=2) as ws:
                tally.ws_opened += 1
                while True:
                    sent += 1
                    text = f"{number}:{sent}"
                    await ws.send(text)
                    with anyio.fail_after(limit):
                        echo = await ws.recv()
                    if echo != text:
                        tally.ws_errors["wrong echo"] += 1
                        tally.mark("ws_error")
                        break
                    tally.ws_echoes += 1
                    tally.mark("ws_echo")
                    await anyio.sleep(interval)
        except ConnectionClosed as exc:
            tally.ws_closes[str(exc.rcvd.code) if exc.rcvd else "no close frame"] += 1
            tally.mark("ws_close")
        except InvalidStatus as exc:
            tally.ws_errors[f"handshake status {exc.response.status_code}"] += 1
            tally.mark("ws_error")
        except TimeoutError:
            tally.ws_errors["timeout"] += 1
            tally.mark("ws_error")
        except (OSError, InvalidHandshake) as exc:
            tally.ws_errors[type(exc).__name__] += 1
            tally.mark("ws_error")
        await anyio.sleep(0.2)  # then reconnect, as a browser would


async def sampler(deployment: Deployment, every: float) -> None:
    """RSS of every live process every ``every`` seconds: growth over time, not just two ends."""
    while True:
        await anyio.sleep(every)
        for proc in deployment.everyone:
            if proc.exit is None and not proc.killed:
                proc.sample()


async def killer(
    deployment: Deployment, args: argparse.Namespace, kills: list[dict[str, Any]]
) -> None:
    """Every ``kill_every`` seconds, SIGKILL the next worker and start a new one."""
    number = 0
    while True:
        number += 1
        due = number * args.kill_every
        if due >= args.duration:
            return
        await anyio.sleep(due - deployment.clock())
        slot = (number - 1) % len(deployment.workers)
        # In a thread: the load goes on while the new worker starts. Not
        # cancellable, so a kill always ends with its replacement running.
        kills.append(await anyio.to_thread.run_sync(deployment.replace_worker, slot))
        kill = kills[-1]
        print(
            f"  {kill['at']:7.1f} s  killed {kill['killed']},"
            f" {kill['started']} ready in {kill['ready_after']:.1f} s",
            flush=True,
        )


async def run_load(
    deployment: Deployment, args: argparse.Namespace
) -> tuple[Tally, list[dict[str, Any]], float]:
    tally = Tally(deployment.clock)
    kills: list[dict[str, Any]] = []
    urls = deployment.urls
    start = deployment.clock()
    async with anyio.create_task_group() as tg:
        for i in range(args.http_clients):
            tg.start_soon(http_client, urls[i % len(urls)], tally, args.timeout)
        ws_urls = [u.replace("http://", "ws://", 1) for u in urls]
        for i in range(args.ws_clients):
            tg.start_soon(
                ws_client, ws_urls[i % len(urls)], i, tally, args.ws_interval, args.timeout
            )
        tg.start_soon(killer, deployment, args, kills)
        tg.start_soon(sampler, deployment, args.sample_every)
        await anyio.sleep(args.duration - (deployment.clock() - start))
        end = deployment.clock()
        tg.cancel_scope.cancel()
    return tally, kills, end


# --------------------------------------------------------------------------
# Report


def intervals(tally: Tally, kills: list[dict[str, Any]], end: float) -> list[dict[str, Any]]:
    """Traffic between consecutive kills: where the errors fell."""
    edges = [0.0, *(k["at"] for k in kills), end]
    rows = []
    for lo, hi in itertools.pairwise(edges):
        total: Counter[str] = Counter()
        for second, counts in tally.timeline.items():
            if lo <= second < hi:
                total.update(counts)
        rows.append({"from": round(lo, 1), "to": round(hi, 1), **total})
    return rows


def build_report(
    args: argparse.Namespace,
    deployment: Deployment,
    tally: Tally,
    kills: list[dict[str, Any]],
    end: float,
    keys: tuple[dict[str, int], dict[str, int]],
) -> dict[str, Any]:
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "logs")},
        "load_seconds": round(end, 3),
        "http": {
            "ok": tally.http_ok,
            "per_second": round(tally.http_ok / end, 1),
            "errors": dict(tally.http_errors.most_common()),
        },
        "ws": {
            "opened": tally.ws_opened,
            "echoes": tally.ws_echoes,
            "per_second": round(tally.ws_echoes / end, 1),
            "closes": dict(tally.ws_closes.most_common()),
            "errors": dict(tally.ws_errors.most_common()),
        },
        "kills": kills,
        "intervals": intervals(tally, kills, end),
        "processes": [p.report() for p in deployment.everyone],
        "redis_keys": {"start": keys[0], "end": keys[1]},
        "timeline": {str(s): dict(c) for s, c in sorted(tally.timeline.items())},
    }


def failures(report: dict[str, Any]) -> list[str]:
    problems = []
    for proc in report["processes"]:
        if proc["died_early"]:
            problems.append(f"{proc['name']} died during the soak (exit {proc['exit']})")
        elif not proc["killed"] and proc["exit"] != 0:
            problems.append(f"{proc['name']} exited {proc['exit']} on SIGTERM")
    if report["http"]["ok"] == 0 and report["ws"]["echoes"] == 0:
        problems.append("nothing was served")
    return problems


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def print_report(report: dict[str, Any]) -> None:
    config, http, ws = report["config"], report["http"], report["ws"]
    print(
        f"\nsoak: {report['load_seconds']:.0f} s, {config['servers']} protocol server(s),"
        f" {config['workers']} worker(s), {config['http_clients']} HTTP +"
        f" {config['ws_clients']} WebSocket clients,"
        f" a worker killed every {config['kill_every']:g} s"
    )
    print("\ntraffic")
    print(f"  HTTP requests served (200)   {http['ok']:>9}  ({http['per_second']}/s)")
    for kind, count in http["errors"].items():
        print(f"  HTTP error: {kind:<18} {count:>9}")
    print(f"  WebSocket connections opened {ws['opened']:>9}")
    print(f"  WebSocket echoes             {ws['echoes']:>9}  ({ws['per_second']}/s)")
    for code, count in ws["closes"].items():
        print(f"  WebSocket closed: {code:<12} {count:>9}")
    for kind, count in ws["errors"].items():
        print(f"  WebSocket error: {kind:<13} {count:>9}")
    print("\nbetween kills (s)      http ok  http err  ws echo  ws close  ws err")
    for row in report["intervals"]:
        span = f"{row['from']:7.1f} - {row['to']:7.1f}"
        counts = [
            row.get(k, 0) for k in ("http_ok", "http_error", "ws_echo", "ws_close", "ws_error")
        ]
        widths = (8, 8, 7, 8, 6)
        print(
            f"  {span:<20} " + "  ".join(f"{n:>{w}}" for n, w in zip(counts, widths, strict=True))
        )
    print("\nprocesses (RSS MiB)   pid      ran (s)          start    end   peak  exit  warn  err")
    for p in report["processes"]:
        ended = "end" if p["ended"] is None else f"{p['ended']:.0f}"
        ran = f"{p['started']:.0f} - {ended}"
        exit_ = "KILL" if p["killed"] else str(p["exit"])
        print(
            f"  {p['name']:<18} {p['pid']:>7}  {ran:<15} {mib(p['rss_start_kib']):>6} "
            f"{mib(p['rss_end_kib']):>6} {mib(p['rss_peak_kib']):>6}  {exit_:>4}  "
            f"{p['warnings']:>4}  {p['errors']:>3}"
        )
    keys = report["redis_keys"]
    print()
    for when in ("start", "end"):
        census = ", ".join(f"{kind} {n}" for kind, n in keys[when].items())
        print(f"Redis keys at the {when}: {sum(keys[when].values())} ({census})")


def key_census(url: str) -> dict[str, int]:
    """Redis keys by kind (``asgi:ch``, ``asgi:hb:wk``, ...): what is left behind."""
    client = redis.Redis.from_url(url)
    try:
        kinds: Counter[str] = Counter()
        for key in client.scan_iter(count=1000):
            parts = key.decode(errors="replace").split(":")
            kinds[":".join(parts[:3] if parts[1:2] == ["hb"] else parts[:2])] += 1
        return dict(sorted(kinds.items()))
    finally:
        client.close()


async def soak(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    clock = Clock()
    deployment = Deployment(args, logs, clock)
    try:
        await anyio.to_thread.run_sync(deployment.start)
        print(f"deployment ready in {clock():.1f} s; logs in {logs}", flush=True)
        keys_start = key_census(deployment.redis_url)
        shift = clock.restart()
        for proc in deployment.everyone:
            proc.started -= shift
        tally, kills, end = await run_load(deployment, args)
        keys_end = key_census(deployment.redis_url)
    finally:
        with anyio.CancelScope(shield=True):  # Ctrl-C too: leave no process behind
            await anyio.to_thread.run_sync(deployment.stop)
    return build_report(args, deployment, tally, kills, end, (keys_start, keys_end))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--http-clients", type=int, default=20)
    parser.add_argument("--ws-clients", type=int, default=50)
    parser.add_argument(
        "--ws-interval",
        type=float,
        default=0.1,
        help="seconds between a WebSocket client's messages",
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="client timeout per request, connect or echo"
    )
    parser.add_argument(
        "--sample-every", type=float, default=10.0, help="seconds between RSS readings"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra protocol-server option (repeat)"
    )
    parser.add_argument(
        "--worker-arg", action="append", default=[], help="extra worker option (repeat)"
    )
    parser.add_argument(
        "--json", type=Path, help="write the report (with a per-second timeline) here"
    )
    parser.add_argument(
        "--logs",
        type=Path,
        help="keep the processes' logs here (default: a new temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.servers < 1 or args.workers < 1 or args.kill_every <= 0 or args.duration <= 0:
        parser.error("--servers and --workers must be >= 1, --duration and --kill-every > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="channels-lite-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    report = anyio.run(soak, args, logs)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    problems = failures(report)
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
