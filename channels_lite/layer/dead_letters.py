"""Reading and replaying the dead-letter stream (``keys.dead_letters``): the operator's side.

Writers (the workers) append ``wire.DeadLetter`` entries; this module lists
them and puts them back. A replay re-adds the original entry's fields, byte
for byte, to the stream it was read from (as a new entry: a stream only grows
forwards) and deletes the dead letter, atomically in one script per entry: a
dead letter is replayed once even if two operators replay at once, and an
entry that cannot be re-added (say the key is no longer a stream) stays a
dead letter.

A replayed entry is re-added regardless of the target's capacity, trimmed to
``maxlen`` (``MAXLEN ~``); a channel stream gets its TTL back (the layer's
``expiry`` plus 10 s), since its readers may be gone. Only keys of the layer's
prefix are written: a dead letter naming another key is refused.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from .. import keys, wire
from ..exceptions import WireError
from ..sealing import Keyring
from .redis import RedisStreamsChannelLayer, _broker_error, _Script

__all__ = ["DeadLetterEntry", "DeadLetters", "ReplayResult", "is_entry_id", "message_type"]

#: Dead letters one read takes.
_PAGE: Final = 100
_ENTRY_ID_RE: Final = re.compile(r"\d+-\d+")

# KEYS[1]: dead-letter stream, KEYS[2]: target stream.
# ARGV: dead-letter id, maxlen, ttl_ms (0: leave the TTL alone), then the
# original entry's field names and values.
# Returns the new entry's id, or false if the dead letter is gone. The XADD
# comes before the XDEL: if it fails (WRONGTYPE), nothing has changed.
_REPLAY = _Script("""
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*'}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
redis.call('XDEL', KEYS[1], ARGV[1])
return id
""")


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One entry of the dead-letter stream.

    ``letter`` is ``None`` when the entry itself is unreadable (or, with a
    keyring, not sealed with one of its keys); ``problem`` then says why.
    ``age`` is in seconds, by Redis's clock. ``type`` is the message type
    the original entry carries, if it can be read.
    """

    id: str
    age: float
    letter: wire.DeadLetter | None
    problem: str = ""
    type: str | None = None


@dataclass(slots=True)
class ReplayResult:
    """What a replay did, filled in as it goes (so a timeout leaves a partial count)."""

    replayed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def is_entry_id(text: str) -> bool:
    """Whether ``text`` is a complete stream entry id (``<ms>-<seq>``)."""
    return _ENTRY_ID_RE.fullmatch(text) is not None


def message_type(
    fields: Mapping[bytes, bytes], stream: str = "", keyring: Keyring | None = None
) -> str | None:
    """The ``type`` of what an entry of ``stream`` carries (message, task, event,
    scope), if it decodes (and, with a keyring, is sealed with one of its keys)."""
    try:
        envelope = wire.decode(fields if keyring is None else keyring.unseal(stream, fields))
    except WireError:
        return None
    if isinstance(envelope, wire.ChannelMessage | wire.Task):
        return str(envelope.message["type"])
    if isinstance(envelope, wire.Event):
        return str(envelope.event["type"])
    if isinstance(envelope, wire.Connect):
        return str(envelope.scope["type"])
    return None


