"""The channel layer's semantics, written once for every backend.

Rules / theory of operation
===========================

* A backend provides a handful of stream primitives (append with a capacity
  check, atomic pop, a non-destructive blocking wait, group membership). The
  semantics of the Channels channel layer spec live here, once, so the Redis
  and in-memory backends cannot drift apart.
* Every channel maps to one *stream*. A normal channel has its own stream; the
  process-specific channels ``name!a``, ``name!b`` of one process share the
  stream of ``name!`` and are demultiplexed locally into per-channel buffers.
* Every message is encoded by :mod:`channels_lite.wire` on the way in and
  decoded on the way out, with the backends storing bytes only, so an app
  tested on the in-memory layer meets the same limits and types as on Redis.
* With a keyring (:mod:`channels_lite.sealing`) every entry is sealed where
  its fields are made (``_entry``) and checked where they are split
  (``Inbox.distribute``); an entry that fails is counted as malformed.
* Delivery is at most once. A message that is not delivered is counted
  (``statistics()``): refused (``full``), skipped in a group (``dropped``),
  outlived its ``expiry`` (``expired``), or undecodable (``malformed``).
* Expiry uses the stream ids' millisecond timestamps as the clock. Entries
  are trimmed by id on the broker; locally buffered ones are aged against an
  estimate of the broker's clock (corrected on every pop), so a skewed host
  clock cannot make everything look expired.
* A process-specific stream has one reader, so it is followed rather than
  popped: a blocking read from the last id seen returns the entries that
  woke it (one round trip per wake-up instead of a wait and a pop), and what
  was read is deleted in the background (``_tail.py``). Normal channels,
  which receivers in several processes may share, are popped atomically.
* Receiving is cancellation-safe. The blocking wait does not consume, so
  cancelling it loses nothing. The pop *does* consume, so it runs to
  completion in a shielded task that puts what it took into the local buffers
  even if the receive that started it is cancelled. anyio's shield does not
  stop asyncio-native ``Task.cancel()`` (which Django Channels uses), hence
  ``asyncio.shield``. These short tasks are the layer's only tasks; they are
  tracked and awaited by ``close()``.
* The layer is used from whatever event loop calls it (Channels'
  ``async_to_sync`` runs each call in a fresh loop), so connections, readers
  and process-specific channel names are kept per event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, TypeVar

from .. import keys, wire
from ..exceptions import ChannelFull, ConfigError, WireError
from ..sealing import Keyring
from ._inbox import Inbox, InboxRules, OnArrival, Shedding
from ._names import (
    MAX_NAME_LENGTH,
    RELAY_CAPACITY,
    SOCKET_CHANNELS,
    CapacityTable,
    _channel_ok,
    check_channel,
    check_group,
    check_message,
    non_local_name,
)
from ._stats import Counters, LayerStatistics
from ._tail import TailPosition

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long one blocking wait on the broker lasts before it is re-armed.
BLOCK_SECONDS = 5.0
_BACKOFF_MAX = 2.0
#: Recipients named in one entry at most (10,000 names stay well under 1 MiB).
MAX_RECIPIENTS_PER_ENTRY = 10_000
_SWEEP_INTERVAL_MS = 1000


@dataclass(frozen=True, slots=True)
class Append:
    """One entry to add to ``stream`` unless it already holds ``capacity`` entries."""

    stream: str
    fields: dict[bytes, bytes]
    capacity: int
    #: The message as ``(to, body)``, for a backend that bundles sends.
    message: tuple[Sequence[str], bytes] | None = None


@dataclass(frozen=True, slots=True)
class Popped:
    """What an atomic pop took: entries as ``(id, fields)``, plus the broker's clock."""

    entries: list[tuple[bytes, dict[bytes, bytes]]]
    expired: int
    now_ms: int


@dataclass(slots=True)
class _LoopState:
    client_prefix: str = field(default_factory=lambda: secrets.token_hex(6))
    # Unique within the loop; the random client prefix makes names unique
    # across processes (and a counter costs no getrandom() per connection).
    serials: Iterator[int] = field(default_factory=itertools.count)
    readers: dict[str, Inbox] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    backend: Any = None
    # Process-specific streams are followed, not popped (see _tail.py).
    tails: dict[str, TailPosition] = field(default_factory=dict)


