"""Local buffers of one stream in one event loop: the demultiplexing half of receive.

Entries popped from a stream land here, split by recipient channel; each
``receive`` takes from its channel's buffer. Nothing here does I/O, so every
rule is plain bookkeeping: a buffer holds at most its channel's capacity (the
oldest is evicted and counted as dropped), messages are aged against the
broker's clock, and channels whose owner has gone are forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from ..exceptions import WireError
from ..sealing import Keyring
from ._stats import Counters

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Shedding:
    """Which buffered messages may go when a channel's consumer falls behind.

    For a consumer that cannot keep up and whose messages are not all
    precious (the protocol server's sockets: the app's own events are
    bounded by flow control, pushes from outside are bounded by nothing):
    the messages ``sheddable`` accepts (an encoded body; it is asked once
    per message filed and once per message leaving, so it must be cheap)
    are held to ``max_messages`` and ``max_bytes`` per channel, the oldest
    of them dropped first; the others are never touched.
    """

    max_messages: int
    max_bytes: int
    sheddable: Callable[[bytes], bool]
    #: Told the channel of each message shed (counting, logging).
    on_shed: Callable[[str], None]


#: Offered each message that arrives for a channel with nothing buffered,
#: as ``(channel, encoded body)``; returns whether it took the message (it
#: is then never buffered nor returned by ``receive``). It runs inside the
#: read of the stream, so it must not block, and it must be cheap for the
#: messages it declines.
OnArrival = Callable[[str, bytes], bool]


@dataclass(frozen=True, slots=True)
class InboxRules:
    """What every inbox of one layer applies."""

    capacity_for: Callable[[str], int]
    max_message_size: int
    expiry_ms: int
    counters: Counters
    keyring: Keyring | None = None
    shedding: Shedding | None = None
    on_arrival: OnArrival | None = None


@dataclass(slots=True)
class Inbox:
    """Receive state of one (event loop, stream): local buffers and who is fetching.

    ``name`` is the stream's channel (a normal channel's name, or ``name!``
    for the process-specific channels that share it).
    """

    stream: str
    name: str
    rules: InboxRules
    buffers: dict[str, deque[tuple[int, bytes]]] = field(default_factory=dict)
    # Sheddable messages in each buffer, [count, bytes] (when the rules shed).
    shed_load: dict[str, list[int]] = field(default_factory=dict)
    fetching: bool = False
    inflight: int = 0  # shielded pops not yet distributed
    waiting: dict[str, int] = field(default_factory=dict)
    # Receives of this loop parked until their channel gets a message or the
    # fetch role is handed to them: one future each, so a pop wakes only the
    # receives it has something for (not every receive of a busy process).
    waiters: dict[str, list[asyncio.Future[None]]] = field(default_factory=dict)
    handed: asyncio.Future[None] | None = None  # the parked receive told to fetch
    # The blocking read of the broker shared by this stream's receives, and
    # the future it settles once what it read is in the buffers.
    wait_task: asyncio.Task[None] | None = None
    read_done: asyncio.Future[None] | None = None
    # Channels whose owner is gone (forget), with when: late arrivals for
    # them are discarded instead of buffered.
    forgotten: dict[str, float] = field(default_factory=dict)
    swept_ms: float = 0.0

    @property
    def specific(self) -> bool:
        return self.name.endswith("!")

    async def wait(self, channel: str) -> None:
        """Park until :meth:`wake` for ``channel`` or :meth:`hand_off`.

        Cancellation: safe; the future is simply discarded.
        """
        future = asyncio.get_running_loop().create_future()
        parked = self.waiters.setdefault(channel, [])
        parked.append(future)
        try:
            await future
        except BaseException:
            if self.handed is future:
                # Handed the fetch role but cancelled before we could take
                # it: pass it on, or the other parked receives starve.
                self.handed = None
                self._unpark(channel, parked, future)
                self.hand_off()
            raise
        finally:
            self._unpark(channel, parked, future)
        if self.handed is future:
            self.handed = None  # our caller takes the role now

    def _unpark(
        self, channel: str, parked: list[asyncio.Future[None]], future: asyncio.Future[None]
    ) -> None:
        if future in parked:
            parked.remove(future)
        if not parked and self.waiters.get(channel) is parked:
            del self.waiters[channel]

    def wake(self, channel: str) -> None:
        for future in self.waiters.get(channel, ()):
            if not future.done():
                future.set_result(None)

    def hand_off(self) -> None:
        """Nobody fetches for this stream now: wake one parked receive to do it.

        At most one hand-off is outstanding, so a burst of receives returning
        together does not wake a crowd of would-be fetchers.
        """
        if self.fetching or self.inflight or self.handed is not None:
            return
        for parked in self.waiters.values():
            for future in parked:
                if not future.done():
                    future.set_result(None)
                    self.handed = future
                    return

    def idle(self) -> bool:
        return not (
            self.buffers or self.fetching or self.inflight or self.waiting or self.wait_task
        )

    def distribute(self, entry_id: bytes, fields: Mapping[bytes, bytes], now_ms: float) -> None:
        """File one popped entry (a message, or a bundle of them) under its recipients.

        ``now_ms`` is the broker's clock (estimated): a message older than
        the expiry is never offered to ``on_arrival``.
        """
        counters = self.rules.counters
        try:
            if self.rules.keyring is not None:
                fields = self.rules.keyring.unseal(self.stream, fields)
            parts = wire.split_channel_messages(fields, max_size=self.rules.max_message_size)
        except WireError as exc:
            counters.malformed += 1
            logger.warning("skipped malformed entry %r on %s: %s", entry_id, self.stream, exc)
            return
        ms = int(entry_id.split(b"-", 1)[0])
        # Expired ones are buffered as ever, for take (or the sweep) to count.
        fresh = now_ms - ms <= self.rules.expiry_ms
        for to, body in parts:
            # A normal stream belongs to one channel, whatever the entry says.
            self._file(entry_id, ms, to if self.specific else (self.name,), body, fresh)

    def _file(
        self, entry_id: bytes, ms: int, to: tuple[str, ...], body: bytes, fresh: bool
    ) -> None:
        counters = self.rules.counters
        on_arrival = self.rules.on_arrival if fresh else None
        for name in to:
            # (startswith: the stream's name ends with its only "!")
            if self.specific and not name.startswith(self.name):
                counters.malformed += 1
                logger.warning(
                    "entry %r on %s names foreign channel %r", entry_id, self.stream, name
                )
                continue
            buffer = self.buffers.get(name)
            if buffer is None:
                if name in self.forgotten:
                    continue
                # Nothing of this channel waits to be taken, so a message
                # taken now cannot overtake one: its consumer may take it
                # as it arrives, without a receive.
                if on_arrival is not None and self._arrived(on_arrival, name, body):
                    counters.received += 1
                    continue
                buffer = self.buffers[name] = deque()
            elif len(buffer) >= self.rules.capacity_for(name):
                _, evicted = buffer.popleft()
                counters.dropped += 1
                self._unload(name, evicted)
            shedding = self.rules.shedding
            if shedding is not None and shedding.sheddable(body):
                load = self.shed_load.setdefault(name, [0, 0])
                if load[0] >= shedding.max_messages or load[1] + len(body) > shedding.max_bytes:
                    self._shed(name, buffer, shedding, load, len(body))
                load[0] += 1
                load[1] += len(body)
            buffer.append((ms, body))
            if name in self.waiters:
                self.wake(name)

    def _arrived(self, on_arrival: OnArrival, name: str, body: bytes) -> bool:
        """Whether ``on_arrival`` took the message. A hook that raises (a bug)
        declines it: the message is buffered as usual, and the read that
        every receive of this stream shares carries on."""
        try:
            return on_arrival(name, body)
        except Exception:
            logger.exception("on_arrival failed for a message to %r; buffered instead", name)
            return False

    def _shed(
        self,
        name: str,
        buffer: deque[tuple[int, bytes]],
        shedding: Shedding,
        load: list[int],
        incoming: int,
    ) -> None:
        """Drop the oldest sheddable messages of ``name`` until one more of
        ``incoming`` bytes fits. The consumer is behind: the slow path only."""
        index = 0
        while (
            index < len(buffer)
            and load[0]
            and (load[0] >= shedding.max_messages or load[1] + incoming > shedding.max_bytes)
        ):
            body = buffer[index][1]
            if shedding.sheddable(body):
                del buffer[index]
                load[0] -= 1
                load[1] -= len(body)
                self.rules.counters.dropped += 1
                shedding.on_shed(name)
            else:
                index += 1

    def _unload(self, name: str, body: bytes) -> None:
        """``body`` left ``name``'s (still not empty) buffer: off its sheddable
        load, if it was sheddable. An emptied buffer's load is simply dropped."""
        load = self.shed_load.get(name)
        shedding = self.rules.shedding
        if load is not None and shedding is not None and shedding.sheddable(body):
            load[0] -= 1
            load[1] -= len(body)

    def take(self, channel: str, now_ms: float) -> dict[str, Any] | None:
        """The oldest unexpired, decodable message for ``channel``, if any."""
        counters = self.rules.counters
        buffer = self.buffers.get(channel)
        while buffer:
            ms, body = buffer.popleft()
            if not buffer:
                del self.buffers[channel]
                self.shed_load.pop(channel, None)
            elif self.shed_load:
                self._unload(channel, body)
            if now_ms - ms > self.rules.expiry_ms:
                counters.expired += 1
                continue
            try:
                message = wire.decode_message(body, max_size=self.rules.max_message_size)
            except WireError as exc:
                counters.malformed += 1
                logger.warning("skipped malformed message for %r: %s", channel, exc)
                continue
            counters.received += 1
            return message
        return None

    def sweep(self, now_ms: float) -> None:
        """Age out buffered messages nobody came for, so buffers of channels
        whose consumers are gone do not live as long as the process."""
        self.swept_ms = now_ms
        cutoff = now_ms - self.rules.expiry_ms
        for name in [n for n, at in self.forgotten.items() if at < cutoff]:
            del self.forgotten[name]
        for name, buffer in list(self.buffers.items()):
            while buffer and buffer[0][0] < cutoff:
                _, body = buffer.popleft()
                self.rules.counters.expired += 1
                if self.shed_load:
                    self._unload(name, body)
            if not buffer:
                del self.buffers[name]
                self.shed_load.pop(name, None)

    def forget(self, channel: str, now_ms: float) -> None:
        """Drop ``channel``'s buffer and discard what still arrives for it."""
        self.buffers.pop(channel, None)
        self.shed_load.pop(channel, None)
        self.forgotten[channel] = now_ms
