"""The channel layer's core contract, on both backends.

Why: these are the Channels channel layer spec's promises that every app
relies on (names, messages, FIFO, types, process-specific channels, flush,
close, statistics, size limits). The in-memory backend must behave exactly
like the Redis one, so every test here runs on both.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import anyio
import pytest

from channels_lite import wire
from channels_lite.exceptions import (
    ChannelsLiteError,
    InvalidChannelName,
    InvalidMessage,
    WireError,
)
from channels_lite.layer import LayerStatistics

from ._support import assert_nothing_pending, recv

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
CHANNEL_RE = re.compile(r"^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$")

BAD_NAMES: list[Any] = [
    "",
    "x" * 100,
    "has space",
    "ünïcode",
    "a!b!c",
    "new\nline",
    "slash/name",
    b"bytes.name",
    None,
    42,
]
BAD_GROUP_NAMES: list[Any] = [*BAD_NAMES, "group!bang", "group!"]
BAD_MESSAGES: list[Any] = [
    "just a string",
    ["type", "x"],
    None,
    {"no_type": 1},
    {"type": 1},
    {"type": None},
    {"type": b"bytes.type"},
]


async def test_extensions(layer: Any) -> None:
    assert layer.extensions == ["groups", "flush"]


async def test_send_then_receive(layer: Any) -> None:
    await layer.send("test.basic", {"type": "test.message", "text": "hello"})
    assert await recv(layer, "test.basic") == {"type": "test.message", "text": "hello"}


async def test_receive_blocks_until_a_message_is_sent(layer: Any) -> None:
    got: list[dict[str, Any]] = []

    async def receiver() -> None:
        got.append(await recv(layer, "test.blocking"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        await layer.send("test.blocking", {"type": "test.wakeup"})
    assert got == [{"type": "test.wakeup"}]


async def test_fifo_per_channel(layer: Any) -> None:
    for n in range(60):
        await layer.send("test.fifo", {"type": "test.seq", "n": n})
    assert [(await recv(layer, "test.fifo"))["n"] for _ in range(60)] == list(range(60))


async def test_channels_are_independent(layer: Any) -> None:
    await layer.send("test.first", {"type": "test.m", "to": "first"})
    await layer.send("test.second", {"type": "test.m", "to": "second"})
    assert await recv(layer, "test.second") == {"type": "test.m", "to": "second"}
    assert await recv(layer, "test.first") == {"type": "test.m", "to": "first"}


async def test_value_types_round_trip(layer: Any) -> None:
    message = {
        "type": "test.types",
        "bytes": b"\x00\xff binary \x80",
        "empty_bytes": b"",
        "text": "héllo wörld ✓ 日本",
        "empty_text": "",
        "int": -42,
        "u64": 2**64 - 1,
        "big": 2**100,
        "negative_big": -(2**80),
        "float": 1.5,
        "none": None,
        "bools": [True, False],
        "tuple": (1, (2, b"3")),
        "nested": {"a": {"b": [b"c", {"d": None, "e": "f"}]}},
    }
    await layer.send("test.types", message)
    got = await recv(layer, "test.types")
    assert got == {**message, "tuple": [1, [2, b"3"]]}
    assert type(got["bytes"]) is bytes
    assert type(got["empty_bytes"]) is bytes
    assert type(got["text"]) is str
    assert type(got["tuple"]) is list
    assert type(got["tuple"][1]) is list
    assert got["big"] == 2**100


async def test_received_message_is_not_the_sent_object(layer: Any) -> None:
    message: dict[str, Any] = {"type": "test.copy", "items": [1, 2], "inner": {"k": "v"}}
    await layer.send("test.copy", message)
    message["items"].append(3)
    message["inner"]["k"] = "mutated after send"
    assert await recv(layer, "test.copy") == {
        "type": "test.copy",
        "items": [1, 2],
        "inner": {"k": "v"},
    }


# ---------------------------------------------------------------------------
# Names and messages


async def test_longest_valid_names_work(layer: Any) -> None:
    channel, group = "c" * 99, "g" * 99
    await layer.send(channel, {"type": "test.long"})
    assert await recv(layer, channel) == {"type": "test.long"}
    await layer.group_add(group, channel)
    await layer.group_send(group, {"type": "test.long.group"})
    assert await recv(layer, channel) == {"type": "test.long.group"}


async def test_send_accepts_every_spec_character(layer: Any) -> None:
    channel = "Aa0-_.Zz9"
    await layer.send(channel, {"type": "test.chars"})
    assert await recv(layer, channel) == {"type": "test.chars"}


def _channel_operation(layer: Any, operation: str) -> Any:
    return {
        "send": lambda name: layer.send(name, {"type": "test.m"}),
        "receive": lambda name: layer.receive(name),
        "group_add": lambda name: layer.group_add("test.group", name),
        "group_discard": lambda name: layer.group_discard("test.group", name),
    }[operation]


def _group_operation(layer: Any, operation: str) -> Any:
    return {
        "group_add": lambda name: layer.group_add(name, "test.channel"),
        "group_discard": lambda name: layer.group_discard(name, "test.channel"),
        "group_send": lambda name: layer.group_send(name, {"type": "test.m"}),
    }[operation]


def _message_operation(layer: Any, operation: str) -> Any:
    return {
        "send": lambda message: layer.send("test.invalid", message),
        "group_send": lambda message: layer.group_send("test.group", message),
    }[operation]


@pytest.mark.parametrize("operation", ["send", "receive", "group_add", "group_discard"])
async def test_invalid_channel_names_are_rejected(layer: Any, operation: str) -> None:
    call = _channel_operation(layer, operation)
    for name in BAD_NAMES:
        with anyio.fail_after(2), pytest.raises(InvalidChannelName) as info:
            await call(name)
        assert isinstance(info.value, TypeError)
        assert isinstance(info.value, ChannelsLiteError)


@pytest.mark.parametrize("operation", ["group_add", "group_discard", "group_send"])
async def test_invalid_group_names_are_rejected(layer: Any, operation: str) -> None:
    call = _group_operation(layer, operation)
    for name in BAD_GROUP_NAMES:
        with anyio.fail_after(2), pytest.raises(InvalidChannelName) as info:
            await call(name)
        assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("operation", ["send", "group_send"])
async def test_invalid_messages_are_rejected(layer: Any, operation: str) -> None:
    await layer.group_add("test.group", "test.invalid")
    call = _message_operation(layer, operation)
    for message in BAD_MESSAGES:
        with pytest.raises(InvalidMessage) as info:
            await call(message)
        assert isinstance(info.value, TypeError)
        assert isinstance(info.value, ChannelsLiteError)
    await assert_nothing_pending(layer, "test.invalid")


@pytest.mark.parametrize("operation", ["send", "group_send"])
@pytest.mark.parametrize(
    "value", [object(), {1, 2}, frozenset(), 1j], ids=["object", "set", "frozenset", "complex"]
)
async def test_values_without_wire_form_raise_wire_error(
    layer: Any, operation: str, value: object
) -> None:
    await layer.group_add("test.group", "test.invalid")
    call = _message_operation(layer, operation)
    with pytest.raises(WireError) as info:
        await call({"type": "test.bad", "nested": {"value": value}})
    assert isinstance(info.value, ValueError)
    await assert_nothing_pending(layer, "test.invalid")


# ---------------------------------------------------------------------------
# Process-specific channels


async def test_new_channel_names(make_layer: Any) -> None:
    layer, other = make_layer(), make_layer()
    a, b = await layer.new_channel(), await layer.new_channel()
    custom = await layer.new_channel(prefix="custom.prefix")
    foreign = await other.new_channel()
    assert len({a, b, custom, foreign}) == 4
    for name in (a, b, custom, foreign):
        assert isinstance(name, str)
        assert CHANNEL_RE.match(name), name
        assert len(name) < 100
        assert name.count("!") == 1
        assert not name.endswith("!")
    assert a.startswith("specific.")
    assert custom.startswith("custom.prefix.")
    # One layer, one stream: everything before "!" is shared...
    assert a.split("!")[0] == b.split("!")[0]
    # ...and differs from another layer's (another "process").
    assert a.split("!")[0] != foreign.split("!")[0]


async def test_process_specific_messages_are_routed_to_their_channel(layer: Any) -> None:
    a, b, idle = [await layer.new_channel() for _ in range(3)]
    await layer.send(b, {"type": "test.m", "to": "b", "n": 1})
    await layer.send(a, {"type": "test.m", "to": "a", "n": 1})
    await layer.send(b, {"type": "test.m", "to": "b", "n": 2})
    assert await recv(layer, a) == {"type": "test.m", "to": "a", "n": 1}
    assert await recv(layer, b) == {"type": "test.m", "to": "b", "n": 1}
    assert await recv(layer, b) == {"type": "test.m", "to": "b", "n": 2}
    for channel in (a, b, idle):
        await assert_nothing_pending(layer, channel)


async def test_custom_prefix_channel_round_trips(layer: Any) -> None:
    channel = await layer.new_channel(prefix="websocket.reply")
    await layer.send(channel, {"type": "websocket.send", "text": "hi"})
    assert await recv(layer, channel) == {"type": "websocket.send", "text": "hi"}


# ---------------------------------------------------------------------------
# Size limits


def _message_with_body_size(size: int) -> dict[str, Any]:
    """A message whose encoded body (what ``max_message_size`` limits) is ``size`` bytes."""
    probe = 70_000  # past 64 KiB, so msgpack uses the same bin32 header as ``size``
    overhead = len(wire.encode_message({"type": "test.big", "data": b"x" * probe})) - probe
    message = {"type": "test.big", "data": b"x" * (size - overhead)}
    assert len(wire.encode_message(message)) == size
    return message


async def test_message_of_exactly_max_size_round_trips(layer: Any) -> None:
    message = _message_with_body_size(MiB)
    await layer.send("test.size", message)
    got = await recv(layer, "test.size")
    assert got["data"] == message["data"]


async def test_message_one_byte_over_max_size_is_refused(layer: Any) -> None:
    with pytest.raises(WireError):
        await layer.send("test.size", _message_with_body_size(MiB + 1))
    await layer.group_add("test.size.group", "test.size")
    with pytest.raises(WireError):
        await layer.group_send("test.size.group", _message_with_body_size(MiB + 1))
    await assert_nothing_pending(layer, "test.size")


async def test_raised_max_message_size(make_layer: Any) -> None:
    layer = make_layer(max_message_size=4 * MiB)
    message = {"type": "test.big", "data": bytes(range(256)) * (3 * MiB // 256)}
    await layer.send("test.big", message)
    got = await recv(layer, "test.big")
    assert got["data"] == message["data"]
    specific = await layer.new_channel()
    await layer.send(specific, message)
    assert (await recv(layer, specific))["data"] == message["data"]
    with pytest.raises(WireError):
        await layer.send("test.big", _message_with_body_size(4 * MiB + 1))


async def test_max_size_group_message_to_many_specific_members(make_layer: Any) -> None:
    # One entry carries the body once plus every recipient's name; the names
    # must not push a maximal body over a read-side limit.
    layer = make_layer()
    members = [await layer.new_channel() for _ in range(2000)]
    for channel in members:
        await layer.group_add("test.wide", channel)
    message = _message_with_body_size(MiB)
    await layer.group_send("test.wide", message)
    with anyio.fail_after(30):
        for channel in members:
            got = await layer.receive(channel)
            assert len(got["data"]) == len(message["data"])
    assert layer.statistics().malformed == 0


# ---------------------------------------------------------------------------
# flush, close, statistics


async def test_flush_forgets_messages_and_groups(layer: Any) -> None:
    for n in range(5):
        await layer.send("test.flush", {"type": "test.old", "n": n})
    assert (await recv(layer, "test.flush"))["n"] == 0  # the rest may now sit in a buffer
    specific = await layer.new_channel()
    for n in range(3):
        await layer.send(specific, {"type": "test.old", "n": n})
    assert (await recv(layer, specific))["n"] == 0
    await layer.group_add("test.flush.group", "test.flush.member")

    await layer.flush()

    await assert_nothing_pending(layer, "test.flush")
    await assert_nothing_pending(layer, specific)
    await layer.group_send("test.flush.group", {"type": "test.old"})
    await assert_nothing_pending(layer, "test.flush.member")
    # The layer keeps working after a flush.
    await layer.group_add("test.flush.group", "test.flush.member")
    await layer.group_send("test.flush.group", {"type": "test.new"})
    assert await recv(layer, "test.flush.member") == {"type": "test.new"}


@pytest.mark.parametrize("kind", ["normal", "specific"])
async def test_blocked_receive_survives_flush(layer: Any, kind: str) -> None:
    channel = "test.flush.blocked" if kind == "normal" else await layer.new_channel()
    got: list[dict[str, Any]] = []

    async def receiver() -> None:
        got.append(await recv(layer, channel, within=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()
        await layer.flush()
        await layer.send(channel, {"type": "test.after.flush"})
    assert got == [{"type": "test.after.flush"}]


async def test_close_is_idempotent(layer: Any) -> None:
    await layer.send("test.close", {"type": "test.m"})
    assert await recv(layer, "test.close") == {"type": "test.m"}
    await layer.close()
    await layer.close()


async def test_close_on_unused_layer(make_layer: Any) -> None:
    layer = make_layer()
    await layer.close()
    await layer.close()
    assert layer.statistics().sent == 0


async def test_statistics_count_direct_traffic(make_layer: Any) -> None:
    layer = make_layer(capacity=2)
    assert dataclasses.asdict(layer.statistics()) == dict.fromkeys(
        dataclasses.asdict(layer.statistics()), 0
    )
    await layer.send("test.stats", {"type": "test.m"})
    await layer.send("test.stats", {"type": "test.m"})
    with pytest.raises(ChannelsLiteError):  # ChannelFull
        await layer.send("test.stats", {"type": "test.m"})
    before = layer.statistics()
    await recv(layer, "test.stats")
    await recv(layer, "test.stats")
    after = layer.statistics()

    assert isinstance(after, LayerStatistics)
    assert (before.sent, before.received, before.full) == (2, 0, 1)
    assert (after.sent, after.received, after.full) == (2, 2, 1)
    assert (after.group_sends, after.dropped, after.expired) == (0, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.sent = 99  # type: ignore[misc]


async def test_statistics_count_group_traffic(layer: Any) -> None:
    for member in ("test.stats.a", "test.stats.b"):
        await layer.group_add("test.stats.group", member)
    await layer.group_send("test.stats.group", {"type": "test.m"})
    await layer.group_send("test.stats.empty", {"type": "test.m"})
    await recv(layer, "test.stats.a")
    await recv(layer, "test.stats.b")
    stats = layer.statistics()
    assert stats.group_sends == 2
    assert stats.received == 2
    assert (stats.dropped, stats.expired, stats.full) == (0, 0, 0)
