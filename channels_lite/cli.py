"""The ``channels-lite`` command line: a thin layer over each process's Config.

Every option is a Config field (``_cli_options``), so the CLI, the
``CHANNELS_LITE_*`` environment variables and docker-compose share one
surface. Bad values exit 2 with one line, as click does for usage errors.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import click

from protocol_server.config import Config as ServerConfig
from worker.config import Config as WorkerConfig

from . import __version__
from ._cli_options import config_options
from ._cli_publish import dead_letters_cmd, enqueue_cmd, publish_cmd
from ._cli_status import status_cmd
from .exceptions import ChannelsLiteError, ConfigError
from .logging import FORMATS, configure
from .supervisor import RunConfig, watch_supervisor

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="channels-lite")
def main() -> None:
    """A distributed ASGI runtime on Redis Streams."""


def _config(cls: type, params: dict[str, Any]) -> Any:
    try:
        return cls(**params)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _run(process: Any) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully; exit 0 on a clean stop."""

    async def run() -> None:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        process.stop()

            tg.start_soon(on_signals)
            tg.start_soon(watch_supervisor, process)
            await process.serve()
            tg.cancel_scope.cancel()

    try:
        anyio.run(run)
    except (ChannelsLiteError, BaseExceptionGroup) as exc:
        # Task groups wrap what they propagate: unwrap, so that a deliberate
        # error (bad app, failed start-up, Redis gone) is one line, not a
        # traceback. Anything else is a bug and keeps its traceback.
        errors = _leaves(exc)
        if not all(isinstance(error, ChannelsLiteError) for error in errors):
            raise
        for error in errors:
            click.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _log_options(fn: F) -> F:
    fn = click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        default="text",
        envvar="CHANNELS_LITE_LOG_FORMAT",
        show_default=True,
        show_envvar=True,
        help="text, or json: one object per line for log shippers.",
    )(fn)
    return click.option(
        "--log-level",
        default="info",
        envvar="CHANNELS_LITE_LOG_LEVEL",
        show_default=True,
        show_envvar=True,
        help="``debug``, ``info``, ``warning`` or ``error``.",
    )(fn)


@main.command("protocol-server")
@config_options(ServerConfig)
@_log_options
def protocol_server_cmd(log_level: str, log_format: str, **params: Any) -> None:
    """Terminate HTTP and WebSocket and relay connections to the workers."""
    from protocol_server.server import Server

    config = _config(ServerConfig, params)
    configure(log_level, log_format)
    _run(Server(config))


@main.command("worker")
@click.argument("app", envvar="CHANNELS_LITE_APP")
@config_options(WorkerConfig, skip=("app",))
@_log_options
def worker_cmd(log_level: str, log_format: str, **params: Any) -> None:
    """Run the ASGI APP (module:attribute) for connections taken from Redis."""
    from worker.worker import Worker

    config = _config(WorkerConfig, params)
    # The app's own clients (Django's CHANNEL_LAYERS, a Publisher) look for
    # the broker where every channels-lite process does. Set it to the one
    # this worker uses, however it was given (an option, `run`'s embedded
    # broker): otherwise such an app would silently use another Redis and
    # share no group with the rest of the deployment.
    os.environ["CHANNELS_LITE_REDIS_URL"] = config.redis_url
    os.environ["CHANNELS_LITE_PREFIX"] = config.prefix
    # The same for the keyring: a layer the app makes itself must seal what
    # it writes, or every other process refuses it.
    os.environ["CHANNELS_LITE_KEYS"] = config.keys
    os.environ["CHANNELS_LITE_SEAL"] = config.seal
    configure(log_level, log_format)
    _run(Worker(config))


@main.command("run")
@click.argument("app", envvar="CHANNELS_LITE_APP")
@config_options(RunConfig, skip=("app",))
def run_cmd(**params: Any) -> None:
    """Run APP as a whole local deployment: broker, protocol servers, workers.

    Each runs as its own process; one that crashes is restarted. With no
    Redis URL an embedded broker is started. Ctrl-C stops everything.
    """
    from .supervisor import Supervisor

    config = _config(RunConfig, params)
    configure(config.log_level, config.log_format)
    _run(Supervisor(config))


main.add_command(publish_cmd)
main.add_command(enqueue_cmd)
main.add_command(dead_letters_cmd)
main.add_command(status_cmd)
