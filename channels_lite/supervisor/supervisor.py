"""``channels-lite run``: a whole local deployment in one process tree.

``Supervisor(config).serve()`` starts the broker (embedded when no Redis URL
is given), then the protocol servers and workers as ``python -m
channels_lite`` children, each supervised by its own task (``_process``),
and serves until ``stop()``. Then every child gets SIGTERM at once (their
drains overlap), the broker stops once the last child is gone, and the
temporary folder goes with it. A second ``stop()`` kills what is left.

Children log to the supervisor's stderr. Each inherits the read end of a
pipe (``CHANNELS_LITE_SUPERVISOR_FD``) and stops by itself when it reads end
of file: the supervisor vanished without stopping it (``kill -9``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import click

from protocol_server.config import Config as ServerConfig
from worker.config import Config as WorkerConfig

from ..config import parse_bind
from ._process import Child, ChildFailed
from .broker import EmbeddedBroker, find_binary
from .config import RunConfig

logger = logging.getLogger(__name__)

SUPERVISOR_FD_ENV = "CHANNELS_LITE_SUPERVISOR_FD"
#: Per-process ids must differ between children: never inherit them.
_PER_PROCESS_ENV = ("CHANNELS_LITE_SERVER_ID", "CHANNELS_LITE_WORKER_ID")


class Supervisor:
    """One local deployment: broker, protocol servers and workers."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self._stop = anyio.Event()
        self._force = anyio.Event()
        self._failures: list[ChildFailed] = []

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the deployment until ``stop()``; return once everything is down.

        ``task_status.started`` receives the broker URL once the broker is up
        and the children are being started.

        Raises:
            BrokerError: no broker to embed, or it did not start.
            ChildFailed: a child failed on its first start (the others were
                stopped first).
        """
        host, port = parse_bind(self.config.bind)
        if port == 0:  # one free port that every protocol server shares
            self.config = dataclasses.replace(self.config, bind=_join(host, _free_port(host)))
        config = self.config
        alive_r, alive_w = os.pipe()  # see watch_supervisor
        try:
            await self._serve(config, alive_r, task_status)
        finally:
            os.close(alive_r)
            os.close(alive_w)
        if self._failures:
            raise self._failures[0]

    async def _serve(
        self, config: RunConfig, alive_fd: int, task_status: anyio.abc.TaskStatus[str]
    ) -> None:
        children_gone = anyio.Event()
        async with anyio.create_task_group() as tg:
            if config.redis_url:
                url, description = config.redis_url, _redact(config.redis_url)
            else:
                broker = EmbeddedBroker(*find_binary(config.embedded))
                # The broker outlives the children: it stops on children_gone.
                with anyio.CancelScope() as starting:
                    tg.start_soon(_cancel_on, self._stop, starting)
                    await tg.start(broker.serve, children_gone)
                if starting.cancel_called:
                    return  # stopped while the broker started
                url, description = broker.url, broker.description
            self.children = self._make_children(url, alive_fd)
            banner = f"channels-lite: http://{config.bind}  broker: {description}"
            if config.log_format == "json":
                logger.info("%s", banner)  # every line a JSON object for the shipper
            else:
                click.echo(banner, err=True)
            try:
                async with anyio.create_task_group() as children:
                    for child in self.children:
                        children.start_soon(self._supervise, child)
                    task_status.started(url)
            finally:
                children_gone.set()

    def stop(self) -> None:
        """Stop gracefully; called again, kill the children at once."""
        if self._stop.is_set():
            logger.warning("second stop request: killing the children")
            self._force.set()
        else:
            logger.info("stopping (Ctrl-C again to kill)")
            self._stop.set()

    async def _supervise(self, child: Child) -> None:
        try:
            await child.supervise(self._stop, self._force)
        except ChildFailed as exc:
            logger.error("%s; stopping the deployment", exc)
            self._failures.append(exc)
            self._stop.set()

    def _make_children(self, redis_url: str, alive_fd: int) -> list[Child]:
        config = self.config
        env = {k: v for k, v in os.environ.items() if k not in _PER_PROCESS_ENV}
        env[SUPERVISOR_FD_ENV] = str(alive_fd)
        server = _argv("protocol-server", config.child_params(ServerConfig, redis_url))
        worker_params = config.child_params(WorkerConfig, redis_url)
        worker_params["app_dir"] = os.path.abspath(worker_params["app_dir"])
        worker = _argv("worker", worker_params)
        level = ["--log-level", config.log_level, "--log-format", config.log_format]
        kinds = [
            ("protocol server", server, config.protocol_servers),
            ("worker", worker, config.workers),
        ]
        return [
            Child(
                f"{kind} {n}",
                argv + level,
                env,
                shutdown_timeout=config.shutdown_timeout,
                pass_fds=(alive_fd,),
            )
            for kind, argv, count in kinds
            for n in range(1, count + 1)
        ]


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _argv(command: str, params: dict[str, Any]) -> list[str]:
    """``python -m channels_lite COMMAND [APP] --field value ...``."""
    argv = [sys.executable, "-m", "channels_lite", command]
    if "app" in params:
        argv.append(params.pop("app"))
    for name, value in params.items():
        option = name.replace("_", "-")
        if isinstance(value, bool):
            # Boolean settings are --x/--no-x flags (channels_lite/_cli_options.py).
            argv.append(f"--{option}" if value else f"--no-{option}")
        else:
            argv += [f"--{option}", str(value)]
    return argv


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _free_port(host: str) -> int:
    """A port that was free on ``host`` a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def watch_supervisor(process: Any) -> None:
    """Stop ``process`` once the supervisor that started it is gone (``kill -9``).

    The supervisor keeps the write end of a pipe open and never writes: the
    read end, inherited as ``CHANNELS_LITE_SUPERVISOR_FD``, turns readable
    (end of file) only when the supervisor has exited, however it died.
    """
    fd = os.environ.pop(SUPERVISOR_FD_ENV, "")  # not for our own children
    try:
        os.fstat(int(fd))
    except (ValueError, OSError):
        return  # not started by a supervisor (or the fd was not passed on)
    # Cancellation point: nothing is held.
    await anyio.wait_readable(int(fd))
    logger.warning("the supervisor is gone: stopping")
    process.stop()


def _redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
