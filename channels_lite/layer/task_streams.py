"""The Redis side of background tasks: task streams, retries, dead letters.

Rules / theory of operation
===========================

* Each task channel is one stream (``keys.task_stream``) read by the consumer
  group ``keys.TASKS_GROUP``. An entry stays in the group's pending list from
  the moment a worker reads it until it is acked, and it is acked only once
  its fate is sealed: done, scheduled for a retry, or dead-lettered. A worker
  that dies leaves its entries pending; another one ``reclaim``-s them once
  they have been idle for ``reclaim_idle`` (at least once).
* A running task must not look abandoned because it is slow: its worker
  ``touch``-es what it holds (``XCLAIM ... JUSTID`` resets the idle time and
  leaves the delivery count alone), so idleness means "its worker stopped
  beating", not "it runs long".
* Every change of an entry's fate is atomic with its ack: a retry is
  ``ZADD`` to the delayed set plus ``XACK`` + ``XDEL`` in one script; a dead
  letter is ``XADD`` to the dead-letter stream plus ``XACK`` + ``XDEL`` in one
  ``MULTI``. A worker that dies in between leaves either the old state (the
  entry pending, to be reclaimed) or the new one, never neither.
* Retries wait in one sorted set (``keys.task_delayed``), scored by due time
  in Redis's clock, so a retry survives the death of the worker that
  scheduled it. Every worker ``promote``-s due members into their streams
  with one script (``ZRANGEBYSCORE`` + ``XADD`` + ``ZREM``): each member moves
  exactly once, whichever worker gets there first. A member is the original
  stream and entry id plus the new entry's fields, so two retries are never
  merged and a retry scheduled twice (two workers raced on one entry) is
  stored once.
* Task streams are not trimmed here: trimming a queue drops work. Acked
  entries are deleted, so a stream holds only what waits or runs. The dead
  letter stream is bounded (``XADD MAXLEN ~``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
from redis.exceptions import RedisError, ResponseError

from .. import keys
from .queue import WorkQueue
from .redis import RedisStreamsChannelLayer, _bounded_read, _broker_error, _Script

__all__ = ["DEAD_LETTERS_MAXLEN", "TaskEntry", "TaskStreams"]

logger = logging.getLogger(__name__)

#: Approximate bound on the dead-letter stream; the oldest are trimmed beyond it.
DEAD_LETTERS_MAXLEN: Final = 10_000
#: Due retries one ``promote`` call moves at most.
_PROMOTE_BATCH: Final = 100

# KEYS[1]: the task stream, KEYS[2]: the delayed set.
# ARGV: group, entry id, delay (ms), member.
# Schedule a retry and ack the entry it replaces, atomically.
_RETRY = _Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
""")

# KEYS[1]: the delayed set. ARGV: batch size, task stream key prefix.
# Move due retries into their streams. A member is msgpack (raw strings, what
# Lua's cmsgpack reads): [stream, original id, field, value, field, value...].
# Nothing in the set is trusted: a member that is not such an array, names a
# key outside the task streams, or that XADD refuses is removed and counted,
# so one bad member cannot stall every retry behind it.
# Returns {moved, ms until the next one is due or -1, removed as malformed}.
_PROMOTE = _Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved, bad = 0, 0
for _, member in ipairs(due) do
  local ok, item = pcall(cmsgpack.unpack, member)
  local done = false
  if ok and type(item) == 'table' and type(item[1]) == 'string' and #item >= 4
      and #item % 2 == 0 and string.sub(item[1], 1, #ARGV[2]) == ARGV[2] then
    local args = {'XADD', item[1], '*'}
    for i = 3, #item do args[#args + 1] = item[i] end
    done = pcall(redis.call, unpack(args))
  end
  if done then moved = moved + 1 else bad = bad + 1 end
  redis.call('ZREM', KEYS[1], member)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if #head > 0 then wait = math.max(0, tonumber(head[2]) - now) end
return {moved, wait, bad}
""")

# KEYS[1]: a task stream. ARGV: group, consumer, entry ids...
# Reset the idle time of the entries this consumer still holds (JUSTID: the
# delivery count stays). An entry another consumer has reclaimed is left alone.
_TOUCH = _Script("""
local kept = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
""")


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One entry taken from a task stream.

    ``deliveries`` is how many times the group has handed it out (1 for a
    fresh read; more after reclaims: the earlier holders died or stopped).
    """

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1


