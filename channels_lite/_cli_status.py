"""``channels-lite status``: live processes, stream backlogs, dead letters, drops.

Thin over :func:`channels_lite.layer.inspect.snapshot` (a few round trips per
Redis host). Exit codes: 0 done (or Ctrl-C under ``--watch``), 1 Redis
unreachable, 2 a usage error; every failure is one ``error:`` line on stderr.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import anyio
import click

from ._cli_options import config_options
from ._cli_publish import _ADMIN_SKIP, _age, _fail, _make_config
from .config import PublisherConfig
from .exceptions import ChannelsLiteError
from .layer import RedisStreamsChannelLayer
from .layer.inspect import snapshot

_JSON_HELP = """
\b
--json prints one JSON object (one per line under --watch):
  prefix         the key prefix inspected
  time           when, in seconds since the epoch (this machine's clock)
  processes      live processes from their heartbeats, sorted by role, id:
                 role ("ps" protocol server, "wk" worker), id, pid, host,
                 started, seen (epoch seconds), age (seconds since started);
                 ps: connections; wk: active, concurrency, tasks {counters};
                 both: layer {dropped, expired, full, malformed}
  streams        [{name, group, length, pending}]: the connect stream, then
                 each task stream
  dead_letters   entries in the dead-letter stream
  delayed_tasks  task retries waiting for their backoff
  drops          the layer counters summed over the live processes
"""


@click.command("status", epilog=_JSON_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C.",
)
@config_options(PublisherConfig, skip=(*_ADMIN_SKIP, "expiry", "task_maxlen"))
def status_cmd(as_json: bool, watch: float | None, **params: Any) -> None:
    """Show live protocol servers and workers, stream backlogs and dead letters."""
    config = _make_config(params)
    show = _print_json if as_json else _print_tables

    async def main() -> None:
        layer = RedisStreamsChannelLayer(
            hosts=[config.redis_url], prefix=config.prefix, keys=config.keys, seal=config.seal
        )
        try:
            while True:
                try:
                    with anyio.fail_after(config.timeout):
                        status = await snapshot(layer)
                except (TimeoutError, ChannelsLiteError) as exc:
                    if watch is None:
                        raise
                    click.echo(f"error: {_reason(exc, config)}", err=True)
                else:
                    show(status, compact=watch is not None)
                if watch is None:
                    return
                await anyio.sleep(watch)  # cancellation point: Ctrl-C ends the watch
        finally:
            with anyio.CancelScope(shield=True):
                await layer.close()

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        return
    except (TimeoutError, ChannelsLiteError) as exc:
        _fail(1, _reason(exc, config))


def _reason(exc: BaseException, config: PublisherConfig) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer from Redis at {config.redis_url} within {config.timeout} s"
    return " ".join(str(exc).split())


def _print_json(status: dict[str, Any], *, compact: bool) -> None:
    click.echo(json.dumps(status, sort_keys=True, indent=None if compact else 2))


def _print_tables(status: dict[str, Any], *, compact: bool) -> None:
    if compact and sys.stdout.isatty():
        click.echo("\x1b[H\x1b[2J", nl=False)  # clear the screen between refreshes
    when = datetime.datetime.fromtimestamp(status["time"]).strftime("%H:%M:%S")
    processes = status["processes"]
    click.echo(f"{len(processes)} process(es) at {when}, prefix {status['prefix']}")
    _table(
        ("ROLE", "ID", "HOST", "PID", "AGE", "CONN/ACTIVE", "CONCURRENCY", "TASKS"),
        [_process_row(p) for p in processes],
    )
    click.echo("")
    _table(
        ("STREAM", "GROUP", "LENGTH", "PENDING"),
        [(s["name"], s["group"], str(s["length"]), str(s["pending"])) for s in status["streams"]],
    )
    drops = " ".join(f"{k}={v}" for k, v in status["drops"].items())
    click.echo(
        f"\ndead letters {status['dead_letters']}  delayed tasks {status['delayed_tasks']}"
        f"  drops: {drops}"
    )
    if compact:
        click.echo("")


def _process_row(p: dict[str, Any]) -> tuple[str, ...]:
    load = p.get("connections", p.get("active"))
    tasks = p.get("tasks")
    counters = "-"
    if isinstance(tasks, dict):
        counters = " ".join(f"{k}={v}" for k, v in tasks.items() if k != "concurrency") or "-"
    age = p.get("age")
    return (
        str(p.get("role", "?")),
        str(p.get("id", "?")),
        str(p.get("host", "?")),
        str(p.get("pid", "?")),
        _age(age) if isinstance(age, int | float) else "?",
        "-" if load is None else str(load),
        str(p.get("concurrency", "-")),
        counters,
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