class DeadLetters:
    """The dead-letter stream of ``layer.prefix``.

    Args:
        layer: the Redis layer whose connections (per event loop) to use.
        maxlen: approximate bound of a stream a replay adds to.
    """

    def __init__(self, layer: RedisStreamsChannelLayer, *, maxlen: int = 100_000) -> None:
        self.layer = layer
        self.stream = keys.dead_letters(layer.prefix)
        self.maxlen = maxlen

    async def count(self) -> int:
        """How many dead letters there are."""
        return int(await self._call(self.layer._client_for(self.stream).xlen(self.stream)))

    async def read(self, limit: int) -> list[DeadLetterEntry]:
        """The oldest ``limit`` dead letters, oldest first. One round trip."""
        try:
            async with self.layer._client_for(self.stream).pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.xrange(self.stream, count=limit)
                (seconds, micros), entries = await pipe.execute()
        except RedisError as exc:
            raise _broker_error(exc) from exc
        now_ms = seconds * 1000 + micros // 1000
        return [self._entry(eid, fields, now_ms) for eid, fields in entries]

    async def replay(self, ids: Sequence[str] | None, result: ReplayResult) -> None:
        """Replay the dead letters ``ids``, or all of them (``None``), oldest first.

        With ``None``, only those present when the call starts: an entry
        that fails again while the replay runs is not replayed twice.

        Raises:
            BrokerUnavailable, BrokerError: Redis failed; ``result`` says
            how far it got.

        Cancellation: ``result`` is exact up to the entry in flight, which
        may or may not have been replayed.
        """
        client = self.layer._client_for(self.stream)
        if ids is not None:
            for entry_id in ids:
                found = await self._call(client.xrange(self.stream, entry_id, entry_id))
                if not found:
                    result.missing.append(entry_id)
                    continue
                eid, fields = found[0]
                await self._replay_one(self._entry(eid, fields, 0), result)
            return
        last = await self._call(client.xrevrange(self.stream, count=1))
        if not last:
            return
        end, start = last[0][0], "-"
        while True:
            page = await self._call(client.xrange(self.stream, start, end, count=_PAGE))
            for eid, fields in page:
                await self._replay_one(self._entry(eid, fields, 0), result)
            if len(page) < _PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def _replay_one(self, entry: DeadLetterEntry, result: ReplayResult) -> None:
        letter = entry.letter
        if letter is None:
            result.failed.append((entry.id, entry.problem))
            return
        if not letter.stream.startswith(f"{self.layer.prefix}:") or letter.stream == self.stream:
            reason = f"stream {letter.stream!r} is outside the prefix {self.layer.prefix!r}"
            result.failed.append((entry.id, reason))
            return
        if not letter.fields:
            result.failed.append((entry.id, "the original entry has no fields"))
            return
        ttl = self.layer._stream_ttl_ms if letter.stream.startswith(self._channel_prefix) else 0
        args = [entry.id, self.maxlen, ttl, *(x for kv in letter.fields.items() for x in kv)]
        keys_ = [self.stream, letter.stream]
        try:
            if self.layer._host_index(self.stream) == self.layer._host_index(letter.stream):
                added = await _REPLAY(self.layer._client_for(self.stream), keys_, args)
            else:
                added = await self._replay_across_hosts(entry.id, letter, ttl)
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise _broker_error(exc) from exc
            result.failed.append((entry.id, f"{letter.stream!r} is not a stream"))
            return
        except RedisError as exc:
            raise _broker_error(exc) from exc
        if added:
            result.replayed.append(entry.id)
        else:
            result.missing.append(entry.id)  # another replay took it meanwhile

    async def _replay_across_hosts(self, entry_id: str, letter: wire.DeadLetter, ttl: int) -> Any:
        # Sharded layer, two hosts: not atomic. Re-add first, then delete, so
        # a failure in between leaves a duplicate, never a loss.
        target = self.layer._client_for(letter.stream)
        fields: dict[Any, Any] = dict(letter.fields)
        added = await target.xadd(letter.stream, fields, maxlen=self.maxlen, approximate=True)
        if ttl:
            await target.pexpire(letter.stream, ttl)
        await self.layer._client_for(self.stream).xdel(self.stream, entry_id)
        return added

    @property
    def _channel_prefix(self) -> str:
        return keys.channel_stream(self.layer.prefix, "")

    def _entry(self, entry_id: bytes, fields: dict[bytes, bytes], now_ms: int) -> DeadLetterEntry:
        eid = entry_id.decode()
        age = max(0.0, (now_ms - int(eid.split("-")[0])) / 1000) if now_ms else 0.0
        try:
            # No size limit: workers move oversized entries aside whole.
            envelope = wire.decode(self.layer.unseal(self.stream, fields), max_size=sys.maxsize)
        except WireError as exc:
            return DeadLetterEntry(eid, age, None, f"unreadable dead letter: {exc}")
        if not isinstance(envelope, wire.DeadLetter):
            return DeadLetterEntry(eid, age, None, "not a dead letter")
        kind = message_type(envelope.fields, envelope.stream, self.layer.keyring)
        return DeadLetterEntry(eid, age, envelope, type=kind)

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise _broker_error(exc) from exc