class TaskStreams:
    """The task streams of some channels, their consumer group, retries and dead letters.

    Args:
        layer: the Redis layer whose connections (per event loop) to use.
        channels: the task channels to read.
        dead_maxlen: approximate bound on the dead-letter stream.
    """

    def __init__(
        self,
        layer: RedisStreamsChannelLayer,
        channels: Iterable[str],
        *,
        dead_maxlen: int = DEAD_LETTERS_MAXLEN,
    ) -> None:
        self.layer = layer
        self.group = keys.TASKS_GROUP
        self.channels = {keys.task_stream(layer.prefix, c): c for c in channels}
        self.queues = {s: WorkQueue(layer, s, self.group) for s in self.channels}
        self.dead = keys.dead_letters(layer.prefix)
        self.delayed = keys.task_delayed(layer.prefix)
        self._task_prefix = keys.task_stream(layer.prefix, "")
        #: Members of the delayed set removed as malformed (not retries we wrote).
        self.malformed_retries = 0
        self.dead_maxlen = dead_maxlen

    def _client(self) -> Any:
        # The worker talks to one Redis; every key lives there.
        return self.layer._client_for(self.delayed)

    async def ensure_groups(self) -> None:
        """Create every stream and its group if missing (idempotent)."""
        for queue in self.queues.values():
            await queue.ensure_group()

    async def take(self, consumer: str, count: int, block_ms: int) -> list[TaskEntry]:
        """New entries for ``consumer``: up to ``count`` *per stream*, waiting at most ``block_ms``.

        Cancellation: entries Redis delivered but this call did not return
        stay pending and are reclaimed after the idle time; none is lost.
        """
        if not self.channels:
            return []
        try:
            with _bounded_read(block_ms / 1000):
                # Its own pool (every key lives on the worker's one Redis).
                client: Any = self.layer._blocking_for(self.delayed)
                reply = await client.xreadgroup(
                    self.group,
                    consumer,
                    dict.fromkeys(self.channels, ">"),
                    count=count,
                    block=block_ms,
                )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise _broker_error(exc) from exc
            await self.ensure_groups()  # a stream was deleted or flushed
            return []
        except RedisError as exc:
            raise _broker_error(exc) from exc
        out: list[TaskEntry] = []
        for stream, items in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            out.extend(TaskEntry(name, eid, fields) for eid, fields in items if fields is not None)
        return out

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[TaskEntry]:
        """Take over up to ``count`` entries idle for ``min_idle_ms``, with delivery counts."""
        claimed: list[TaskEntry] = []
        for stream, queue in self.queues.items():
            if len(claimed) >= count:
                break
            entries = await queue.reclaim(consumer, min_idle_ms, count - len(claimed))
            claimed.extend(TaskEntry(stream, eid, fields) for eid, fields in entries)
        if not claimed:
            return []
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for entry in claimed:
                    pipe.xpending_range(entry.stream, self.group, entry.entry_id, entry.entry_id, 1)
                replies = await pipe.execute()
        except RedisError as exc:
            raise _broker_error(exc) from exc
        return [
            TaskEntry(e.stream, e.entry_id, e.fields, int(r[0]["times_delivered"]) if r else 1)
            for e, r in zip(claimed, replies, strict=True)
        ]

    async def ack(self, entry: TaskEntry) -> None:
        """The entry is done: acknowledge and delete it. One round trip."""
        await self.queues[entry.stream].ack([entry.entry_id])

    async def retry(self, entry: TaskEntry, fields: dict[bytes, bytes], delay: float) -> None:
        """Replace ``entry`` with a new one of ``fields``, due in ``delay`` seconds.

        Atomic: the retry is stored and the entry acked together. One round trip.
        """
        fields = self.layer.seal(entry.stream, fields)  # the stream promote() adds it to
        member = msgpack.packb(
            [entry.stream, entry.entry_id, *(x for kv in fields.items() for x in kv)],
            use_bin_type=False,  # raw strings: Lua's cmsgpack has no bin type
        )
        try:
            await _RETRY(
                self._client(),
                [entry.stream, self.delayed],
                [self.group, entry.entry_id, max(0, int(delay * 1000)), member],
            )
        except RedisError as exc:
            raise _broker_error(exc) from exc

    async def dead_letter(self, entry: TaskEntry, fields: dict[bytes, bytes]) -> None:
        """Move ``entry`` aside: append ``fields`` (a dead letter) and ack it, atomically."""
        fields = self.layer.seal(self.dead, fields)
        try:
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.xadd(self.dead, fields, maxlen=self.dead_maxlen, approximate=True)
                pipe.xack(entry.stream, self.group, entry.entry_id)
                pipe.xdel(entry.stream, entry.entry_id)
                await pipe.execute()
        except RedisError as exc:
            raise _broker_error(exc) from exc

    async def promote(self) -> tuple[int, float | None]:
        """Move due retries into their streams.

        Returns how many moved and the seconds until the next one is due
        (``None``: none waits). One round trip.
        """
        try:
            moved, wait_ms, bad = await _PROMOTE(
                self._client(), [self.delayed], [_PROMOTE_BATCH, self._task_prefix]
            )
        except RedisError as exc:
            raise _broker_error(exc) from exc
        if bad:
            self.malformed_retries += int(bad)
            logger.warning("removed %d malformed member(s) of %s", int(bad), self.delayed)
        return int(moved), None if int(wait_ms) < 0 else int(wait_ms) / 1000

    async def touch(self, consumer: str, held: Sequence[TaskEntry]) -> None:
        """Reset the idle time of the entries ``consumer`` holds: they are not abandoned."""
        by_stream: dict[str, list[bytes]] = {}
        for entry in held:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        try:
            for stream, ids in by_stream.items():
                await _TOUCH(self._client(), [stream], [self.group, consumer, *ids])
        except RedisError as exc:
            raise _broker_error(exc) from exc
