"""The entries of the negative test vectors (``invalid/*.json``), built byte by byte.

Each one is a near miss: a valid entry with one thing wrong, so that a reader
that accepts it has exactly one rule to fix. They are built with plain
``msgpack`` (``wire.pack`` refuses most of them, which is the point) and by
hand where msgpack-python would not write the bytes at all. ``reason`` is a
piece of the message ``channels_lite.wire`` gives: a hint for a human, not
part of the protocol.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack


class Invalid(NamedTuple):
    description: str
    entry: dict[str, bytes]
    reason: str
    max_size: int | None = None


def mp(value: Any) -> bytes:
    """msgpack of ``value`` with the wire's bin/str rules, nothing checked."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def ext(code: int, data: bytes) -> bytes:
    """An ext value in the ``ext 8`` form (any length, even 0)."""
    return b"\xc7" + bytes([len(data)]) + code.to_bytes(1, "big", signed=True) + data


def task(d: bytes, **fields: bytes) -> dict[str, bytes]:
    return {"v": b"1", "k": b"task", **fields, "d": d}


def msg(to: bytes, d: bytes) -> dict[str, bytes]:
    return {"v": b"1", "k": b"msg", "to": to, "d": d}


def in_message(raw_value: bytes) -> bytes:
    """A task payload whose message holds ``raw_value`` (raw msgpack) under key ``x``."""
    head = mp({"channel": "jobs", "message": {"type": "job.run", "x": None}})
    assert head.endswith(b"\xc0")
    return head[:-1] + raw_value


TASK_D = mp({"channel": "jobs", "message": {"type": "job.run"}})
TO = mp(["chat.lobby"])
BODY = mp({"type": "chat.message", "text": "hi"})
SCOPE = {"type": "http", "path": "/"}
EVENT = {"type": "http.request", "body": b"", "more_body": False}
CONN = {"conn": "ps.p1!c1", "reply_to": "ps.p1!c1", "scope": SCOPE, "events": [EVENT]}


def conn(**changes: Any) -> dict[str, bytes]:
    payload = {k: v for k, v in {**CONN, **changes}.items() if v is not ...}
    return {"v": b"1", "k": b"conn", "d": mp(payload)}


def event(**changes: Any) -> dict[str, bytes]:
    payload = {"conn": "ps.p1!c1", "seq": 0, "event": {"type": "websocket.receive", "text": "x"}}
    payload = {k: v for k, v in {**payload, **changes}.items() if v is not ...}
    return {"v": b"1", "k": b"ev", "d": mp(payload)}


def task_payload(**changes: Any) -> bytes:
    payload = {"channel": "jobs", "message": {"type": "job.run"}}
    return mp({k: v for k, v in {**payload, **changes}.items() if v is not ...})


def _oversized_task() -> Invalid:
    entry = task(mp({"channel": "jobs", "message": {"type": "job.run", "pad": "x" * 40}}))
    size = sum(len(k) + len(v) for k, v in entry.items())
    return Invalid(
        "An entry one byte over the reader's limit (`max_size`): field names and values "
        "add up to max_size + 1. Refused before anything is unpacked.",
        entry,
        "exceeds the limit",
        max_size=size - 1,
    )


def _oversized_msg() -> Invalid:
    body = mp({"type": "chat.message", "text": "x" * 40})
    return Invalid(
        "A channel message whose body is one byte over the reader's limit (`max_size`; a "
        "`msg` entry is limited field by field).",
        msg(TO, body),
        "exceeds the limit",
        max_size=len(body) - 1,
    )


