"""A publisher written from docs/wire-protocol.md alone: redis and msgpack, nothing else.

This module must not import ``channels_lite`` (``tests/test_raw_publisher.py``
checks that in a fresh interpreter): it is the proof that the document is
enough to publish a group message and enqueue a task from outside, the way a
non-Python publisher would. Every step cites the section it follows.
"""

from __future__ import annotations

from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

# "Encoding": ext type 1 for integers outside the 64-bit range.
_BIGINT_EXT = 1

# "Publishing a channel message from outside": refuse at capacity, add, set the TTL,
# atomically. KEYS[1]: stream. ARGV: capacity, ttl_ms, to, d.
_APPEND = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'v', '1', 'k', 'msg', 'to', ARGV[3], 'd', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def _default(obj: object) -> Any:
    if isinstance(obj, int) and not isinstance(obj, bool):
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(_BIGINT_EXT, obj.to_bytes(length, "big", signed=True))
    raise TypeError(f"no wire form for {type(obj).__name__}")


def pack(value: Any) -> bytes:
    """msgpack with ``str`` as str, ``bytes`` as bin, floats as float64 ("Encoding")."""
    data: bytes = msgpack.packb(value, use_bin_type=True, default=_default, datetime=True)
    return data


def non_local(channel: str) -> str:
    """The channel up to and including its ``!``, else the whole name ("Keys")."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


async def group_send(
    client: aioredis.Redis,
    group: str,
    message: dict[str, Any],
    *,
    prefix: str = "asgi",
    group_expiry: float = 86400,
    expiry: float = 60,
    capacity: int = 100,
) -> int:
    """Deliver ``message`` to every member of ``group``; returns the members reached."""
    # Members added within group_expiry, by the Redis clock.
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    members = await client.zrangebyscore(
        f"{prefix}:grp:{group}", now_ms - int(group_expiry * 1000), "+inf"
    )
    by_stream: dict[str, list[str]] = {}
    for raw in members:
        member = raw.decode()
        by_stream.setdefault(f"{prefix}:ch:{non_local(member)}", []).append(member)
    body = pack(message)  # encoded once, shared by every entry
    ttl_ms = int(expiry * 1000) + 10_000
    reached = 0
    for stream, to in by_stream.items():
        added = await client.eval(_APPEND, 1, stream, capacity, ttl_ms, pack(to), body)
        reached += len(to) if added else 0
    return reached


async def enqueue(
    client: aioredis.Redis,
    task_channel: str,
    message: dict[str, Any],
    *,
    prefix: str = "asgi",
    maxlen: int = 100_000,
) -> bytes:
    """Enqueue ``message`` on ``task_channel`` ("Enqueueing a task from outside")."""
    stream = f"{prefix}:task:{task_channel}"
    try:
        await client.xgroup_create(stream, "tasks", id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    fields = {
        b"v": b"1",
        b"k": b"task",
        b"d": pack({"channel": task_channel, "message": message}),
    }
    entry_id: bytes = await client.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    return entry_id
