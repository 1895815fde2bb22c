"""The Autobahn|Testsuite against channels-lite: protocol server + workers + an echo app.

What runs: a private ``redis-server``, one protocol server (``python -m
channels_lite protocol-server``, uvicorn terminating with ``--ws``), one or
more workers running ``scripts/autobahn_app.py`` (echo: text as text, binary
as binary), and kosoku (the Autobahn case files on Python 3; the
``autobahntestsuite`` package is Python 2 only) as the fuzzing client against
``ws://127.0.0.1:PORT``. kosoku writes Autobahn's ``index.json`` (and the HTML
report) to the output directory; this script reads it, prints the counts by
verdict and the cases that did not pass, and exits 1 if any did not.

A case passes when its ``behavior`` is OK, NON-STRICT or INFORMATIONAL and its
``behaviorClose`` is OK or INFORMATIONAL (what kosoku's ``passed`` says too).

``--peer-uvicorn`` also runs the same app under plain uvicorn (same ``--ws``)
in the same invocation, for comparison: a case that fails there as well is the
terminating implementation's, not the relay's.

    .venv/bin/pip install kosoku
    .venv/bin/python scripts/autobahn.py                          # all 517 cases, ~12 min
    .venv/bin/python scripts/autobahn.py --ws wsproto --peer-uvicorn
    .venv/bin/python scripts/autobahn.py --cases '1.*' --cases '9.1.*' --parallelism 4
    .venv/bin/python scripts/autobahn.py --quick                  # the test suite's subset

Needs ``redis-server`` on PATH. Every process started here is stopped on the
way out (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APP = "autobahn_app:app"
MiB = 1024 * 1024

#: Autobahn's 9.x cases send messages of up to 16 MiB.
WS_MAX_SIZE = 20 * MiB
#: The terminating implementations the protocol server (and uvicorn) can use.
WS_IMPLEMENTATIONS = ("websockets-sansio", "wsproto", "websockets")
#: What ``--quick`` and the default test run use (well under a minute): framing,
#: pings, reserved bits and opcodes, fragmentation, UTF-8 (6.4.x wait out
#: 1 s timers), close handling, messages of 64 KiB to 1 MiB (they cross the
#: relay in parts), auto-fragmentation, and one case of each compression
#: family. Left out: the rest of 9.x (performance) and of 12.x/13.x
#: (compression at every size), which take minutes.
QUICK_CASES = (
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*",
    "9.1.1", "9.1.2", "9.1.3", "9.2.1", "9.2.2", "9.2.3",
    "10.*", "12.1.1", "13.1.1",
)  # fmt: skip

PASS_BEHAVIOR = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
PASS_CLOSE = frozenset({"OK", "INFORMATIONAL"})

_LISTENING = re.compile(r"listening on (?:[^\s:]+|\[[^\]]+\]):(?P<port>\d+)")
_UVICORN_RUNNING = re.compile(r"Uvicorn running on https?://[^\s:]+:(?P<port>\d+)")


class AutobahnError(RuntimeError):
    """The run could not be carried out (a process did not start, kosoku broke)."""


# ----------------------------------------------------------------------------
# Processes


class Process:
    """A child process in its own session; its output goes to ``log`` line by line."""

    def __init__(self, name: str, args: Sequence[str], log: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log
        self.tail: collections.deque[str] = collections.deque(maxlen=50)
        self._lines: list[str] = []  # kept until ready, for wait_for
        self._ready = False
        self._cond = threading.Condition()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                with self._cond:
                    if not self._ready:
                        self._lines.append(line)
                    self.tail.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """Block until a line of the log matches ``pattern`` (readiness)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if match := pattern.search(line):
                        self._ready = True
                        self._lines.clear()
                        return match
                seen = len(self._lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AutobahnError(
                        f"{self.name} exited ({self.proc.returncode}) before it was ready:\n"
                        + "\n".join(self.tail)
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AutobahnError(
                        f"{self.name} not ready within {timeout}s:\n" + "\n".join(self.tail)
                    )
                self._cond.wait(min(remaining, 0.5))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM its process group, SIGKILL after ``timeout``; return the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def started(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A private, non-persistent ``redis-server`` on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise AutobahnError("redis-server is not on PATH")
    port = _free_port()
    directory.mkdir(parents=True, exist_ok=True)
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--loglevel", "notice"]
    with started(Process("redis-server", args, directory / "redis.log")) as process:
        process.wait_for(re.compile(r"Ready to accept connections"))
        yield f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def channels_lite_stack(
    redis_url: str,
    log_dir: Path,
    *,
    ws: str = "websockets-sansio",
    workers: int = 1,
    ws_max_size: int = WS_MAX_SIZE,
    flow_window: int | None = None,
) -> Iterator[str]:
    """One protocol server and ``workers`` echo workers; yields the ``ws://`` URL."""
    log_dir.mkdir(parents=True, exist_ok=True)
    common = ["--redis-url", redis_url, "--log-level", "info"]  # readiness is logged at info
    window = ["--flow-window", str(flow_window)] if flow_window else []
    server_args = [
        sys.executable, "-m", "channels_lite", "protocol-server", "--bind", "127.0.0.1:0",
        "--ws", ws, "--ws-max-size", str(ws_max_size), *common, *window,
    ]  # fmt: skip
    worker_args = [
        sys.executable, "-m", "channels_lite", "worker", APP, "--app-dir", str(HERE),
        *common, *window,
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        server = Process("protocol-server", server_args, log_dir / "protocol-server.log")
        stack.enter_context(started(server))
        port = server.wait_for(_LISTENING)["port"]
        for index in range(workers):
            worker = Process(f"worker {index}", worker_args, log_dir / f"worker-{index}.log")
            stack.enter_context(started(worker))
            worker.wait_for(re.compile(r"serving "))
        yield f"ws://127.0.0.1:{port}"


@contextlib.contextmanager
def uvicorn_peer(
    log_dir: Path, *, ws: str = "websockets-sansio", ws_max_size: int = WS_MAX_SIZE
) -> Iterator[str]:
    """The same echo app under plain uvicorn; yields the ``ws://`` URL."""
    log_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "uvicorn", APP, "--app-dir", str(HERE),
        "--host", "127.0.0.1", "--port", "0", "--ws", ws, "--ws-max-size", str(ws_max_size),
        "--log-level", "info", "--no-access-log",
    ]  # fmt: skip
    with started(Process("uvicorn", args, log_dir / "uvicorn.log")) as process:
        port = process.wait_for(_UVICORN_RUNNING)["port"]
        yield f"ws://127.0.0.1:{port}"


# ----------------------------------------------------------------------------
# kosoku and its report


@dataclass
class Summary:
    """The verdicts of one run, from kosoku's ``index.json``."""

    target: str
    cases: dict[str, dict[str, object]]
    elapsed: float
    report_dir: Path
    counts: collections.Counter[str] = field(init=False)
    close_counts: collections.Counter[str] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = collections.Counter(str(c["behavior"]) for c in self.cases.values())
        self.close_counts = collections.Counter(
            str(c["behaviorClose"]) for c in self.cases.values()
        )

    @property
    def failures(self) -> list[str]:
        """Ids of the cases that did not pass, in case order."""
        return sorted((cid for cid, c in self.cases.items() if not passed(c)), key=case_key)

    @property
    def passed(self) -> int:
        return len(self.cases) - len(self.failures)

    def describe(self) -> str:
        lines = [
            f"{self.target}: {self.passed}/{len(self.cases)} passed in {self.elapsed:.1f} s"
            f" (report: {self.report_dir})",
            "  behavior:      " + _counts(self.counts),
            "  behaviorClose: " + _counts(self.close_counts),
        ]
        for cid in self.failures:
            case = self.cases[cid]
            lines.append(
                f"  FAIL {cid}: behavior={case['behavior']} close={case['behaviorClose']}"
                f" remoteCloseCode={case.get('remoteCloseCode')}"
                f" ({self.report_dir / str(case.get('reportfile', ''))})"
            )
        return "\n".join(lines)


def passed(case: dict[str, object]) -> bool:
    return case.get("behavior") in PASS_BEHAVIOR and case.get("behaviorClose") in PASS_CLOSE


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


def kosoku_command() -> list[str]:
    """How to run kosoku's CLI with this interpreter's installation."""
    beside = Path(sys.executable).parent / "kosoku"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kosoku")
    if found is None:
        raise AutobahnError("kosoku is not installed (pip install kosoku)")
    return [found]


def run_kosoku(
    url: str,
    report_dir: Path,
    *,
    target: str,
    cases: Sequence[str] = (),
    exclude: Sequence[str] = (),
    parallelism: int = 1,
    timeout: float = 3600.0,
) -> Summary:
    """Run the selected cases against ``url``; return the verdicts from ``index.json``.

    kosoku exits 1 when a case fails; that is a verdict, not an error. An
    error is a run that wrote no ``index.json``.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    index = report_dir / "index.json"
    index.unlink(missing_ok=True)
    args = [*kosoku_command(), url, "-o", str(report_dir), "-p", str(parallelism)]
    for pattern in cases:
        args += ["-i", pattern]
    for pattern in exclude:
        args += ["-x", pattern]
    begin = time.monotonic()
    with (report_dir / "kosoku.log").open("w") as log:
        try:
            done = subprocess.run(
                args, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise AutobahnError(f"kosoku did not finish within {timeout} s") from exc
    elapsed = time.monotonic() - begin
    if not index.exists():
        output = (report_dir / "kosoku.log").read_text(errors="replace")[-4000:]
        raise AutobahnError(f"kosoku exited {done.returncode} without index.json:\n{output}")
    agents: dict[str, dict[str, dict[str, object]]] = json.loads(index.read_text())
    results: dict[str, dict[str, object]] = {}
    for per_agent in agents.values():  # one agent (its Server header, or none)
        results.update(per_agent)
    return Summary(target, results, elapsed, report_dir)


def run_channels_lite(
    workdir: Path,
    *,
    ws: str = "websockets-sansio",
    workers: int = 1,
    cases: Sequence[str] = (),
    exclude: Sequence[str] = (),
    parallelism: int = 1,
    flow_window: int | None = None,
    timeout: float = 3600.0,
) -> Summary:
    """Redis, a protocol server with ``ws`` and ``workers`` echo workers, then kosoku."""
    name = f"channels-lite-{ws}"
    with (
        redis_server(workdir / name / "redis") as redis_url,
        channels_lite_stack(
            redis_url, workdir / name / "logs", ws=ws, workers=workers, flow_window=flow_window
        ) as url,
    ):
        return run_kosoku(
            url,
            workdir / name / "report",
            target=f"channels-lite ({ws}, {workers} worker{'s' if workers > 1 else ''})",
            cases=cases,
            exclude=exclude,
            parallelism=parallelism,
            timeout=timeout,
        )


def run_uvicorn(
    workdir: Path,
    *,
    ws: str = "websockets-sansio",
    cases: Sequence[str] = (),
    exclude: Sequence[str] = (),
    parallelism: int = 1,
    timeout: float = 3600.0,
) -> Summary:
    """The same echo app under plain uvicorn, then kosoku."""
    name = f"uvicorn-{ws}"
    with uvicorn_peer(workdir / name / "logs", ws=ws) as url:
        return run_kosoku(
            url,
            workdir / name / "report",
            target=f"uvicorn alone ({ws})",
            cases=cases,
            exclude=exclude,
            parallelism=parallelism,
            timeout=timeout,
        )


# ----------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ws",
        action="append",
        choices=WS_IMPLEMENTATIONS,
        help="uvicorn's WebSocket implementation in the protocol server; repeat to run"
        " several (default: websockets-sansio)",
    )
    parser.add_argument(
        "--cases", action="append", metavar="GLOB", help="case id or glob (default: all)"
    )
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="case id or glob")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the test suite's subset: {' '.join(QUICK_CASES)}",
    )
    parser.add_argument("--workers", type=int, default=1, help="echo workers (default: 1)")
    parser.add_argument(
        "--flow-window", type=int, default=None, help="bytes (default: the CLI's default)"
    )
    parser.add_argument(
        "--parallelism", type=int, default=1, help="cases kosoku runs at once (default: 1)"
    )
    parser.add_argument(
        "--peer-uvicorn",
        action="store_true",
        help="also run the echo app under plain uvicorn (same --ws) for comparison",
    )
    parser.add_argument(
        "--only-uvicorn", action="store_true", help="run plain uvicorn only (no channels-lite)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for reports and logs (default: a new temporary directory)",
    )
    args = parser.parse_args(argv)
    implementations = args.ws or ["websockets-sansio"]
    cases = list(args.cases or ())
    exclude = list(args.exclude or ())
    if args.quick:
        cases += QUICK_CASES
    workdir = args.out or Path(tempfile.mkdtemp(prefix="autobahn-"))
    workdir.mkdir(parents=True, exist_ok=True)

    summaries: list[Summary] = []
    for ws in implementations:
        if not args.only_uvicorn:
            summary = run_channels_lite(
                workdir,
                ws=ws,
                workers=args.workers,
                flow_window=args.flow_window,
                cases=cases,
                exclude=exclude,
                parallelism=args.parallelism,
            )
            print(summary.describe(), flush=True)
            summaries.append(summary)
        if args.peer_uvicorn or args.only_uvicorn:
            summary = run_uvicorn(
                workdir, ws=ws, cases=cases, exclude=exclude, parallelism=args.parallelism
            )
            print(summary.describe(), flush=True)
            summaries.append(summary)
    print()
    for summary in summaries:
        print(f"{summary.target}: {summary.passed}/{len(summary.cases)} ({summary.elapsed:.0f} s)")
    return 0 if all(not s.failures for s in summaries) else 1


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except AutobahnError as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        sys.exit(2)