class BaseChannelLayer:
    """Shared implementation of the channel layer spec; see the module docstring."""

    extensions: ClassVar[list[str]] = ["groups", "flush"]
    #: Exceptions of the backend that mean "broker unreachable, retry later".
    _outage_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(
        self,
        *,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[str | re.Pattern[str], int] | None = None,
        max_message_size: int = wire.DEFAULT_MAX_SIZE,
        receive_batch: int = 100,
        keyring: Keyring | None = None,
        shedding: Shedding | None = None,
        on_arrival: OnArrival | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or not re.fullmatch(r"[\w.\-]+", prefix):
            raise ConfigError(f"prefix must be a non-empty word, not {prefix!r}")
        for name, value in (("expiry", expiry), ("group_expiry", group_expiry)):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        for name, value in (
            ("max_message_size", max_message_size),
            ("receive_batch", receive_batch),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        self.prefix = prefix
        self.expiry = expiry
        self.group_expiry = group_expiry
        self.capacity = capacity
        self.channel_capacity = dict(channel_capacity or {})
        self.max_message_size = max_message_size
        self.receive_batch = receive_batch
        # The caller's patterns first (first match wins), then the socket
        # channels' bound, unless the caller set that pattern itself.
        patterns = dict(self.channel_capacity)
        patterns.setdefault(SOCKET_CHANNELS, RELAY_CAPACITY)
        self.capacity_for = CapacityTable(capacity, patterns)
        self._expiry_ms = int(expiry * 1000)
        self._group_expiry_ms = int(group_expiry * 1000)
        self._counters = Counters()
        #: Seals what this layer writes and checks what it reads (None: off).
        self.keyring = keyring
        self._rules = InboxRules(
            self.capacity_for,
            max_message_size,
            self._expiry_ms,
            self._counters,
            keyring,
            shedding,
            on_arrival,
        )
        self._clock_offset_ms = 0.0
        self._stream_keys: dict[str, str] = {}
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._outage_since: float | None = None
        self._clock_set = 0.0  # monotonic time the clock offset was last measured

    # ------------------------------------------------------------------
    # Backend primitives

    async def _append(self, appends: list[Append]) -> tuple[list[bool], int]:
        """Add entries; per entry whether it was added (False: at capacity), and how
        many expired entries were trimmed on the way."""
        raise NotImplementedError

    async def _pop(self, stream: str, count: int) -> Popped:
        """Atomically remove and return up to ``count`` unexpired entries."""
        raise NotImplementedError

    async def _wait(self, stream: str, block_seconds: float) -> None:
        """Return once ``stream`` has an entry, or after ``block_seconds``; consumes nothing."""
        raise NotImplementedError

    async def _read(
        self, stream: str, after: bytes, count: int, block_seconds: float
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``count`` entries with ids above ``after``, waiting at most
        ``block_seconds`` for one; consumes nothing."""
        raise NotImplementedError

    async def _delete(self, stream: str, ids: list[bytes]) -> None:
        """Delete entries by id (those already gone are no error)."""
        raise NotImplementedError

    async def _group_add(self, key: str, channel: str) -> None:
        raise NotImplementedError

    async def _group_discard(self, key: str, channel: str) -> None:
        raise NotImplementedError

    async def _group_members(self, key: str) -> list[str]:
        """Members added within ``group_expiry``; older ones are removed."""
        raise NotImplementedError

    async def _flush_backend(self) -> None:
        raise NotImplementedError

    async def _close_backend(self, state: _LoopState) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------
    # The channel layer API

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``.

        Raises:
            InvalidChannelName, InvalidMessage: bad arguments (``TypeError``).
            WireError: a value has no wire form, or the message is too large.
            ChannelFull: the channel holds ``capacity`` undelivered messages.
            BrokerUnavailable: Redis could not be reached.

        Cancellation: the message may or may not have been sent.
        """
        check_channel(channel)
        stream, body = self._stream_key(channel), self._encode(message)
        append = Append(
            stream,
            self._entry(stream, (channel,), body),
            self.capacity_for(channel),
            ((channel,), body),
        )
        (added,), expired = await self._append([append])
        self._counters.expired += expired
        if not added:
            self._counters.full += 1
            raise ChannelFull(f"channel {channel!r} is at capacity ({append.capacity})")
        self._counters.sent += 1

    async def send_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Send several messages in one broker call, in order.

        Not part of the Channels spec: the runtime uses it to put a claim, a
        response start and its body on the wire in one round trip. Messages
        to the same channel arrive in the order given.

        Raises:
            As :meth:`send`. ``ChannelFull`` names the first message refused;
            the others were sent.
        """
        appends = []
        for channel, message in items:
            check_channel(channel)
            stream, body = self._stream_key(channel), self._encode(message)
            appends.append(
                Append(
                    stream,
                    self._entry(stream, (channel,), body),
                    self.capacity_for(channel),
                    ((channel,), body),
                )
            )
        if not appends:
            return
        added, expired = await self._append(appends)
        self._counters.expired += expired
        self._counters.sent += sum(added)
        for (channel, _), ok, append in zip(items, added, appends, strict=True):
            if not ok:
                self._counters.full += 1
                raise ChannelFull(f"channel {channel!r} is at capacity ({append.capacity})")

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for and return the next message on ``channel``.

        Broker outages are waited out with backoff (logged once), so a
        consumer's receive loop survives a Redis restart.

        Cancellation: safe at any point; a message taken from the broker but
        not yet returned stays buffered for the next ``receive``.
        """
        check_channel(channel)
        state = self._state()
        stream = self._stream_key(channel)
        reader = state.readers.get(stream)
        if reader is not None and channel in reader.buffers:
            # Fast path: already here (a batch pop or a group fan-out left it).
            message = reader.take(channel, self._now_ms())
            if message is not None:
                return message
        if reader is None:
            reader = state.readers[stream] = Inbox(stream, non_local_name(channel), self._rules)
        reader.waiting[channel] = reader.waiting.get(channel, 0) + 1
        backoff = 0.05
        try:
            while True:
                message = reader.take(channel, self._now_ms())
                if message is not None:
                    return message
                if reader.fetching or reader.inflight:
                    # Another receive of this loop is talking to the broker for
                    # this stream, or a pop of a cancelled receive is still
                    # landing: we are woken when a message for us lands or
                    # when the fetch role is handed to us.
                    await reader.wait(channel)
                    continue
                try:
                    await self._fetch(state, reader, channel)
                    backoff = 0.05
                except self._outage_errors as exc:
                    self._note_outage(exc)
                    await asyncio.sleep(backoff)  # cancellation point: nothing held
                    backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            remaining = reader.waiting[channel] - 1
            if remaining:
                reader.waiting[channel] = remaining
            else:
                del reader.waiting[channel]
            # If we were the one fetching, someone else must take over.
            reader.hand_off()
            if reader.idle() and state.readers.get(stream) is reader:
                del state.readers[stream]

    async def new_channel(self, prefix: str = "specific") -> str:
        """Return a new process-specific channel name, ``prefix.<client>!<n>``.

        ``<client>`` is random per layer and event loop, ``<n>`` a serial:
        unique, but not secret from whoever sees one name of the process.
        Sealing (a keyring) is what keeps others from writing to a channel.
        """
        state = self._state()
        # Checked by the part before "!" (cached): the hex serial after it
        # is valid by construction, and the full regex on every new channel
        # (one per connection on both sides of the runtime) was measurable.
        process_part = f"{prefix}.{state.client_prefix}!"
        name = f"{process_part}{next(state.serials):x}"
        if len(name) >= MAX_NAME_LENGTH or not _channel_ok(process_part):
            check_channel(name)  # raises, naming the rules
        return name

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (refreshing its ``group_expiry`` clock)."""
        await self._group_add(self._group_key(group), check_channel(channel))

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op for a non-member."""
        await self._group_discard(self._group_key(group), check_channel(channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``.

        One entry per destination stream: all process-specific members of one
        process share one entry. A member at capacity is skipped, counted in
        ``statistics().dropped`` and logged; the others still receive.
        """
        body = self._encode(message)
        key = self._group_key(group)
        by_stream: dict[str, list[str]] = {}
        for member in await self._group_members(key):
            by_stream.setdefault(self._stream_key(member), []).append(member)
        self._counters.group_sends += 1
        if not by_stream:
            return
        # One entry per stream; only a stream with more than
        # MAX_RECIPIENTS_PER_ENTRY members gets several, to bound the entry size.
        batches = [
            (stream, to[i : i + MAX_RECIPIENTS_PER_ENTRY])
            for stream, to in by_stream.items()
            for i in range(0, len(to), MAX_RECIPIENTS_PER_ENTRY)
        ]
        appends = [
            Append(stream, self._entry(stream, to, body), self.capacity_for(to[0]), (to, body))
            for stream, to in batches
        ]
        added, expired = await self._append(appends)
        self._counters.expired += expired
        dropped = 0
        for append, ok, (_, to) in zip(appends, added, batches, strict=True):
            if ok:
                self._counters.sent += len(to)
            else:
                dropped += len(to)
                logger.warning(
                    "group_send to %r: %d member(s) on %s skipped, stream at capacity (%d)",
                    group,
                    len(to),
                    append.stream,
                    append.capacity,
                )
        self._counters.dropped += dropped

    async def flush(self) -> None:
        """Delete every key of this layer's prefix and forget local buffers."""
        await self._flush_backend()
        for state in self._loops.values():
            for reader in state.readers.values():
                reader.buffers.clear()

    async def close(self) -> None:
        """Wait for in-flight pops and close this event loop's connections. Idempotent."""
        state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await self._close_state(state)

    def statistics(self) -> LayerStatistics:
        """Counters of this layer instance (this process); see :class:`LayerStatistics`."""
        return self._counters.snapshot()

    # ------------------------------------------------------------------
    # Receiving

    async def _fetch(self, state: _LoopState, reader: Inbox, channel: str) -> None:
        reader.fetching = True
        try:
            if reader.specific:
                # Ours alone: follow it (one round trip per wake-up, no pop).
                await self._await_shared(state, reader, partial(self._tail_into, state, reader))
                self._note_recovered()
                return
            # A process-specific stream is ours alone: take a batch. A normal
            # channel may have receivers in other processes: take only as many
            # as wait here, so nothing sits in our buffer while they starve.
            count = self.receive_batch if reader.specific else sum(reader.waiting.values())
            # Counted before the task exists: if this receive is cancelled
            # before the task first runs, the reader must stay registered so
            # that what the pop takes lands where the next receive looks.
            reader.inflight += 1
            got = await self._shielded(state, self._pop_into(reader, count))
            self._note_recovered()
            if not got:
                await self._await_shared(state, reader, partial(self._wait_then, reader))
        finally:
            reader.fetching = False

    async def _await_shared(
        self,
        state: _LoopState,
        reader: Inbox,
        read: Callable[[asyncio.Future[None]], Coroutine[Any, Any, None]],
    ) -> None:
        """Run ``read(done)`` (a blocking read of ``reader``'s stream, which
        settles ``done`` once its result is in the buffers) in a task of the
        reader's own, or join the read already under way.

        Cancellation point: the read consumes nothing, or hands what it read
        to the reader's buffers itself. It runs in its own task because
        cancelling a blocking read makes redis-py drop the connection it
        blocks on: a receive cancelled here (a connection ending in the
        runtime, a consumer closing) leaves the read running for the next
        receive of this stream instead of costing a reconnect.
        """
        done = reader.read_done
        if done is None or done.done():
            done = reader.read_done = asyncio.get_running_loop().create_future()
            done.add_done_callback(_retrieve)
            task = reader.wait_task = asyncio.ensure_future(read(done))
            state.tasks.add(task)
            task.add_done_callback(_wait_done(state, reader))
        await asyncio.shield(done)

    async def _wait_then(self, reader: Inbox, done: asyncio.Future[None]) -> None:
        """Wait for an entry on ``reader``'s (normal) stream; its pop follows."""
        try:
            await self._wait(reader.stream, BLOCK_SECONDS)
        except BaseException as exc:
            _settle(done, exc)
            raise
        _settle(done)

    async def _tail_into(
        self, state: _LoopState, reader: Inbox, done: asyncio.Future[None]
    ) -> None:
        """Read past the last entry seen, into the buffers; then delete what was read."""
        position = state.tails.get(reader.stream)
        if position is None:
            position = state.tails[reader.stream] = TailPosition()
        try:
            entries = await self._read(
                reader.stream, position.start(), self.receive_batch, BLOCK_SECONDS
            )
        except BaseException as exc:
            _settle(done, exc)
            raise
        if not entries:
            _settle(done)
            return
        # From here to the delete nothing awaits: what was read reaches the buffers.
        try:
            self._observe_clock(int(entries[-1][0].split(b"-", 1)[0]))
            now_ms = self._now_ms()
            for entry_id, fields in entries:
                reader.distribute(entry_id, fields, now_ms)
            if now_ms - reader.swept_ms > _SWEEP_INTERVAL_MS:
                reader.sweep(now_ms)
            ids = position.read([entry_id for entry_id, _ in entries])
        except BaseException as exc:
            # A bug, not an outage: the receives waiting on this read hear
            # it rather than wait forever, and it is logged in case none is.
            if isinstance(exc, Exception):
                logger.exception("filing what was read from %s failed", reader.stream)
            _settle(done, exc)
            raise
        _settle(done)  # the receives go on once this task yields...
        # ...and it yields only once the delete is written (a pooled
        # connection is at hand): whatever they send next reaches Redis after
        # it. Its reply is waited for here, by no receive.
        try:
            await self._delete(reader.stream, ids)
        except Exception as exc:
            position.deleted(ids, ok=False)
            logger.debug("deleting %d read entries of %s failed: %s", len(ids), reader.stream, exc)
        else:
            position.deleted(ids, ok=True)

    def _observe_clock(self, newest_ms: int) -> None:
        """Correct the broker-clock estimate from the id of an entry just read.

        An id is the broker's time when the entry was added, so it can only
        be behind the broker's clock now: it raises the estimate at once, and
        replaces it when no exact reading (a pop's ``TIME``) came for a while.
        """
        offset = newest_ms - time.time() * 1000
        now = time.monotonic()
        if offset > self._clock_offset_ms or now - self._clock_set > 10:
            self._clock_offset_ms = offset
            self._clock_set = now

    async def _pop_into(self, reader: Inbox, count: int) -> int:
        try:
            popped = await self._pop(reader.stream, count)
        finally:
            reader.inflight -= 1
        # From here to the end nothing awaits: what was popped reaches the buffers.
        self._clock_offset_ms = popped.now_ms - time.time() * 1000
        self._clock_set = time.monotonic()
        self._counters.expired += popped.expired
        for entry_id, fields in popped.entries:
            reader.distribute(entry_id, fields, popped.now_ms)
        if popped.now_ms - reader.swept_ms > _SWEEP_INTERVAL_MS:
            reader.sweep(popped.now_ms)
        # The receive that started this pop may have been cancelled meanwhile.
        reader.hand_off()
        return len(popped.entries)

    def forget_channel(self, channel: str) -> None:
        """Drop what is buffered for a process-specific ``channel`` of this loop
        and discard what still arrives for it (until ``expiry`` has passed).

        Not part of the Channels spec: the runtime calls it when a connection
        ends, so late replies to a finished connection cost no memory.
        """
        state = self._loops.get(asyncio.get_running_loop())
        reader = None if state is None else state.readers.get(self._stream_key(channel))
        if reader is not None:
            reader.forget(channel, self._now_ms())

    # ------------------------------------------------------------------
    # Helpers

    def _encode(self, message: dict[str, Any]) -> bytes:
        body = wire.encode_message(check_message(message))
        if len(body) > self.max_message_size:
            raise WireError(
                f"message of {len(body)} bytes exceeds max_message_size ({self.max_message_size})"
            )
        return body

    def _entry(self, stream: str, to: Sequence[str], body: bytes) -> dict[bytes, bytes]:
        """The fields of a channel-message entry for ``stream``: every entry
        this layer writes is made here, so here is where it is sealed."""
        fields = wire.channel_message_fields(to, body)
        return fields if self.keyring is None else self.keyring.seal(stream, fields)

    def seal(self, stream: str, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """``fields`` sealed for ``stream`` with this layer's keyring (as they are
        without one). For the other writers on the layer's connections: the
        connect and task queues, retries, dead letters."""
        return fields if self.keyring is None else self.keyring.seal(stream, fields)

    def unseal(self, stream: str, fields: Mapping[bytes, bytes]) -> Mapping[bytes, bytes]:
        """``fields`` read from ``stream``, checked (and decrypted) with this layer's
        keyring; as they are without one.

        Raises:
            SealError: (a ``WireError``) not sealed with one of our keys.
        """
        return fields if self.keyring is None else self.keyring.unseal(stream, fields)

    def _stream_key(self, channel: str) -> str:
        # Cached per stream name (group_send maps every member on every
        # call), not per channel: process-specific names are one per
        # connection in the runtime, and would fill the cache for nothing.
        name = non_local_name(channel)
        try:
            return self._stream_keys[name]
        except KeyError:
            if len(self._stream_keys) >= 16384:
                self._stream_keys.clear()
            key = self._stream_keys[name] = keys.channel_stream(self.prefix, name)
            return key

    def _group_key(self, group: str) -> str:
        return keys.group_set(self.prefix, check_group(group))

    def _now_ms(self) -> float:
        return time.time() * 1000 + self._clock_offset_ms

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            # Forget loops that async_to_sync has closed: their sockets are gone.
            for old in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[old]
            state = self._loops[loop] = _LoopState()
            self._close_with_loop(loop)
        return state

    async def _close_state(self, state: _LoopState) -> None:
        for reader in state.readers.values():
            if reader.wait_task is not None:
                reader.wait_task.cancel()  # a blocking read: nobody needs its end
        if state.tasks:
            await asyncio.gather(*state.tasks, return_exceptions=True)
        await self._close_backend(state)

    def _close_with_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close this loop's connections when the loop closes.

        ``async_to_sync`` without an outer loop (Celery tasks, scripts) runs
        every call in a new loop and closes it straight after; without this
        hook each call would leave a Redis connection for the garbage
        collector. channels_redis solves it the same way.
        """
        original = loop.close

        def close() -> None:
            state = self._loops.pop(loop, None)
            if state is not None and not loop.is_running() and not loop.is_closed():
                try:
                    loop.run_until_complete(self._close_state(state))
                except Exception:  # closing must never stop the loop from closing
                    logger.debug("closing the layer's connections failed", exc_info=True)
            loop.close = original  # type: ignore[method-assign]
            original()

        try:
            loop.close = close  # type: ignore[method-assign]
        except AttributeError:  # a loop class without instance attributes
            logger.debug("cannot hook %r.close; its connections close on collection", loop)

    async def _shielded(self, state: _LoopState, coro: Awaitable[T]) -> T:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        state.tasks.add(task)
        task.add_done_callback(_forget_task(state))
        return await asyncio.shield(task)

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning("broker unreachable (%s); receive retries with backoff", exc)

    def _note_recovered(self) -> None:
        if self._outage_since is not None:
            logger.warning(
                "broker reachable again after %.1fs", time.monotonic() - self._outage_since
            )
            self._outage_since = None


def _wait_done(state: _LoopState, reader: Inbox) -> Any:
    def done(task: asyncio.Task[None]) -> None:
        state.tasks.discard(task)
        if reader.wait_task is task:
            reader.wait_task = None
        if not task.cancelled():
            task.exception()  # retrieved: a receive awaiting it handles it
        if reader.idle() and state.readers.get(reader.stream) is reader:
            del state.readers[reader.stream]

    return done


def _settle(done: asyncio.Future[None], exc: BaseException | None = None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(exc)


def _retrieve(future: asyncio.Future[None]) -> None:
    # Mark the exception retrieved: the receives that awaited it may all
    # have been cancelled; each that did not handles it.
    if not future.cancelled():
        future.exception()


def _forget_task(state: _LoopState) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        state.tasks.discard(task)
        if not task.cancelled():
            # Mark the exception as retrieved: the receive that awaited it may
            # have been cancelled, and the error is handled (or logged) there.
            task.exception()

    return done
