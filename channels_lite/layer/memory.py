"""An in-process channel layer with the Redis layer's semantics, for tests and one-process runs.

It implements the same stream primitives as the Redis backend (capacity-checked
append, atomic pop, non-destructive wait, scored group membership), and
:class:`~channels_lite.layer._base.BaseChannelLayer` builds the spec on top of
them, so names, limits, capacity, expiry, group expiry, demultiplexing and
statistics behave identically. Messages are stored as encoded wire entries, so
a value that could not cross Redis cannot cross this layer either.

The state is shared by every event loop of the process (Channels'
``async_to_sync`` uses several): a ``threading.Lock`` guards it, and a waiter
in another loop is woken with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import wire
from ._base import Append, BaseChannelLayer, Popped, _LoopState

__all__ = ["InMemoryChannelLayer"]


@dataclass(slots=True)
class _Stream:
    entries: deque[tuple[int, int, dict[bytes, bytes]]] = field(default_factory=deque)
    last: tuple[int, int] = (0, 0)
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=list
    )

    def next_id(self, now_ms: int) -> tuple[int, int]:
        # Like Redis: ids never go backwards even if the clock does.
        ms, seq = self.last
        self.last = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        return self.last

    def trim(self, min_ms: int) -> int:
        trimmed = 0
        while self.entries and self.entries[0][0] < min_ms:
            self.entries.popleft()
            trimmed += 1
        return trimmed


class InMemoryChannelLayer(BaseChannelLayer):
    """Channel layer in this process's memory; the Redis layer's arguments minus ``hosts``."""

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
    ) -> None:
        super().__init__(
            prefix=prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            max_message_size=max_message_size,
            receive_batch=receive_batch,
        )
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._groups: dict[str, dict[str, int]] = {}

    async def _append(self, appends: list[Append]) -> tuple[list[bool], int]:
        now = _now_ms()
        added: list[bool] = []
        expired = 0
        with self._lock:
            for append in appends:
                stream = self._streams.get(append.stream)
                if stream is None:
                    stream = self._streams[append.stream] = _Stream()
                expired += stream.trim(now - self._expiry_ms)
                if len(stream.entries) >= append.capacity:
                    added.append(False)
                    continue
                ms, seq = stream.next_id(now)
                stream.entries.append((ms, seq, append.fields))
                added.append(True)
                _wake(stream)
        return added, expired

    async def _pop(self, stream_key: str, count: int) -> Popped:
        now = _now_ms()
        with self._lock:
            stream = self._streams.get(stream_key)
            if stream is None:
                return Popped([], 0, now)
            expired = stream.trim(now - self._expiry_ms)
            taken = [
                (f"{ms}-{seq}".encode(), fields)
                for ms, seq, fields in (
                    stream.entries.popleft() for _ in range(min(count, len(stream.entries)))
                )
            ]
            if not stream.entries and not stream.waiters:
                del self._streams[stream_key]
        return Popped(taken, expired, now)

    async def _wait(self, stream_key: str, block_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            stream = self._streams.get(stream_key)
            if stream is None:
                stream = self._streams[stream_key] = _Stream()
            if stream.entries:
                return
            waiter = (loop, future)
            stream.waiters.append(waiter)
        try:
            # Cancellation point: nothing is consumed while waiting.
            await asyncio.wait_for(future, block_seconds)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if waiter in stream.waiters:
                    stream.waiters.remove(waiter)

    async def _read(
        self, stream_key: str, after: bytes, count: int, block_seconds: float
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        start = _parse_id(after)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            stream = self._streams.get(stream_key)
            if stream is None:
                stream = self._streams[stream_key] = _Stream()
            found = _entries_after(stream, start, count)
            if found:
                return found
            waiter = (loop, future)
            stream.waiters.append(waiter)
        try:
            # Cancellation point: nothing is consumed while waiting.
            await asyncio.wait_for(future, block_seconds)
        except TimeoutError:
            return []
        finally:
            with self._lock:
                if waiter in stream.waiters:
                    stream.waiters.remove(waiter)
        with self._lock:
            return _entries_after(stream, start, count)

    async def _delete(self, stream_key: str, ids: list[bytes]) -> None:
        gone = {_parse_id(entry_id) for entry_id in ids}
        with self._lock:
            stream = self._streams.get(stream_key)
            if stream is None:
                return
            stream.entries = deque(e for e in stream.entries if (e[0], e[1]) not in gone)
            if not stream.entries and not stream.waiters:
                del self._streams[stream_key]

    async def _group_add(self, key: str, channel: str) -> None:
        with self._lock:
            self._groups.setdefault(key, {})[channel] = _now_ms()

    async def _group_discard(self, key: str, channel: str) -> None:
        with self._lock:
            members = self._groups.get(key)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._groups[key]

    async def _group_members(self, key: str) -> list[str]:
        cutoff = _now_ms() - self._group_expiry_ms
        with self._lock:
            members = self._groups.get(key, {})
            for name in [n for n, added in members.items() if added < cutoff]:
                del members[name]
            return list(members)

    async def _flush_backend(self) -> None:
        with self._lock:
            for stream in self._streams.values():
                stream.entries.clear()
            self._groups.clear()

    async def _close_backend(self, state: _LoopState) -> None:
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _parse_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _entries_after(
    stream: _Stream, start: tuple[int, int], count: int
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    found = []
    for ms, seq, fields in stream.entries:
        if (ms, seq) > start:
            found.append((f"{ms}-{seq}".encode(), fields))
            if len(found) >= count:
                break
    return found


def _wake(stream: _Stream) -> None:
    for loop, future in stream.waiters:
        if loop.is_closed():
            continue
        loop.call_soon_threadsafe(_resolve, future)
    stream.waiters.clear()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