INVALID: dict[str, Invalid] = {
    # --- not msgpack ----------------------------------------------------------
    "not_msgpack": Invalid(
        "`d` is not msgpack: 0xc1 is the one byte msgpack never uses.",
        task(b"\xc1"),
        "not a valid msgpack value",
    ),
    "empty_payload": Invalid("`d` is empty.", task(b""), "not a valid msgpack value"),
    "truncated_payload": Invalid(
        "`d` cut short by one byte: the map announces more than it holds.",
        task(TASK_D[:-1]),
        "not a valid msgpack value",
    ),
    "trailing_bytes": Invalid(
        "`d` holds a valid map followed by one more value (nil): a field holds exactly one.",
        task(TASK_D + b"\xc0"),
        "not a valid msgpack value",
    ),
    "nesting_too_deep": Invalid(
        "Maps and arrays nested 1025 deep (`d`'s map, the message map, then 1023 arrays): "
        "a reader may bound nesting, and channels-lite reads at most 1024 levels.",
        task(in_message(b"\x91" * 1023 + b"\xc0")),
        "not a valid msgpack value",
    ),
    "non_utf8_str": Invalid(
        "A msgpack str whose bytes are not UTF-8 (ff fe fd): text must be valid UTF-8.",
        task(in_message(b"\xa3\xff\xfe\xfd")),
        "UnicodeDecodeError",
    ),
    "unhashable_map_key": Invalid(
        "A map whose key is an array: keys must be scalars (normally str).",
        task(in_message(b"\x81\x91\x01\x02")),
        "not a valid msgpack value",
    ),
    # --- ext types ------------------------------------------------------------
    "ext_type_2": Invalid(
        "Ext type 2 in a message: only 1 (big integer) and -1 (timestamp) exist.",
        task(in_message(b"\xd4\x02\x05")),
        "unknown msgpack ext type 2",
    ),
    "ext_type_1_in_64_bit_range": Invalid(
        "Ext type 1 holding 5: an integer that fits 64 bits must be a native msgpack integer.",
        task(in_message(b"\xd4\x01\x05")),
        "ext type 1 used for an integer that fits 64 bits",
    ),
    "ext_type_1_at_uint64_max": Invalid(
        "Ext type 1 holding 2**64 - 1, the largest value that must be native (uint 64).",
        task(in_message(ext(1, (2**64 - 1).to_bytes(9, "big", signed=True)))),
        "ext type 1 used for an integer that fits 64 bits",
    ),
    "ext_type_1_empty": Invalid(
        "Ext type 1 with no bytes: a big integer has at least one.",
        task(in_message(ext(1, b""))),
        "ext type 1",
    ),
    "timestamp_bad_length": Invalid(
        "Ext type -1 (timestamp) of 3 bytes: a timestamp is 4, 8 or 12.",
        task(in_message(ext(-1, b"\x00\x00\x00"))),
        "invalid timestamp",
    ),
    # --- entry fields -----------------------------------------------------------
    "version_2": Invalid(
        "`v` is 2, a version this reader does not speak: rejected, not guessed at.",
        {**task(TASK_D), "v": b"2"},
        "unsupported wire version",
    ),
    "version_missing": Invalid(
        "No `v` field.",
        {k: v for k, v in task(TASK_D).items() if k != "v"},
        "unsupported wire version",
    ),
    "version_as_msgpack_int": Invalid(
        "`v` written as the msgpack integer 1 (byte 01): it is ASCII digits.",
        {**task(TASK_D), "v": b"\x01"},
        "unsupported wire version",
    ),
    "kind_unknown": Invalid(
        "`k` is `job`, a kind this reader does not know.",
        {**task(TASK_D), "k": b"job"},
        "unknown envelope kind",
    ),
    "kind_missing": Invalid(
        "No `k` field.",
        {k: v for k, v in task(TASK_D).items() if k != "k"},
        "unknown envelope kind",
    ),
    "payload_missing": Invalid(
        "No `d` field.", {"v": b"1", "k": b"task"}, "entry has no 'd' field"
    ),
    "payload_not_a_map": Invalid(
        "A task whose `d` is an array, not a map.",
        task(mp(["jobs", {"type": "job.run"}])),
        "'d' must be a map",
    ),
    # --- task ---------------------------------------------------------------------
    "task_channel_missing": Invalid(
        "A task without `channel`.",
        task(task_payload(channel=...)),
        "'channel' must be a string",
    ),
    "task_channel_bin": Invalid(
        "A task whose `channel` is bin, not str: text and bytes never mix.",
        task(task_payload(channel=b"jobs")),
        "'channel' must be a string",
    ),
    "task_message_not_a_map": Invalid(
        "A task whose `message` is a str.",
        task(task_payload(message="job.run")),
        "message must be a map",
    ),
    "task_message_without_type": Invalid(
        "A task whose message has no `type`.",
        task(task_payload(message={"kind": "job.run"})),
        "message must have a str 'type' key",
    ),
    "task_message_type_not_str": Invalid(
        "A task whose message `type` is an integer.",
        task(task_payload(message={"type": 7})),
        "message must have a str 'type' key",
    ),
    "task_attempts_negative": Invalid(
        "A task with `attempts` -1.",
        task(task_payload(attempts=-1)),
        "'attempts' must be a non-negative integer",
    ),
    "task_attempts_bool": Invalid(
        "A task with `attempts` true: a boolean is not a count.",
        task(task_payload(attempts=True)),
        "'attempts' must be a non-negative integer",
    ),
    "task_attempts_float": Invalid(
        "A task with `attempts` 1.0 (float 64): counts are integers.",
        task(task_payload(attempts=1.0)),
        "'attempts' must be a non-negative integer",
    ),
    # --- msg ----------------------------------------------------------------------
    "msg_to_missing": Invalid(
        "A channel message without `to`.",
        {"v": b"1", "k": b"msg", "d": BODY},
        "no 'to' field",
    ),
    "msg_to_empty": Invalid(
        "A channel message whose `to` is an empty array.",
        msg(mp([]), BODY),
        "'to' must be a non-empty array of strings",
    ),
    "msg_to_not_a_list": Invalid(
        "A channel message whose `to` is a str, not an array of str.",
        msg(mp("chat.lobby"), BODY),
        "'to' must be a non-empty array of strings",
    ),
    "msg_to_bin_names": Invalid(
        "A channel message whose `to` holds bin, not str.",
        msg(mp([b"chat.lobby"]), BODY),
        "'to' must be a non-empty array of strings",
    ),
    "msg_to_mixed": Invalid(
        "A channel message whose `to` holds a str and an integer.",
        msg(mp(["chat.lobby", 7]), BODY),
        "'to' must be a non-empty array of strings",
    ),
    "msg_to_not_msgpack": Invalid(
        "A channel message whose `to` is not msgpack.",
        msg(b"\xc1", BODY),
        "not a valid msgpack value",
    ),
    "msg_body_not_a_map": Invalid(
        "A channel message whose body (`d`) is an array.",
        msg(TO, mp([{"type": "chat.message"}])),
        "message must be a map",
    ),
    "msg_body_without_type": Invalid(
        "A channel message whose body has no `type`.",
        msg(TO, mp({"text": "hi"})),
        "message must have a str 'type' key",
    ),
    # --- conn, ev, dead -----------------------------------------------------------
    "conn_scope_not_a_map": Invalid(
        "A connection whose `scope` is nil.",
        conn(scope=None),
        "scope must be a map",
    ),
    "conn_events_not_an_array": Invalid(
        "A connection whose `events` is a map.",
        conn(events=EVENT),
        "'events' must be an array",
    ),
    "conn_server_not_str": Invalid(
        "A connection whose optional `server` is present but an integer.",
        conn(server=1234),
        "'server' must be a string",
    ),
    "ev_seq_missing": Invalid("An event without `seq`.", event(seq=...), "'seq' must be"),
    "ev_seq_negative": Invalid(
        "An event with `seq` -1.", event(seq=-1), "'seq' must be a non-negative integer"
    ),
    "dead_fields_str": Invalid(
        "A dead letter whose `fields` maps str to str: the original fields are bin to bin.",
        {
            "v": b"1",
            "k": b"dead",
            "d": mp({"stream": "asgi:task:jobs", "id": "1-0", "fields": {"v": "1"}, "error": "e"}),
        },
        "'fields' must be a map of bytes to bytes",
    ),
    # --- size -------------------------------------------------------------------
    "oversized_entry": _oversized_task(),
    "oversized_msg_body": _oversized_msg(),
}
