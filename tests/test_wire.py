"""Tests for ``channels_lite.wire`` as pure byte round trips (the h11 model).

Why: the codec is the contract between processes (and with non-Python
publishers), and ``decode`` faces untrusted bytes. So we check two things
exhaustively rather than by example: everything encodable comes back with the
same value *and the same type*, and nothing malformed raises anything but
``WireError``. No Redis is involved; the codec is sans-IO.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels_lite import wire
from channels_lite.exceptions import ChannelsLiteError, WireError

# --------------------------------------------------------------------------
# Strategies and helpers

EDGE_INTS = [
    0, 1, -1, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**63, 2**64 - 1,
    2**64, -(2**63) - 1, 2**64 + 1, 2**127, -(2**127), 10**40, -(10**40), 2**1000,
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.sampled_from(EDGE_INTS),
    st.floats(),  # NaN and both infinities included; see assert_same
    st.text(),
    st.binary(),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    )


values = st.recursive(scalars, _containers, max_leaves=25)

messages = st.builds(
    lambda type_, rest: {**rest, "type": type_},
    st.text(max_size=30),
    st.dictionaries(st.text(max_size=8), values, max_size=5),
)
names = st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5).map(tuple)


def normalize(value: Any) -> Any:
    """What a value looks like after a round trip: tuples become lists."""
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def assert_same(actual: Any, expected: Any, path: str = "$") -> None:
    """Equality that also demands identical types (True is not 1, b"" is not "")."""
    assert type(actual) is type(expected), f"{path}: {type(actual)} is not {type(expected)}"
    if isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(actual), path
        else:
            assert actual == expected, path
            assert math.copysign(1, actual) == math.copysign(1, expected), f"{path}: sign of 0"
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: keys or their order differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    else:
        assert actual == expected, path


def roundtrip(envelope: wire.Envelope, **kwargs: Any) -> wire.Envelope:
    fields = wire.encode(envelope, **kwargs)
    assert all(type(k) is bytes and type(v) is bytes for k, v in fields.items())
    return wire.decode(fields, **kwargs)


def expect_wire_error(fn: Callable[[Any], object], data: Any) -> None:
    """Call ``fn(data)``; success or WireError are fine, anything else fails with the input."""
    try:
        fn(data)
    except WireError:
        pass
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}: {exc} (not a WireError) for input {data!r}")


# --------------------------------------------------------------------------
# Round trips


@given(values)
def test_value_roundtrip(value: Any) -> None:
    assert_same(wire.unpack(wire.pack(value)), normalize(value))


@given(names, messages)
def test_channel_message_roundtrip(to: tuple[str, ...], message: dict[str, Any]) -> None:
    decoded = roundtrip(wire.ChannelMessage(to=to, message=message))
    assert isinstance(decoded, wire.ChannelMessage)
    assert decoded.to == to
    assert_same(decoded.message, normalize(message))


@given(st.text(), st.text(), messages, st.lists(messages, max_size=3).map(tuple))
def test_connect_roundtrip(
    conn: str, reply_to: str, scope: dict[str, Any], events: tuple[dict[str, Any], ...]
) -> None:
    decoded = roundtrip(wire.Connect(conn=conn, reply_to=reply_to, scope=scope, events=events))
    assert isinstance(decoded, wire.Connect)
    assert (decoded.conn, decoded.reply_to) == (conn, reply_to)
    assert_same(decoded.scope, normalize(scope))
    assert isinstance(decoded.events, tuple)
    assert_same(list(decoded.events), normalize(list(events)))


@given(
    st.text(), st.one_of(st.integers(min_value=0), st.sampled_from([0, 2**64, 2**200])), messages
)
def test_event_roundtrip(conn: str, seq: int, event: dict[str, Any]) -> None:
    decoded = roundtrip(wire.Event(conn=conn, seq=seq, event=event))
    assert isinstance(decoded, wire.Event)
    assert decoded.conn == conn
    assert_same(decoded.seq, seq)
    assert_same(decoded.event, normalize(event))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, 1),
        (0, 0),
        (1.0, 1.0),
        (-0.0, -0.0),
        (math.inf, math.inf),
        (-math.inf, -math.inf),
        (b"", b""),
        ("", ""),
        (b"caf\xc3\xa9", b"caf\xc3\xa9"),
        ("café", "café"),
        (bytearray(b"ab"), b"ab"),  # bytes-like goes out as bin, comes back as bytes
        ((1, (2, 3)), [1, [2, 3]]),
        (2**64, 2**64),
        (-(2**63) - 1, -(2**63) - 1),
        (-(2**5000), -(2**5000)),
        (None, None),
    ],
)
def test_exact_types(value: Any, expected: Any) -> None:
    assert_same(wire.unpack(wire.pack(value)), expected)


def test_nan_roundtrips_as_nan() -> None:
    assert math.isnan(wire.unpack(wire.pack(math.nan)))


def test_aware_datetime_roundtrips_as_utc() -> None:
    # msgpack's timestamp extension (ext -1) is part of the format.
    moment = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    back = wire.unpack(wire.pack(moment))
    assert back == moment
    assert back.tzinfo == dt.UTC


def test_field_layout() -> None:
    """The stream-entry layout that non-Python publishers rely on."""
    msg = wire.encode(wire.ChannelMessage(to=("a", "b!c"), message={"type": "t"}))
    assert msg == {
        b"v": b"1",
        b"k": b"msg",
        b"to": msgpack.packb(["a", "b!c"]),
        b"d": msgpack.packb({"type": "t"}),
    }
    conn = wire.encode(wire.Connect(conn="c1", reply_to="ps!", scope={"type": "http"}))
    assert conn.keys() == {b"v", b"k", b"d"}
    assert conn[b"k"] == b"conn"
    assert msgpack.unpackb(conn[b"d"]) == {
        "conn": "c1",
        "reply_to": "ps!",
        "scope": {"type": "http"},
        "events": [],
    }
    ev = wire.encode(wire.Event(conn="c1", seq=3, event={"type": "http.disconnect"}))
    assert ev[b"k"] == b"ev"
    assert msgpack.unpackb(ev[b"d"]) == {
        "conn": "c1",
        "seq": 3,
        "event": {"type": "http.disconnect"},
    }


def test_bigint_uses_ext_1_big_endian_twos_complement() -> None:
    assert wire.pack(2**64) == msgpack.packb(msgpack.ExtType(1, b"\x01" + b"\x00" * 8))
    assert wire.pack(-(2**63) - 1) == msgpack.packb(msgpack.ExtType(1, b"\xff\x7f" + b"\xff" * 7))
    assert wire.pack(2**64 - 1) == msgpack.packb(2**64 - 1)  # native uint64, no ext


def test_group_send_fast_path_matches_encode() -> None:
    message = {"type": "chat.message", "text": "hi", "raw": b"\x00"}
    body = wire.encode_message(message)
    assert wire.channel_message_fields(["x!1", "x!2"], body) == wire.encode(
        wire.ChannelMessage(to=("x!1", "x!2"), message=message)
    )


# --------------------------------------------------------------------------
# An ASGI-shaped scope

headers = st.lists(
    st.tuples(
        st.sampled_from([b"host", b"cookie", b"x-dup", b"Accept"]) | st.binary(), st.binary()
    ),
    max_size=12,
)


def http_scope(header_list: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/café/ünï",
        "raw_path": b"/caf%C3%A9/%C3%BCn%C3%AF",
        "query_string": b"a=1&a=2&b=%FF",
        "root_path": "",
        "headers": header_list,
        "client": ("203.0.113.7", 54321),
        "server": ("127.0.0.1", 8000),
        "state": {"user_id": 7, "flags": ("x", "y")},
        "extensions": {"http.response.trailers": {}, "http.response.zerocopysend": {}},
    }


@given(headers)
def test_http_scope_roundtrip(header_list: list[tuple[bytes, bytes]]) -> None:
    scope = http_scope(header_list)
    first = {"type": "http.request", "body": b"x" * 100, "more_body": False}
    decoded = roundtrip(wire.Connect(conn="c", reply_to="ps.1!", scope=scope, events=(first,)))
    assert isinstance(decoded, wire.Connect)
    got = decoded.scope
    assert got["headers"] == [[k, v] for k, v in header_list]  # order and duplicates kept
    assert got["client"] == ["203.0.113.7", 54321]
    assert got["server"] == ["127.0.0.1", 8000]
    assert_same(got, normalize(scope))
    assert_same(list(decoded.events), [first])


def test_duplicate_header_names_preserved() -> None:
    header_list = [(b"set-cookie", b"a=1"), (b"host", b"h"), (b"set-cookie", b"b=2")]
    decoded = roundtrip(wire.Connect(conn="c", reply_to="r", scope=http_scope(header_list)))
    assert isinstance(decoded, wire.Connect)
    assert decoded.scope["headers"] == [
        [b"set-cookie", b"a=1"],
        [b"host", b"h"],
        [b"set-cookie", b"b=2"],
    ]


# --------------------------------------------------------------------------
# Fuzz: untrusted bytes raise WireError and nothing else

FIELD_NAMES = [b"v", b"k", b"d", b"to", b"x", b""]
KINDS = [b"msg", b"conn", b"ev", b"", b"MSG", b"\xff"]

# msgpack.ExtType only takes codes 0..127; negative (reserved) codes are
# written by hand with raw_ext below.
ext_types = st.builds(
    msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary(max_size=12)
)


def raw_ext(code: int, data: bytes) -> bytes:
    """msgpack ext 8 with any signed code, including the reserved negative ones."""
    return b"\xc7" + bytes([len(data)]) + code.to_bytes(1, "big", signed=True) + data


def raw_message_with(raw_value: bytes) -> bytes:
    """msgpack of ``{"type": "t", "x": <raw_value>}``."""
    return b"\x82\xa4type\xa1t\xa1x" + raw_value


negative_exts = st.builds(
    lambda code, data: raw_message_with(raw_ext(code, data)),
    st.integers(min_value=-128, max_value=-1),
    st.binary(max_size=16),
)
msgpack_trees = st.recursive(
    st.one_of(scalars, ext_types),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=4)),
            children,
            max_size=4,
        ),
        st.fixed_dictionaries(
            {"type": st.one_of(st.text(max_size=5), st.integers())},
            optional={
                "conn": children,
                "seq": children,
                "reply_to": children,
                "scope": children,
                "events": children,
                "event": children,
            },
        ),
    ),
    max_leaves=15,
)


def raw_msgpack(tree: Any) -> bytes:
    return msgpack.packb(tree, use_bin_type=True, default=_raw_default)  # type: ignore[no-any-return]


def _raw_default(obj: object) -> Any:
    if isinstance(obj, int):  # beyond 64 bits: write it as an opaque ext
        return msgpack.ExtType(1, obj.to_bytes((obj.bit_length() + 8) // 8, "big", signed=True))
    raise TypeError(type(obj).__name__)


# Either a random byte string or msgpack of a random (often almost-valid) tree.
field_values = st.one_of(st.binary(max_size=64), msgpack_trees.map(raw_msgpack), negative_exts)
field_maps = st.one_of(
    st.dictionaries(st.sampled_from(FIELD_NAMES) | st.binary(max_size=3), field_values, max_size=5),
    st.fixed_dictionaries(
        {b"v": st.sampled_from([b"1", b"2", b"01", b""]), b"k": st.sampled_from(KINDS)},
        optional={b"d": field_values, b"to": field_values},
    ),
)

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_unpack_random_bytes(data: bytes) -> None:
    expect_wire_error(wire.unpack, data)


@FUZZ
@given(st.one_of(msgpack_trees.map(raw_msgpack), negative_exts))
def test_fuzz_unpack_random_msgpack(data: bytes) -> None:
    expect_wire_error(wire.unpack, data)


@FUZZ
@given(field_maps)
def test_fuzz_decode_random_fields(fields: dict[bytes, bytes]) -> None:
    expect_wire_error(wire.decode, fields)


def _valid_entries() -> list[dict[bytes, bytes]]:
    return [
        wire.encode(wire.ChannelMessage(to=("a", "b"), message={"type": "t", "x": [1, b"2"]})),
        wire.encode(
            wire.Connect(
                conn="c",
                reply_to="r",
                scope=http_scope([(b"host", b"h")]),
                events=({"type": "http.request", "body": b"hi"},),
            )
        ),
        wire.encode(wire.Event(conn="c", seq=2**70, event={"type": "websocket.send", "text": "é"})),
    ]


def test_fuzz_urandom_and_mutations() -> None:
    """A few thousand rounds of os.urandom: whole values, field values, bit flips."""
    entries = _valid_entries()
    for i in range(3000):
        noise = os.urandom(1 + i % 97)
        expect_wire_error(wire.unpack, noise)
        for kind in (b"msg", b"conn", b"ev"):
            expect_wire_error(wire.decode, {b"v": b"1", b"k": kind, b"d": noise, b"to": noise})
        # Corrupt a valid entry: overwrite a few bytes, or truncate it.
        entry = dict(entries[i % len(entries)])
        name = (b"d", b"to")[i % 2] if b"to" in entry else b"d"
        data = bytearray(entry[name])
        for b in os.urandom(1 + i % 4):
            data[b % len(data)] = os.urandom(1)[0]
        if i % 5 == 0:
            del data[noise[0] % len(data) :]
        entry[name] = bytes(data)
        expect_wire_error(wire.decode, entry)


# --------------------------------------------------------------------------
# Malformed input, each with a clear message

VALID_MSG = wire.encode(wire.ChannelMessage(to=("a",), message={"type": "t"}))
VALID_EV = wire.encode(wire.Event(conn="c", seq=0, event={"type": "t"}))
VALID_CONN = wire.encode(wire.Connect(conn="c", reply_to="r", scope={"type": "http"}))


def _with(base: dict[bytes, bytes], **changes: bytes | None) -> dict[bytes, bytes]:
    fields = dict(base)
    for name, value in changes.items():
        if value is None:
            fields.pop(name.encode(), None)
        else:
            fields[name.encode()] = value
    return fields


def _p(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


OK_EVENT = {"type": "t"}
HTTP = {"type": "http"}
NON_NEG = "'seq' must be a non-negative integer"
BAD_MSGPACK = "not a valid msgpack value"


def _ev(**payload: Any) -> dict[bytes, bytes]:
    """An Event entry whose ``d`` map is exactly ``payload``."""
    return _with(VALID_EV, d=_p(payload))


def _conn(**payload: Any) -> dict[bytes, bytes]:
    """A Connect entry whose ``d`` map is exactly ``payload``."""
    return _with(VALID_CONN, d=_p(payload))


def _msg(data: bytes) -> dict[bytes, bytes]:
    """A channel-message entry whose ``d`` is ``data``."""
    return _with(VALID_MSG, d=data)


def _msg_x(ext: bytes) -> dict[bytes, bytes]:
    """A channel-message entry with ``{"type": "t", "x": <raw ext>}``."""
    return _msg(raw_message_with(ext))


MALFORMED: list[tuple[str, dict[bytes, bytes], str]] = [
    ("not msgpack", _with(VALID_EV, d=b"\xc1"), BAD_MSGPACK),
    ("empty d", _with(VALID_EV, d=b""), BAD_MSGPACK),
    ("truncated", _with(VALID_EV, d=VALID_EV[b"d"][:-1]), BAD_MSGPACK),
    ("trailing garbage", _with(VALID_EV, d=VALID_EV[b"d"] + b"\x00"), BAD_MSGPACK),
    ("unknown version", _with(VALID_EV, v=b"2"), "unsupported wire version b'2'"),
    ("version not ascii 1", _with(VALID_EV, v=b"01"), "unsupported wire version"),
    ("missing version", _with(VALID_EV, v=None), "unsupported wire version None"),
    ("unknown kind", _with(VALID_EV, k=b"nope"), "unknown envelope kind b'nope'"),
    ("missing kind", _with(VALID_EV, k=None), "unknown envelope kind None"),
    ("missing d", _with(VALID_MSG, d=None), "entry has no 'd' field"),
    ("missing to", _with(VALID_MSG, to=None), "channel message has no 'to' field"),
    ("to not a list", _with(VALID_MSG, to=_p("a")), "'to' must be a non-empty array of strings"),
    ("to empty", _with(VALID_MSG, to=_p([])), "'to' must be a non-empty array of strings"),
    ("to non-str", _with(VALID_MSG, to=_p(["a", b"b"])), "'to' must be a non-empty array"),
    ("to int items", _with(VALID_MSG, to=_p([1])), "'to' must be a non-empty array"),
    ("to not msgpack", _with(VALID_MSG, to=b"\xc1"), BAD_MSGPACK),
    ("message not a map", _msg(_p(["type", "t"])), "message must be a map, not list"),
    ("message no type", _msg(_p({"x": 1})), "message must have a str 'type' key"),
    ("message bytes type", _msg(_p({"type": b"t"})), "message must have a str 'type' key"),
    ("d not a map", _with(VALID_EV, d=_p([1])), "'d' must be a map, not list"),
    ("event no type", _ev(conn="c", seq=0, event={}), "event must have a str 'type' key"),
    ("event missing", _ev(conn="c", seq=0), "event must be a map, not NoneType"),
    ("seq negative", _ev(conn="c", seq=-1, event=OK_EVENT), NON_NEG),
    ("seq bool", _ev(conn="c", seq=True, event=OK_EVENT), NON_NEG),
    ("seq str", _ev(conn="c", seq="1", event=OK_EVENT), NON_NEG),
    ("seq float", _ev(conn="c", seq=1.0, event=OK_EVENT), NON_NEG),
    ("seq missing", _ev(conn="c", event=OK_EVENT), NON_NEG),
    ("conn missing", _ev(seq=0, event=OK_EVENT), "'conn' must be a string"),
    ("conn bytes", _conn(conn=b"c", reply_to="r", scope=HTTP), "'conn' must be a string"),
    ("reply_to missing", _conn(conn="c", scope=HTTP), "'reply_to' must be a string"),
    ("scope missing", _conn(conn="c", reply_to="r"), "scope must be a map"),
    ("events not a list", _conn(conn="c", reply_to="r", scope=HTTP, events={}), "'events' must"),
    ("bad event", _conn(conn="c", reply_to="r", scope=HTTP, events=[1]), "event must be a map"),
    ("invalid utf-8", _msg(b"\x81\xa4type\xa2\xff\xfe"), "UnicodeDecodeError"),
    ("invalid utf-8 key", _msg(b"\x81\xa2\xff\xfe\xc0"), "UnicodeDecodeError"),
    ("unknown ext", _msg_x(raw_ext(5, b"x")), "unknown msgpack ext type 5"),
    ("reserved ext", _msg_x(raw_ext(-5, b"abc")), "unknown msgpack ext type -5"),
    ("ext 1 small int", _msg_x(raw_ext(1, b"\x05")), "ext type 1 used for an integer that fits"),
    ("ext 1 empty", _msg_x(raw_ext(1, b"")), "ext type 1"),
    ("bad timestamp", _msg_x(raw_ext(-1, b"abc")), "invalid timestamp"),
    ("unhashable key", _msg(b"\x81\x90\xc0"), BAD_MSGPACK),
    ("deep nesting", _msg(b"\x91" * 100_000 + b"\xc0"), BAD_MSGPACK),
    ("over size", _msg(b"\x00" * wire.DEFAULT_MAX_SIZE), "exceeds the limit of 1048576 bytes"),
]


@pytest.mark.parametrize(
    ("fields", "match"), [(f, m) for _, f, m in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_entry(fields: dict[bytes, bytes], match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.decode(fields)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "incomplete input"),
        (b"\xc1", "FormatError"),
        (b"\xc0\xc0", "ExtraData"),
        (b"\xa2\xff\xfe", "UnicodeDecodeError"),
        (b"\x91" * 5000 + b"\xc0", "StackError"),
        (b"\x00" * 11, "exceeds the limit of 10 bytes"),
    ],
)
def test_malformed_value(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.unpack(data, max_size=10 if len(data) == 11 else wire.DEFAULT_MAX_SIZE)


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _msg_with(value: Any) -> wire.ChannelMessage:
    return wire.ChannelMessage(to=("a",), message={"type": "t", "x": value})


# Deliberately ill-typed: typed Any so that mypy lets the tests build them.
NOT_A_LIST: Any = ["t"]
TO_STR: Any = "abc"
TO_MIXED: Any = ("a", 1)
CONN_BYTES: Any = b"c"
NO_REPLY_TO: Any = None

UNENCODABLE: list[tuple[str, Any, str]] = [
    ("object", _msg_with(object()), "type 'object'"),
    ("set", _msg_with({1, 2}), "type 'set'"),
    ("complex", _msg_with(1j), "type 'complex'"),
    ("naive datetime", _msg_with(dt.datetime(2024, 1, 1)), "type 'datetime'"),
    ("deep nesting", _msg_with(_nested(5000)), "recursion limit"),
    ("no type", wire.ChannelMessage(to=("a",), message={"x": 1}), "must have a str 'type' key"),
    ("not a dict", wire.ChannelMessage(to=("a",), message=NOT_A_LIST), "must be a dict, not list"),
    ("to empty", wire.ChannelMessage(to=(), message={"type": "t"}), "'to' must be a non-empty"),
    ("to str", wire.ChannelMessage(to=TO_STR, message={"type": "t"}), "'to' must be a non-empty"),
    ("to mixed", wire.ChannelMessage(to=TO_MIXED, message={"type": "t"}), "'to' must be"),
    ("seq -1", wire.Event(conn="c", seq=-1, event={"type": "t"}), "'seq' must be a non-negative"),
    ("seq bool", wire.Event(conn="c", seq=True, event={"type": "t"}), "'seq' must be"),
    ("conn bytes", wire.Event(conn=CONN_BYTES, seq=0, event={"type": "t"}), "'conn' must be a str"),
    ("event type", wire.Event(conn="c", seq=0, event={"type": 1}), "event must have a str 'type'"),
    ("reply_to", wire.Connect(conn="c", reply_to=NO_REPLY_TO, scope={"type": "h"}), "'reply_to'"),
    ("bad event", wire.Connect(conn="c", reply_to="r", scope={"type": "h"}, events=({},)), "event"),
    ("not envelope", {"type": "t"}, "not an envelope: dict"),
]


@pytest.mark.parametrize(
    ("envelope", "match"), [(e, m) for _, e, m in UNENCODABLE], ids=[c[0] for c in UNENCODABLE]
)
def test_unencodable(envelope: Any, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.encode(envelope)


@pytest.mark.parametrize("value", [object(), {1, 2}, frozenset(), 1j, _nested(5000), [1, object()]])
def test_pack_unencodable_value(value: Any) -> None:
    with pytest.raises(WireError, match="cannot encode value"):
        wire.pack(value)


# --------------------------------------------------------------------------
# Size limits


def _message_of_entry_size(size: int) -> wire.ChannelMessage:
    """A channel message whose encoded entry is exactly ``size`` bytes (field names included)."""
    base = 100_000  # keep the bytes payload in msgpack bin32, so its header length is fixed

    def make(n: int) -> wire.ChannelMessage:
        return wire.ChannelMessage(to=("chan",), message={"type": "t", "body": b"x" * n})

    overhead = wire.entry_size(wire.encode(make(base), max_size=2**31)) - base
    message = make(size - overhead)
    assert wire.entry_size(wire.encode(message, max_size=2**31)) == size
    return message


def test_exactly_max_size_passes_one_byte_over_fails() -> None:
    limit = wire.DEFAULT_MAX_SIZE
    assert limit == 1024 * 1024
    at_limit = _message_of_entry_size(limit)
    fields = wire.encode(at_limit)
    assert wire.entry_size(fields) == limit
    decoded = wire.decode(fields)
    assert decoded == at_limit

    over = _message_of_entry_size(limit + 1)
    with pytest.raises(WireError, match=f"entry of {limit + 1} bytes exceeds the limit of {limit}"):
        wire.encode(over)
    with pytest.raises(WireError, match=f"entry of {limit + 1} bytes exceeds"):
        wire.decode(wire.encode(over, max_size=limit + 1))


@pytest.mark.parametrize("limit", [200, 4096, 70_000])
def test_custom_max_size(limit: int) -> None:
    small = wire.ChannelMessage(to=("c",), message={"type": "t", "body": b"x" * (limit // 2)})
    wire.decode(wire.encode(small, max_size=limit), max_size=limit)
    big = wire.ChannelMessage(to=("c",), message={"type": "t", "body": b"x" * limit})
    with pytest.raises(WireError, match=f"exceeds the limit of {limit} bytes"):
        wire.encode(big, max_size=limit)
    fields = wire.encode(big, max_size=10 * limit)
    with pytest.raises(WireError, match=f"exceeds the limit of {limit} bytes"):
        wire.decode(fields, max_size=limit)


def test_size_checked_before_parsing() -> None:
    # Garbage over the limit reports the size, not a parse error: no parsing happened.
    fields = {b"v": b"1", b"k": b"msg", b"to": b"\xc1", b"d": b"\xc1" * 300}
    with pytest.raises(WireError, match="exceeds the limit of 100 bytes"):
        wire.decode(fields, max_size=100)


# --------------------------------------------------------------------------
# The exception


def test_wire_error_hierarchy() -> None:
    assert issubclass(WireError, ChannelsLiteError)
    assert issubclass(WireError, ValueError)
    with pytest.raises(ValueError, match="unsupported wire version"):
        wire.decode({})


def test_connect_server_id_round_trips_and_is_optional() -> None:
    scope = {"type": "http", "path": "/"}
    with_server = wire.Connect(conn="c", reply_to="ps.a!c", scope=scope, server="ps-1")
    assert wire.decode(wire.encode(with_server)) == with_server
    without = wire.Connect(conn="c", reply_to="ps.a!c", scope=scope)
    fields = wire.encode(without)
    assert b"server" not in fields[b"d"]  # absent, not an empty string, on the wire
    assert wire.decode(fields).server == ""


def test_connect_server_id_must_be_text() -> None:
    payload = {"conn": "c", "reply_to": "r", "scope": {"type": "http"}, "server": 7}
    fields = {b"v": b"1", b"k": b"conn", b"d": msgpack.packb(payload)}
    with pytest.raises(wire.WireError, match="server"):
        wire.decode(fields)


def test_task_round_trips() -> None:
    task = wire.Task(channel="thumbnails", message={"type": "thumb.make", "id": 7}, attempts=2)
    assert wire.decode(wire.encode(task)) == task
    fresh = wire.Task(channel="thumbnails", message={"type": "thumb.make"})
    assert b"attempts" not in wire.encode(fresh)[b"d"]
    assert wire.decode(wire.encode(fresh)).attempts == 0


def test_task_attempts_must_be_a_count() -> None:
    payload = {"channel": "c", "message": {"type": "t"}, "attempts": -1}
    with pytest.raises(wire.WireError, match="attempts"):
        wire.decode({b"v": b"1", b"k": b"task", b"d": msgpack.packb(payload)})


def test_dead_letter_keeps_the_original_bytes() -> None:
    dead = wire.DeadLetter(
        stream="asgi:task:x", entry_id="1-0", fields={b"v": b"9", b"\xff": b"\x00"}, error="boom"
    )
    assert wire.decode(wire.encode(dead)) == dead
    payload = {"stream": "s", "id": "1-0", "fields": {"v": "text"}, "error": "e"}
    with pytest.raises(wire.WireError, match="fields"):
        wire.decode({b"v": b"1", b"k": b"dead", b"d": msgpack.packb(payload)})


# --------------------------------------------------------------------------
# Bundles: several messages for one process stream in one entry


def test_bundle_round_trips_every_part_in_order() -> None:
    parts = [
        (("ps.a!1",), wire.encode_message({"type": "x", "n": 1})),
        (("ps.a!2", "ps.a!3"), wire.encode_message({"type": "y"})),
    ]
    fields = wire.bundle_fields(parts)
    assert fields[b"k"] == b"msgs"
    assert wire.split_channel_messages(fields) == parts
    with pytest.raises(WireError, match="kind"):
        wire.split_channel_message(fields)  # one-message readers refuse a bundle


def test_a_plain_channel_message_is_a_one_part_list() -> None:
    fields = wire.channel_message_fields(("a",), b"\x81\xa4type\xa1x")
    assert wire.split_channel_messages(fields) == [(("a",), b"\x81\xa4type\xa1x")]


@pytest.mark.parametrize(
    "data",
    [
        wire.pack([]),
        wire.pack({"to": ["a"]}),
        wire.pack([["a", b"x"]]),  # to must be an array
        wire.pack([[["a"], "text, not bin"]]),
        wire.pack([[["a"], b"x", "extra"]]),
        wire.pack([[[], b"x"]]),
        b"\xc1",
    ],
)
def test_a_malformed_bundle_is_refused(data: bytes) -> None:
    fields = {b"v": b"1", b"k": b"msgs", b"d": data}
    with pytest.raises(WireError):
        wire.split_channel_messages(fields)
