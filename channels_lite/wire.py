"""The wire codec: envelopes to Redis stream-entry fields and back. Sans-IO.

Rules / theory of operation
===========================

* This module imports msgpack and the standard library only. It never touches
  a socket or Redis; callers hand it bytes and get bytes back (the h11 model),
  so every rule here is testable as a pure round trip.
* A stream entry is a flat map of byte fields, exactly what ``XADD`` takes and
  ``XRANGE``/``XREAD`` return. Every entry carries ``v`` (the wire version, ASCII
  digits) and ``k`` (the envelope kind, ASCII). The payload is msgpack in ``d``;
  a channel message keeps its recipient list in a separate ``to`` field so that
  ``group_send`` encodes the (possibly large) message body once and only the
  short recipient list per destination stream.
* msgpack with ``use_bin_type``: ``bytes`` stay bytes (msgpack bin), ``str``
  stays str (msgpack str, UTF-8). Tuples become lists. Integers outside the
  64-bit range travel as ext type 1 (big-endian two's complement), so Python's
  large ints round-trip. Maps come back as ``dict``; keys are normally ``str``.
* Nothing decoded is trusted. ``decode`` raises :class:`WireError` for any
  malformed input: an unknown version or kind, missing fields, bytes that are
  not msgpack, wrong types, or an entry over ``max_size`` (checked *before*
  unpacking, so an oversized entry costs no parsing). It never raises anything
  else, whatever the bytes (a fuzz test holds us to that).
* Version 1 is the only version. A reader rejects a newer version instead of
  guessing; additive changes (new optional map keys) do not bump the version.

The field layout is documented for non-Python publishers in
``docs/wire-protocol.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgpack

from .envelopes import ChannelMessage, Connect, DeadLetter, Envelope, Event, Message, Task
from .exceptions import WireError

__all__ = [
    "DEFAULT_MAX_SIZE",
    "VERSION",
    "ChannelMessage",
    "Connect",
    "DeadLetter",
    "Envelope",
    "Event",
    "Task",
    "channel_message_fields",
    "check_size",
    "decode",
    "decode_message",
    "encode",
    "encode_message",
    "entry_size",
    "pack",
    "split_channel_message",
    "unpack",
]

VERSION: Final = 1
#: Default upper bound for one stream entry (sum of its field values), bytes.
DEFAULT_MAX_SIZE: Final = 1024 * 1024

_VERSION_FIELD: Final = b"v"
_KIND_FIELD: Final = b"k"
_DATA_FIELD: Final = b"d"
_TO_FIELD: Final = b"to"
_VERSION_BYTES: Final = str(VERSION).encode()

_BIGINT_EXT: Final = 1
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1

# --------------------------------------------------------------------------
# Values


def _default(obj: object) -> Any:
    # msgpack calls this for ints outside int64/uint64 and for unknown types.
    if isinstance(obj, int) and not isinstance(obj, bool):
        length = (obj.bit_length() + 8) // 8  # room for the sign bit
        return msgpack.ExtType(_BIGINT_EXT, obj.to_bytes(length, "big", signed=True))
    raise TypeError(f"cannot encode a value of type {type(obj).__name__!r}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _BIGINT_EXT and data:
        value = int.from_bytes(data, "big", signed=True)
        if _INT64_MIN <= value <= _UINT64_MAX:
            # A conforming writer uses native ints for this range; accepting it
            # would give two encodings for one value.
            raise WireError("ext type 1 used for an integer that fits 64 bits")
        return value
    raise WireError(f"unknown msgpack ext type {code}")


def pack(value: Any) -> bytes:
    """Encode one value with the project's msgpack rules.

    Raises:
        WireError: the value (or something nested in it) has no wire form.
    """
    try:
        return msgpack.packb(value, use_bin_type=True, default=_default, datetime=True)  # type: ignore[no-any-return]
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode value: {exc}") from None


def unpack(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode one msgpack value produced by :func:`pack` (or any conforming writer).

    Raises:
        WireError: ``data`` is over ``max_size``, not exactly one msgpack
            value, or uses an ext type or encoding the wire format forbids.
    """
    if len(data) > max_size:
        raise WireError(f"value of {len(data)} bytes exceeds the limit of {max_size} bytes")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            ext_hook=_ext_hook,
            timestamp=3,
        )
    except WireError:
        raise
    # msgpack signals malformed input with a zoo of types (ExtraData,
    # FormatError, StackError are ValueErrors; invalid UTF-8 is a
    # UnicodeDecodeError; an unhashable map key a TypeError). Anything from a
    # peer is untrusted, so all of them become one clear WireError.
    except Exception as exc:
        raise WireError(f"not a valid msgpack value: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------
# Entries


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Encode a layer message body once, for :func:`channel_message_fields`.

    Raises:
        WireError: the message is not a map with a ``str`` ``type`` or holds a
            value that has no wire form.
    """
    _check_message(message, "message")
    return pack(message)


def channel_message_fields(to: Sequence[str], body: bytes) -> dict[bytes, bytes]:
    """Entry fields for an already-encoded message body (the ``group_send`` fast path)."""
    return {
        _VERSION_FIELD: _VERSION_BYTES,
        _KIND_FIELD: ChannelMessage.KIND,
        _TO_FIELD: pack(list(to)),
        _DATA_FIELD: body,
    }


#: Kind of an entry holding several channel messages for one process's stream.
BUNDLE_KIND: Final = b"msgs"


def bundle_fields(parts: Sequence[tuple[Sequence[str], bytes]]) -> dict[bytes, bytes]:
    """Entry fields for several already-encoded messages bound for one stream.

    ``d`` is an array of ``[to, body]`` pairs (``to`` an array of channel
    names, ``body`` the message's msgpack bytes as ``bin``), delivered in
    order. The runtime writes one when many connections of a process answer
    at once (a broadcast): one entry instead of one per connection.
    """
    return {
        _VERSION_FIELD: _VERSION_BYTES,
        _KIND_FIELD: BUNDLE_KIND,
        _DATA_FIELD: pack([[list(to), body] for to, body in parts]),
    }


def encode(envelope: Envelope, *, max_size: int = DEFAULT_MAX_SIZE) -> dict[bytes, bytes]:
    """Turn an envelope into stream-entry fields.

    Raises:
        WireError: the envelope holds a value with no wire form, or the entry
            would exceed ``max_size`` bytes.
    """
    if isinstance(envelope, ChannelMessage):
        _check_names(envelope.to)
        fields = channel_message_fields(envelope.to, encode_message(envelope.message))
    elif isinstance(envelope, Connect):
        _check_str(envelope.conn, "conn")
        _check_str(envelope.reply_to, "reply_to")
        _check_message(envelope.scope, "scope")
        for event in envelope.events:
            _check_message(event, "event")
        _check_str(envelope.server, "server")
        payload = {
            "conn": envelope.conn,
            "reply_to": envelope.reply_to,
            "scope": envelope.scope,
            "events": list(envelope.events),
        }
        if envelope.server:
            payload["server"] = envelope.server
        fields = _fields(Connect.KIND, pack(payload))
    elif isinstance(envelope, Event):
        _check_str(envelope.conn, "conn")
        _check_seq(envelope.seq)
        _check_message(envelope.event, "event")
        fields = _fields(
            Event.KIND,
            pack({"conn": envelope.conn, "seq": envelope.seq, "event": envelope.event}),
        )
    elif isinstance(envelope, Task):
        _check_str(envelope.channel, "channel")
        _check_seq(envelope.attempts, "attempts")
        _check_message(envelope.message, "message")
        task: dict[str, Any] = {"channel": envelope.channel, "message": envelope.message}
        if envelope.attempts:
            task["attempts"] = envelope.attempts
        fields = _fields(Task.KIND, pack(task))
    elif isinstance(envelope, DeadLetter):
        _check_str(envelope.stream, "stream")
        _check_str(envelope.entry_id, "entry_id")
        _check_str(envelope.error, "error")
        dead = {
            "stream": envelope.stream,
            "id": envelope.entry_id,
            "fields": dict(envelope.fields),
            "error": envelope.error,
        }
        fields = _fields(DeadLetter.KIND, pack(dead))
    else:
        raise WireError(f"not an envelope: {type(envelope).__name__}")
    check_size(fields, max_size)
    return fields


def decode(fields: Mapping[bytes, bytes], *, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Turn stream-entry fields back into an envelope.

    Raises:
        WireError: anything malformed; the message names the first problem.
    """
    check_size(fields, max_size)
    version = fields.get(_VERSION_FIELD)
    if version != _VERSION_BYTES:
        raise WireError(f"unsupported wire version {version!r} (this reader speaks {VERSION})")
    kind = fields.get(_KIND_FIELD)
    data = fields.get(_DATA_FIELD)
    if data is None:
        raise WireError("entry has no 'd' field")
    if kind == ChannelMessage.KIND:
        raw_to = fields.get(_TO_FIELD)
        if raw_to is None:
            raise WireError("channel message has no 'to' field")
        to = unpack(raw_to, max_size=max_size)
        if not isinstance(to, list) or not to or not all(isinstance(n, str) for n in to):
            raise WireError("'to' must be a non-empty array of strings")
        message = _expect_message(unpack(data, max_size=max_size), "message")
        return ChannelMessage(to=tuple(to), message=message)
    payload = unpack(data, max_size=max_size)
    if not isinstance(payload, dict):
        raise WireError(f"'d' must be a map, not {type(payload).__name__}")
    if kind == Connect.KIND:
        events = payload.get("events", [])
        if not isinstance(events, list):
            raise WireError("'events' must be an array")
        return Connect(
            conn=_expect_str(payload, "conn"),
            reply_to=_expect_str(payload, "reply_to"),
            scope=_expect_message(payload.get("scope"), "scope"),
            events=tuple(_expect_message(e, "event") for e in events),
            server=_expect_str(payload, "server") if "server" in payload else "",
        )
    if kind == Event.KIND:
        return Event(
            conn=_expect_str(payload, "conn"),
            seq=_check_seq(payload.get("seq")),
            event=_expect_message(payload.get("event"), "event"),
        )
    if kind == Task.KIND:
        attempts = payload.get("attempts", 0)
        return Task(
            channel=_expect_str(payload, "channel"),
            message=_expect_message(payload.get("message"), "message"),
            attempts=_check_seq(attempts, "attempts"),
        )
    if kind == DeadLetter.KIND:
        original = payload.get("fields")
        if not isinstance(original, dict) or not all(
            isinstance(k, bytes) and isinstance(v, bytes) for k, v in original.items()
        ):
            raise WireError("'fields' must be a map of bytes to bytes")
        return DeadLetter(
            stream=_expect_str(payload, "stream"),
            entry_id=_expect_str(payload, "id"),
            fields=original,
            error=_expect_str(payload, "error"),
        )
    raise WireError(f"unknown envelope kind {kind!r}")


def entry_size(fields: Mapping[bytes, bytes]) -> int:
    """Bytes an entry occupies on the wire (field names and values)."""
    return sum(len(k) + len(v) for k, v in fields.items())


def check_size(fields: Mapping[bytes, bytes], max_size: int) -> None:
    """Raise :class:`WireError` if the entry is over ``max_size`` bytes."""
    size = entry_size(fields)
    if size > max_size:
        raise WireError(f"entry of {size} bytes exceeds the limit of {max_size} bytes")


# --------------------------------------------------------------------------
# Helpers


def _fields(kind: bytes, data: bytes) -> dict[bytes, bytes]:
    return {_VERSION_FIELD: _VERSION_BYTES, _KIND_FIELD: kind, _DATA_FIELD: data}


def _check_message(message: object, what: str) -> None:
    if not isinstance(message, Mapping):
        raise WireError(f"{what} must be a dict, not {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise WireError(f"{what} must have a str 'type' key")


def _check_names(names: Sequence[str]) -> None:
    # A bare str is a Sequence[str] too: reject it rather than split "chan"
    # into four one-letter channel names.
    if isinstance(names, str) or not names or not all(isinstance(n, str) for n in names):
        raise WireError("'to' must be a non-empty sequence of channel names")


def _check_str(value: object, what: str) -> None:
    # encode() refuses what decode() would reject, so a writer never produces
    # an entry its readers dead-letter.
    if not isinstance(value, str):
        raise WireError(f"{what!r} must be a string, not {type(value).__name__}")


def _check_seq(seq: object, what: str = "seq") -> int:
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise WireError(f"{what!r} must be a non-negative integer")
    return seq


def _expect_message(value: object, what: str) -> Message:
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a map, not {type(value).__name__}")
    if not isinstance(value.get("type"), str):
        raise WireError(f"{what} must have a str 'type' key")
    return value


def _expect_str(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise WireError(f"{key!r} must be a string")
    return value


# --------------------------------------------------------------------------
# Layer fast path: split an entry now, decode the body when it is delivered


def split_channel_messages(
    fields: Mapping[bytes, bytes], *, max_size: int = DEFAULT_MAX_SIZE
) -> list[tuple[tuple[str, ...], bytes]]:
    """Validate a channel-message (or bundle) entry and return its ``(to, body)``
    pairs without decoding the bodies.

    The layer demultiplexes one entry to many local recipients and decodes the
    body once per delivery (each receiver gets its own dict), so decoding here
    would be wasted work.

    ``max_size`` bounds each field on its own here: the body is limited like
    any message, and the recipient list of a large group has its own room.

    Raises:
        WireError: the entry is not a well-formed version-1 channel message
            or bundle.
    """
    for name, value in fields.items():
        if len(value) > max_size:
            raise WireError(
                f"field {name!r} of {len(value)} bytes exceeds the limit of {max_size} bytes"
            )
    version = fields.get(_VERSION_FIELD)
    if version != _VERSION_BYTES:
        raise WireError(f"unsupported wire version {version!r} (this reader speaks {VERSION})")
    kind = fields.get(_KIND_FIELD)
    body = fields.get(_DATA_FIELD)
    if kind == BUNDLE_KIND:
        if body is None:
            raise WireError("bundle needs a 'd' field")
        parts = unpack(body, max_size=max_size)
        if not isinstance(parts, list) or not parts:
            raise WireError("bundle 'd' must be a non-empty array")
        out = []
        for part in parts:
            if not (isinstance(part, list) and len(part) == 2 and isinstance(part[1], bytes)):
                raise WireError("bundle parts must be [to, body] pairs")
            out.append((_names(part[0]), part[1]))
        return out
    if kind != ChannelMessage.KIND:
        raise WireError(f"expected a channel message, got kind {kind!r}")
    raw_to = fields.get(_TO_FIELD)
    if raw_to is None or body is None:
        raise WireError("channel message needs 'to' and 'd' fields")
    return [(_names(unpack(raw_to, max_size=max_size)), body)]


def split_channel_message(
    fields: Mapping[bytes, bytes], *, max_size: int = DEFAULT_MAX_SIZE
) -> tuple[tuple[str, ...], bytes]:
    """:func:`split_channel_messages` for an entry that must hold one message.

    Raises:
        WireError: as there, or the entry is a bundle.
    """
    if fields.get(_KIND_FIELD) == BUNDLE_KIND:
        raise WireError(f"expected a channel message, got kind {BUNDLE_KIND!r}")
    ((to, body),) = split_channel_messages(fields, max_size=max_size)
    return to, body


def _names(to: object) -> tuple[str, ...]:
    if not isinstance(to, list) or not to or not all(isinstance(n, str) for n in to):
        raise WireError("'to' must be a non-empty array of strings")
    return tuple(to)


def decode_message(body: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """Decode a message body written by :func:`encode_message`.

    Raises:
        WireError: not msgpack, not a map, or no str ``type``.
    """
    return _expect_message(unpack(body, max_size=max_size), "message")
