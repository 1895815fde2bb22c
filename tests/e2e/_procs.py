"""Real protocol-server and worker processes for end-to-end tests.

Each process is started from the ``channels-lite`` CLI exactly as a user
would start it, in its own process group. Readiness is the log line the
process prints once it serves ("listening on HOST:PORT" / "serving"), read
from its stderr: no sleeps, no polling of the port. Everything it logs is
kept, so a failing test can show it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

APPS_DIR = Path(__file__).parent / "apps"
_LISTENING = re.compile(r"listening on (?P<host>[^\s:]+|\[[^\]]+\]):(?P<port>\d+)")


class Process:
    """A ``channels-lite`` subcommand running in the background.

    ``module`` is what ``python -m`` runs: a subclass may run another program
    (``uvicorn``, for instance) with the same readiness and log handling.
    """

    module = "channels_lite"

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, ready: re.Pattern[str] | str, timeout: float = 20.0) -> re.Match[str]:
        """Start and wait until a log line matches ``ready``; return the match."""
        pattern = re.compile(ready) if isinstance(ready, str) else ready
        self.proc = subprocess.Popen(
            self.argv(),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self.wait_for(pattern, timeout)

    def argv(self) -> list[str]:
        """The command line: ``python -m MODULE ARGS`` (a subclass may run a script)."""
        return [sys.executable, "-m", self.module, *self.args]

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20.0) -> re.Match[str]:
        """Block until a log line (past or future) matches ``pattern``."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    match = rx.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if (
                    self.proc is not None
                    and self.proc.poll() is not None
                    and seen == len(self.lines)
                ):
                    raise AssertionError(
                        f"{self.args[0]} exited ({self.proc.returncode}) before {rx.pattern!r}:\n"
                        + self.log()
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {rx.pattern!r} within {timeout}s:\n" + self.log())
                self._new_line.wait(min(remaining, 0.5))

    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def start_protocol_server(
    redis_url: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[Process, str]:
    """Start a protocol server on a free port; return it and its base URL."""
    process = Process(
        ["protocol-server", "--bind", "127.0.0.1:0", "--redis-url", redis_url, *extra], env=env
    )
    match = process.start(_LISTENING)
    return process, f"http://127.0.0.1:{match['port']}"


def start_worker(
    redis_url: str, app: str, *extra: str, env: dict[str, str] | None = None
) -> Process:
    """Start a worker for ``app`` (``module:attr`` in tests/e2e/apps)."""
    process = Process(
        ["worker", app, "--app-dir", str(APPS_DIR), "--redis-url", redis_url, *extra], env=env
    )
    process.start(r"serving ")
    return process
