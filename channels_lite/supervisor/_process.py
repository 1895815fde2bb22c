"""One supervised child process: started, restarted after a crash, stopped.

Theory of operation:

* A child runs in its own session, so a Ctrl-C in the terminal reaches only
  the supervisor, which then sends each child exactly one SIGTERM (a second
  signal could land after a child put back the default handler on its way
  out and kill it mid-drain).
* A child that exits while the deployment runs is restarted after a delay
  that doubles with each quick crash (``BACKOFF_MIN`` to ``BACKOFF_MAX``) and
  falls back to ``BACKOFF_MIN`` once a run lasted ``STABLE_AFTER`` seconds.
* A child that exits with an error code on its very first start, within
  ``STABLE_AFTER``, is a set-up error (the app does not import, the port is
  taken, Redis is unreachable): restarting would not help, so the whole
  deployment stops with that error.
* On stop the child gets SIGTERM and ``shutdown_timeout`` plus a margin to
  drain; then, or at once on a forced stop, SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Final

import anyio
import anyio.abc

from ..exceptions import ChannelsLiteError

logger = logging.getLogger(__name__)

BACKOFF_MIN: Final = 1.0
BACKOFF_MAX: Final = 30.0
STABLE_AFTER: Final = 10.0
#: Time a child gets beyond its own shutdown_timeout (interpreter exit, Redis).
STOP_MARGIN: Final = 5.0


class ChildFailed(ChannelsLiteError):
    """A child failed on its first start; restarting it would not help."""


async def wait_exit(process: anyio.abc.Process, event: anyio.Event) -> int | None:
    """The process's exit code, or ``None`` if ``event`` is set first."""
    code = None
    async with anyio.create_task_group() as tg:

        async def on_event() -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(on_event)
        # Cancellation point: the process keeps running; the caller owns it.
        code = await process.wait()
        tg.cancel_scope.cancel()
    return code


class Child:
    """One process of the deployment.

    Args:
        name: how the log names it (``worker 2``).
        argv: its command line.
        env: its environment.
        shutdown_timeout: its own drain time; it gets ``STOP_MARGIN`` more.
        pass_fds: file descriptors it inherits.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        shutdown_timeout: float,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.pass_fds = tuple(pass_fds)
        self.shutdown_timeout = shutdown_timeout
        self.pid: int | None = None
        self.starts = 0

    async def supervise(self, stop: anyio.Event, force: anyio.Event) -> None:
        """Run the child, restarting it whenever it exits, until ``stop``.

        Raises:
            ChildFailed: it exited with an error on its first start.
        """
        delay = BACKOFF_MIN
        while not stop.is_set():
            started = anyio.current_time()
            code = await self._run_once(stop, force)
            if code is None:
                return
            ran = anyio.current_time() - started
            if self.starts == 1 and code > 0 and ran < STABLE_AFTER:
                raise ChildFailed(f"{self.name} exited with code {code} on start-up")
            if ran >= STABLE_AFTER:
                delay = BACKOFF_MIN
            logger.warning("%s exited with code %d; restarting in %.1f s", self.name, code, delay)
            with anyio.move_on_after(delay):
                await stop.wait()
            delay = min(delay * 2, BACKOFF_MAX)

    async def _run_once(self, stop: anyio.Event, force: anyio.Event) -> int | None:
        """Run once: the exit code if it exited by itself, ``None`` if stopped."""
        process = await anyio.open_process(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
            env=self.env,
            start_new_session=True,
            pass_fds=self.pass_fds,
        )
        # If this task is cancelled, aclose() kills and reaps the process.
        async with process:
            self.pid = process.pid
            self.starts += 1
            verb = "started" if self.starts == 1 else "restarted"
            logger.info("%s %s (pid %d)", self.name, verb, process.pid)
            code = await wait_exit(process, stop)
            if code is not None:
                return code
            await self._stop(process, force)
            return None

    async def _stop(self, process: anyio.abc.Process, force: anyio.Event) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with anyio.move_on_after(self.shutdown_timeout + STOP_MARGIN):
            await wait_exit(process, force)
        if process.returncode is None:
            why = "forced stop" if force.is_set() else "did not stop in time"
            logger.warning("%s: %s; killing it", self.name, why)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        code = await process.wait()
        if code not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before its handler was set
            logger.warning("%s stopped with code %d", self.name, code)
