"""``channels-lite publish``, ``enqueue`` and ``dead-letters``: the CLI of the outside world.

Thin over :class:`~channels_lite.client.AsyncPublisher` and
:class:`~channels_lite.layer.dead_letters.DeadLetters`; options are
``PublisherConfig`` fields. Exit codes: 0 done, 1 a runtime failure (Redis
unreachable, channel full, nothing to replay), 2 a usage error (bad JSON, bad
name, bad setting). Every failure is one ``error:`` line on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import anyio
import click

from ._cli_options import config_options
from .client import AsyncPublisher
from .config import PublisherConfig
from .exceptions import (
    ChannelsLiteError,
    ConfigError,
    InvalidChannelName,
    InvalidMessage,
    WireError,
)
from .layer.dead_letters import DeadLetterEntry, DeadLetters, ReplayResult, is_entry_id

T = TypeVar("T")

_MESSAGE_HELP = """
MESSAGE_JSON is a JSON object with a string "type": inline, @FILE to read a
file, or - to read stdin. JSON has no bytes type: strings arrive as text (base64
is not decoded); publish from Python to send bytes.
"""
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip
_LAYER_ONLY = ("capacity", "expiry", "group_expiry", "channel_capacity")
_ADMIN_SKIP = ("capacity", "group_expiry", "channel_capacity", "max_message_size")


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _make_config(params: dict[str, Any]) -> PublisherConfig:
    try:
        return PublisherConfig(**params)
    except ConfigError as exc:
        _fail(2, str(exc))


def _load_message(source: str) -> dict[str, Any]:
    where = "MESSAGE_JSON"
    try:
        if source == "-":
            where, data = "stdin", sys.stdin.buffer.read()
        elif source.startswith("@"):
            where = source[1:]
            with open(where, "rb") as file:
                data = file.read()
        else:
            data = source.encode()
        value = json.loads(data)
    except OSError as exc:
        _fail(2, f"cannot read {where}: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        _fail(2, f"{where} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        _fail(2, f"{where} must be a JSON object, not {_JSON_TYPES.get(type(value), 'that')}")
    if not isinstance(value.get("type"), str):
        _fail(2, f'{where} must have a string "type"')
    return value


def _run(config: PublisherConfig, work: Callable[[AsyncPublisher], Awaitable[T]]) -> T:
    async def main() -> T:
        with anyio.fail_after(config.timeout):
            async with AsyncPublisher(config) as publisher:
                return await work(publisher)

    try:
        return anyio.run(main)
    except TimeoutError:
        _fail(1, f"no answer from Redis at {config.redis_url} within {config.timeout} s")
    except (ConfigError, InvalidChannelName, InvalidMessage, WireError) as exc:
        _fail(2, str(exc))
    except ChannelsLiteError as exc:  # Redis unreachable, refused, channel full
        _fail(1, str(exc))


@click.command("publish", epilog=_MESSAGE_HELP)
@click.argument("message_json")
@click.option("--group", help="Send to every member of this group.")
@click.option("--channel", help="Send to this channel.")
@config_options(PublisherConfig, skip=("channel_capacity", "task_maxlen"))
def publish_cmd(message_json: str, group: str | None, channel: str | None, **params: Any) -> None:
    """Send MESSAGE_JSON to a --group or a --channel, as the channel layer would."""
    if (group is None) == (channel is None):
        _fail(2, "give exactly one of --group and --channel")
    config = _make_config(params)
    message = _load_message(message_json)
    if group is not None:
        _run(config, lambda p: p.group_send(group, message))
    elif channel is not None:
        _run(config, lambda p: p.send(channel, message))


@click.command("enqueue", epilog=_MESSAGE_HELP)
@click.argument("task_channel")
@click.argument("message_json")
@config_options(PublisherConfig, skip=_LAYER_ONLY)
def enqueue_cmd(task_channel: str, message_json: str, **params: Any) -> None:
    """Enqueue MESSAGE_JSON as a background task on TASK_CHANNEL; prints its entry id."""
    config = _make_config(params)
    message = _load_message(message_json)
    click.echo(_run(config, lambda p: p.enqueue(task_channel, message)))


@click.group("dead-letters")
def dead_letters_cmd() -> None:
    """List and replay entries that could not be processed."""


@dead_letters_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@config_options(PublisherConfig, skip=(*_ADMIN_SKIP, "expiry", "task_maxlen"))
def list_cmd(as_json: bool, limit: int, **params: Any) -> None:
    """Show the oldest dead letters: id, age, stream, entry, message type, error."""
    config = _make_config(params)

    async def read(publisher: AsyncPublisher) -> tuple[list[DeadLetterEntry], int]:
        dead = DeadLetters(publisher.layer)
        return await dead.read(limit), await dead.count()

    entries, total = _run(config, read)
    rows = [_row(entry) for entry in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    click.echo(f"{len(rows)} of {total} dead letter(s) shown", err=True)


@dead_letters_cmd.command("replay")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@config_options(PublisherConfig, skip=_ADMIN_SKIP)
def replay_cmd(ids: tuple[str, ...], replay_all: bool, **params: Any) -> None:
    """Put dead letters back on the stream they came from, then delete them.

    Each is re-added byte for byte as a new entry. --timeout bounds the whole
    command; a replay cut short can simply be run again.
    """
    if bool(ids) == replay_all:
        _fail(2, "give dead-letter IDs or --all, not both or neither")
    bad = [i for i in ids if not is_entry_id(i)]
    if bad:
        _fail(2, f"{bad[0]!r} is not an entry id (like 1700000000000-0)")
    config = _make_config(params)
    result = ReplayResult()
    wanted = None if replay_all else list(dict.fromkeys(ids))
    try:
        _run(
            config, lambda p: DeadLetters(p.layer, maxlen=config.task_maxlen).replay(wanted, result)
        )
    finally:
        click.echo(f"replayed {len(result.replayed)} dead letter(s)")
        for entry_id in result.missing:
            click.echo(f"not found: {entry_id}", err=True)
        for entry_id, reason in result.failed:
            click.echo(f"not replayed: {entry_id}: {reason}", err=True)
    if result.missing or result.failed:
        raise SystemExit(1)


def _row(entry: DeadLetterEntry) -> dict[str, Any]:
    letter = entry.letter
    if letter is None:
        return {"id": entry.id, "age": round(entry.age, 3), "stream": None, "entry_id": None,
                "type": None, "error": entry.problem, "size": None}  # fmt: skip
    return {
        "id": entry.id,
        "age": round(entry.age, 3),
        "stream": letter.stream,
        "entry_id": letter.entry_id,
        "type": entry.type,
        "error": letter.error,
        "size": sum(len(k) + len(v) for k, v in letter.fields.items()),
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    header = ("ID", "AGE", "STREAM", "ENTRY", "TYPE", "ERROR")
    lines = [
        (r["id"], _age(r["age"]), r["stream"] or "-", r["entry_id"] or "-", r["type"] or "-",
         " ".join(str(r["error"]).split())[:200])
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(5)]
    for line in [header, *lines]:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        click.echo("  ".join([*cells, line[5]]))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
