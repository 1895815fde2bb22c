"""The envelopes of the wire format: what one stream entry carries, as frozen dataclasses.

Plain data, no codec: :mod:`channels_lite.wire` turns them into entry fields and
back (and re-exports them). Each has a ``KIND``, the ``k`` field on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

Message: TypeAlias = dict[str, Any]

__all__ = ["ChannelMessage", "Connect", "DeadLetter", "Envelope", "Event", "Message", "Task"]


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """A channel layer message addressed to one or more channels of one stream.

    ``to`` has one name for a normal channel; for process-specific channels it
    lists every recipient on that process's stream (one entry per stream, not
    per member, is what makes ``group_send`` cheap).
    """

    to: tuple[str, ...]
    message: Message

    KIND = b"msg"


@dataclass(frozen=True, slots=True)
class Connect:
    """A new ASGI connection offered to the workers.

    ``reply_to`` is the channel of the protocol server that owns the
    connection; ``events`` are the first ASGI events (for HTTP, the first body
    chunk), so a small request crosses Redis as one entry. ``server`` is the
    protocol server's process id, whose heartbeat the worker watches (empty:
    not watched).
    """

    conn: str
    reply_to: str
    scope: Message
    events: tuple[Message, ...] = ()
    server: str = ""

    KIND = b"conn"


@dataclass(frozen=True, slots=True)
class Event:
    """One ASGI event of an established connection, in either direction.

    ``seq`` numbers the events of one connection and direction from 0, so the
    receiver can detect loss or reordering instead of trusting the transport.
    """

    conn: str
    seq: int
    event: Message

    KIND = b"ev"


@dataclass(frozen=True, slots=True)
class Task:
    """A background task for the workers, on the stream of its task channel.

    ``channel`` is the task channel's name (the stream it was enqueued on);
    ``attempts`` counts the earlier runs that failed, so a retry is a new
    entry with ``attempts + 1`` and a poison task ends in the dead letters.
    """

    channel: str
    message: Message
    attempts: int = 0

    KIND = b"task"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that could not be processed, kept with why, for inspection and replay.

    ``stream`` and ``entry_id`` say where it was read; ``fields`` are its
    original fields, byte for byte (even garbage), so a replay re-adds
    exactly what was sent; ``error`` says what went wrong.
    """

    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    error: str

    KIND = b"dead"


Envelope: TypeAlias = ChannelMessage | Connect | Event | Task | DeadLetter
