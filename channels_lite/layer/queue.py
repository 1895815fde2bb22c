"""A work queue on one Redis stream read by a consumer group.

Used for the shared stream of new connections: protocol servers ``offer``
entries, workers ``take`` at most as many as they have free slots (pull-based
load balancing: a busy worker takes nothing) and ``ack`` an entry the moment
they start it. An entry taken by a worker that died before starting it stays
in the group's pending list and is ``reclaim``-ed by another worker once it
has been idle long enough; an entry that was started is acked, so it is never
run twice.

The stream is bounded (``XADD MAXLEN ~``) and acked entries are deleted, so
it holds only what waits. Offers made while another is on its way to Redis
are coalesced: they leave together, in one script call, when the event loop
next comes round (a protocol server under load offers many connections per
loop turn, and a round trip each was its largest cost).

Entries carry no deadline field: the stream id is the offer time in Redis's
clock, and the taker compares it with the age the offerer allows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError, ResponseError

from .redis import RedisStreamsChannelLayer, _bounded_read, _broker_error, _Script

__all__ = ["WorkQueue"]

logger = logging.getLogger(__name__)

# KEYS[1]: stream. ARGV: group, entry id.
# Withdraw an entry no consumer has taken: 1 if it was withdrawn, 0 if a
# consumer holds it (pending) or has already acked and deleted it.
_CANCEL = """
if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then return 0 end
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if ok and #pending > 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]: stream. ARGV: group, consumer, count.
# Ack the consumer's pending entries whose data is gone (deleted or trimmed).
_ACK_DELETED = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])
local acked = 0
for _, entry in ipairs(pending) do
  if #redis.call('XRANGE', KEYS[1], entry[1], entry[1]) == 0 then
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], entry[1])
  end
end
return acked
"""

# KEYS[1]: stream. ARGV: maxlen, then per entry: n_fields, (name, value) * n.
# Appends every entry (trimming approximately to maxlen); returns their ids.
_OFFER = _Script(
    """
