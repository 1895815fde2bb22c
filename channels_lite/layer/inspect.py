"""A point-in-time picture of a deployment, for ``channels-lite status``.

Read-only and cheap: per Redis host, ``SCAN MATCH`` for the heartbeat keys
and the task streams, one ``MGET`` of the heartbeats, and one pipeline of
``XLEN`` + ``XPENDING`` (summary form) per work stream plus the dead-letter
length and the delayed-retry count. A stream whose consumer group does not
exist yet reports ``pending`` 0; an unreadable heartbeat is skipped (it is
rewritten every second by a live process anyway).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from .. import keys
from .redis import RedisStreamsChannelLayer, _broker_error

__all__ = ["DROP_COUNTERS", "StreamStatus", "snapshot"]

#: The layer counters of undelivered messages a heartbeat may carry (under ``layer``).
DROP_COUNTERS = ("dropped", "expired", "full", "malformed")
_SCAN_COUNT = 500


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One work stream: its key, the consumer group read on it, and its backlog."""

    name: str
    group: str
    length: int
    pending: int


async def snapshot(layer: RedisStreamsChannelLayer) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-ready dict (see the CLI's help).

    Raises:
        BrokerError: Redis is unreachable or refused a command.

    Cancellation: read-only, so safe to cancel anywhere.
    """
    prefix = layer.prefix
    try:
        processes = await _processes(layer)
        streams, dead, delayed = await _streams(layer)
    except (RedisError, OSError) as exc:
        raise _broker_error(exc) from exc
    now = time.time()
    for process in processes:
        started = process.get("started")
        process["age"] = round(now - started, 3) if isinstance(started, int | float) else None
    drops = {name: 0 for name in DROP_COUNTERS}
    for process in processes:
        counters = process.get("layer")
        if isinstance(counters, dict):
            for name in DROP_COUNTERS:
                value = counters.get(name)
                drops[name] += value if isinstance(value, int) else 0
    return {
        "prefix": prefix,
        "time": now,
        "processes": processes,
        "streams": [
            {"name": s.name, "group": s.group, "length": s.length, "pending": s.pending}
            for s in streams
        ],
        "dead_letters": dead,
        "delayed_tasks": delayed,
        "drops": drops,
    }


async def _scan(client: Any, match: str, kind: str | None = None) -> list[str]:
    found: list[str] = []
    async for key in client.scan_iter(match=match, count=_SCAN_COUNT, _type=kind):
        found.append(key.decode() if isinstance(key, bytes) else str(key))
    return sorted(set(found))


async def _processes(layer: RedisStreamsChannelLayer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for client in layer._clients().clients:
        names = await _scan(client, keys.heartbeat(layer.prefix, "*", "*"))
        if not names:
            continue
        for raw in await client.mget(names):
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                info = json.loads(raw)
            except ValueError:
                continue
            if isinstance(info, dict):
                out.append(info)
    out.sort(key=lambda p: (str(p.get("role", "")), str(p.get("id", ""))))
    return out


async def _streams(layer: RedisStreamsChannelLayer) -> tuple[list[StreamStatus], int, int]:
    prefix = layer.prefix
    wanted = [(keys.connect_stream(prefix), keys.WORKERS_GROUP)]
    for client in layer._clients().clients:
        for name in await _scan(client, keys.task_stream(prefix, "*"), "stream"):
            wanted.append((name, keys.TASKS_GROUP))
    dead_key, delayed_key = keys.dead_letters(prefix), keys.task_delayed(prefix)
    # One pipeline per host: [XLEN, XPENDING] per stream, then XLEN dead, ZCARD delayed.
    plans: dict[int, tuple[Any, list[tuple[str, Any]]]] = {}
    for name, group in wanted:
        client = layer._client_for(name)
        plans.setdefault(id(client), (client, []))[1].append((name, group))
    for key in (dead_key, delayed_key):
        client = layer._client_for(key)
        plans.setdefault(id(client), (client, []))[1].append((key, None))
    results: dict[str, tuple[int, int]] = {}
    for client, items in plans.values():
        async with client.pipeline(transaction=False) as pipe:
            for name, group in items:
                if name == delayed_key:
                    pipe.zcard(name)
                else:
                    pipe.xlen(name)
                if group is not None:
                    pipe.xpending(name, group)
            replies = iter(await pipe.execute(raise_on_error=False))
        for name, group in items:
            length = _count(next(replies))
            results[name] = (length, _pending(next(replies)) if group is not None else 0)
    streams = [StreamStatus(name, group, *results[name]) for name, group in wanted]
    return streams, results[dead_key][0], results[delayed_key][0]


def _count(reply: Any) -> int:
    if isinstance(reply, ResponseError):
        return 0  # not a stream/zset (WRONGTYPE): nothing of ours there
    if isinstance(reply, BaseException):
        raise reply
    return int(reply)


def _pending(reply: Any) -> int:
    if isinstance(reply, ResponseError):
        return 0  # NOGROUP: no worker has created the group yet
    if isinstance(reply, BaseException):
        raise reply
    return int(reply["pending"])