local maxlen = ARGV[1]
local pos = 2
local ids = {}
while pos <= #ARGV do
  local n = tonumber(ARGV[pos])
  local args = {'XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*'}
  for i = 1, 2 * n do args[6 + i] = ARGV[pos + i] end
  ids[#ids + 1] = redis.call(unpack(args))
  pos = pos + 1 + 2 * n
end
return ids
"""
)

# KEYS[1]: stream. ARGV: group, consumer, lowest id, highest id, entry ids...
# Ack and delete the entries the consumer still holds; return their ids. An
# entry another consumer reclaimed meanwhile (this one stalled past the idle
# time) is that consumer's now: left alone, so it is run once, not twice.
# One XPENDING over the ids' range, filtered by consumer, says which are
# still ours (a call per id was most of Redis's time per request); the acks
# and deletes go in slices, as Lua's unpack has a bounded stack.
_ACK_HELD = _Script("""
local ours = {}
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], 1000000, ARGV[2])
for _, entry in ipairs(pending) do ours[entry[1]] = true end
local held = {}
for i = 5, #ARGV do
  if ours[ARGV[i]] then held[#held + 1] = ARGV[i] end
end
for i = 1, #held, 1000 do
  local slice = {unpack(held, i, math.min(i + 999, #held))}
  redis.call('XACK', KEYS[1], ARGV[1], unpack(slice))
  redis.call('XDEL', KEYS[1], unpack(slice))
end
return held
""")

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(slots=True)
class _Offers:
    """Offers of one event loop: in flight, and those waiting to leave together."""

    busy: int = 0  # script calls on their way to Redis
    fields: list[dict[bytes, bytes]] = field(default_factory=list)
    futures: list[asyncio.Future[bytes]] = field(default_factory=list)


class WorkQueue:
    """One stream plus one consumer group, on the layer's first Redis host.

    Args:
        layer: the Redis layer whose connections (per event loop) to use.
        stream: the stream key.
        group: the consumer group name.
        maxlen: approximate bound on the stream length; the oldest entries
            are trimmed beyond it.
    """

    def __init__(
        self,
        layer: RedisStreamsChannelLayer,
        stream: str,
        group: str,
        *,
        maxlen: int = 100_000,
    ) -> None:
        self.layer = layer
        self.stream = stream
        self.group = group
        self.maxlen = maxlen
        self._offers: dict[asyncio.AbstractEventLoop, _Offers] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _client(self) -> Any:
        return self.layer._client_for(self.stream)

    async def ensure_group(self) -> None:
        """Create the stream and group if missing (idempotent). One round trip."""
        try:
            await self._client().xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise _broker_error(exc) from exc
        except RedisError as exc:
            raise _broker_error(exc) from exc

    async def offer(self, fields: dict[bytes, bytes]) -> bytes:
        """Append an entry (sealed with the layer's keyring, if any); returns its
        id. One round trip, shared by the offers made while it is under way.

        Raises:
            BrokerUnavailable, BrokerError: Redis failed.

        Cancellation: the entry may or may not have been appended.
        """
        fields = self.layer.seal(self.stream, fields)
        loop = asyncio.get_running_loop()
        offers = self._offers.get(loop)
        if offers is None:
            for old in [lp for lp in self._offers if lp.is_closed()]:
                del self._offers[old]
            offers = self._offers[loop] = _Offers()
        if not offers.busy:
            # Nothing on its way: go now, the lowest latency when idle.
            ids = await self._send(offers, [fields])
            return ids[0]
        future: asyncio.Future[bytes] = loop.create_future()
        if not offers.fields:
            loop.call_soon(self._start_batch, offers)
        offers.fields.append(fields)
        offers.futures.append(future)
        # Cancellation point: the batch is sent by its own task whatever we do.
        return await future

    def _start_batch(self, offers: _Offers) -> None:
        batch, futures = offers.fields, offers.futures
        offers.fields, offers.futures = [], []

        async def send() -> None:
            try:
                ids = await self._send(offers, batch)
            except Exception as exc:
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                return
            for future, entry_id in zip(futures, ids, strict=True):
                if not future.done():  # else the offerer was cancelled
                    future.set_result(entry_id)

        task = asyncio.ensure_future(send())
        # Keep a reference until done (the loop holds tasks weakly).
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, offers: _Offers, batch: list[dict[bytes, bytes]]) -> list[bytes]:
        args: list[Any] = [self.maxlen]
        for fields in batch:
            args.append(len(fields))
            for name, value in fields.items():
                args.append(name)
                args.append(value)
        offers.busy += 1
        try:
            ids: list[bytes] = await _OFFER(self.layer._quick_for(self.stream), [self.stream], args)
        except RedisError as exc:
            raise _broker_error(exc) from exc
        finally:
            offers.busy -= 1
        return ids

    async def cancel(self, entry_id: bytes) -> bool:
        """Withdraw an offered entry unless a consumer has taken it. One round trip.

        True means no worker has it or ever will; False means one took it, so
        its claim is on the way (or its worker died and it will be reclaimed).
        """
        try:
            script = self._client().register_script(_CANCEL)
            return bool(await script(keys=[self.stream], args=[self.group, entry_id]))
        except RedisError as exc:
            raise _broker_error(exc) from exc

    async def take(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` new entries for ``consumer``, waiting at most ``block_ms``.

        The entries enter the group's pending list until acked. If the group
        vanished (the stream expired or was flushed) it is recreated.

        Cancellation: entries delivered by Redis but not yet returned stay
        pending and are reclaimed after the idle time, so none is lost.

        Raises:
            BrokerUnavailable: Redis failed, or did not answer within the
                block and a grace period (a connection gone silent, with no
                reset, would otherwise hold the worker until TCP keepalive
                gives up on it).
        """
        try:
            with _bounded_read(block_ms / 1000):
                reply = await self.layer._blocking_for(self.stream).xreadgroup(
                    self.group, consumer, {self.stream: ">"}, count=count, block=block_ms
                )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise _broker_error(exc) from exc
            await self.ensure_group()
            return []
        except RedisError as exc:
            raise _broker_error(exc) from exc
        return _entries(reply)

    async def ack(self, ids: Sequence[bytes]) -> None:
        """Acknowledge and delete entries. One round trip (pipelined)."""
        if not ids:
            return
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                pipe.xack(self.stream, self.group, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()
        except RedisError as exc:
            raise _broker_error(exc) from exc

    async def ack_held(self, consumer: str, ids: Sequence[bytes]) -> set[bytes]:
        """Ack and delete those of ``ids`` that ``consumer`` still holds. One round trip.

        Returns the ids acked. One missing was reclaimed by another consumer
        while this one was stalled (for longer than the reclaim idle time):
        it is that consumer's to run.
        """
        if not ids:
            return set()
        try:
            held = await _ACK_HELD(
                self.layer._quick_for(self.stream),
                [self.stream],
                [self.group, consumer, min(ids, key=_id_order), max(ids, key=_id_order), *ids],
            )
        except RedisError as exc:
            raise _broker_error(exc) from exc
        return set(held)

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over up to ``count`` entries pending longer than ``min_idle_ms``.

        Entries whose data was trimmed away come back as deleted ids and are
        acked here so they stop cycling.
        """
        try:
            reply = await self._client().xautoclaim(
                self.stream, self.group, consumer, min_idle_ms, start_id="0-0", count=count
            )
        except RedisError as exc:
            raise _broker_error(exc) from exc
        claimed = [(eid, fields) for eid, fields in reply[1] if fields]
        gone = [eid for eid, fields in reply[1] if eid is not None and not fields]
        if len(reply) > 2:
            gone.extend(reply[2])  # Redis 7: the ids of deleted entries
        if gone:
            await self.ack(gone)
        if any(eid is None for eid, _ in reply[1]):
            # Redis 6.2 claims deleted entries as nil, without their ids:
            # find them among this consumer's pending entries and ack them,
            # or they would be claimed again and again.
            try:
                script = self._client().register_script(_ACK_DELETED)
                await script(keys=[self.stream], args=[self.group, consumer, max(count, 1000)])
            except RedisError as exc:
                raise _broker_error(exc) from exc
        return claimed

    async def statistics(self) -> dict[str, int]:
        """Length of the stream and the group's pending count."""
        client = self._client()
        try:
            length = await client.xlen(self.stream)
            pending = await client.xpending(self.stream, self.group)
        except ResponseError:
            return {"length": 0, "pending": 0}
        except RedisError as exc:
            raise _broker_error(exc) from exc
        return {"length": int(length), "pending": int(pending["pending"])}


def _id_order(entry_id: bytes) -> tuple[int, ...]:
    """A stream id as Redis orders it (milliseconds, then sequence)."""
    return tuple(int(part) for part in entry_id.split(b"-"))


def _entries(reply: Any) -> list[Entry]:
    # redis-py (RESP2) gives [[stream, [(id, {field: value}), ...]]].
    out: list[Entry] = []
    for _stream, items in reply or []:
        for entry_id, fields in items:
            if fields is not None:
                out.append((entry_id, fields))
    return out
