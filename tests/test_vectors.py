"""The wire protocol's test vectors (``tests/vectors/*.json``) against the codec.

Why: docs/wire-protocol.md promises non-Python writers exact bytes they can
check themselves. Each vector holds an envelope (``input``) and the stream
entry fields it must become (``expected``, hex). The committed files are the
source of truth: a codec change that alters a single byte, or that decodes a
vector to something else, fails here, loudly, instead of silently breaking
every publisher written against the document.

The invalid vectors (``tests/vectors/invalid/*.json``) are the other half of
the contract: entries a reader must refuse. Each must be refused by
``wire.decode`` with a ``WireError`` (never another exception), by the
layer's own read path for ``msg`` entries, and by a real layer reading it
off Redis, which skips it, counts it as malformed and delivers the next
message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from channels_lite import keys, wire
from channels_lite.exceptions import WireError
from channels_lite.layer import RedisStreamsChannelLayer
from tests.vectors._convention import (
    TAGS,
    envelope,
    from_json,
    invalid_vector_files,
    load,
    vector_files,
)

FILES = vector_files()
INVALID = invalid_vector_files()
KINDS = {"msg", "conn", "ev", "task", "dead"}


def expected_fields(vector: dict[str, Any]) -> dict[bytes, bytes]:
    return {k.encode("ascii"): bytes.fromhex(v) for k, v in vector["expected"].items()}


def test_there_are_vectors_for_every_kind() -> None:
    kinds = {load(path)["input"]["kind"] for path in FILES}
    assert kinds == KINDS
    names = {path.stem for path in FILES}
    assert {"channel_message", "group_message_many", "task", "task_retry"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_is_well_formed(path: Path) -> None:
    vector = load(path)
    assert set(vector) == {"description", "input", "expected"}
    assert isinstance(vector["description"], str)
    assert vector["description"]
    assert vector["input"]["kind"] in KINDS
    # Field names in the order writers put them: v, k, (to,) d.
    order = ["v", "k", "to", "d"] if vector["input"]["kind"] == "msg" else ["v", "k", "d"]
    assert list(vector["expected"]) == order
    for value in vector["expected"].values():
        assert value == value.lower()
        assert bytes.fromhex(value).hex() == value


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_expected_bytes_decode_to_the_input(path: Path) -> None:
    vector = load(path)
    decoded = wire.decode(expected_fields(vector))
    assert decoded == envelope(vector["input"])
    assert type(decoded) is type(envelope(vector["input"]))
    assert_same_types(decoded, envelope(vector["input"]))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_input_encodes_to_the_expected_bytes(path: Path) -> None:
    vector = load(path)
    fields = wire.encode(envelope(vector["input"]))
    # Compared as hex, in order: a diff shows the first differing byte.
    assert [(k.decode(), v.hex()) for k, v in fields.items()] == list(vector["expected"].items())


def assert_same_types(a: Any, b: Any) -> None:
    """Equal is not enough: ``1 == 1.0 == True`` and bytes must not come back as str."""
    if hasattr(a, "__dataclass_fields__"):
        for name in a.__dataclass_fields__:
            assert_same_types(getattr(a, name), getattr(b, name))
        return
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_same_types(ka, kb)
            assert_same_types(va, vb)
    elif isinstance(a, list | tuple):
        for va, vb in zip(a, b, strict=True):
            assert_same_types(va, vb)


def test_the_convention_tags() -> None:
    assert from_json({"$bytes": "00ff"}) == b"\x00\xff"
    assert from_json({"$int": "-18446744073709551617"}) == -(2**64) - 1
    assert from_json({"$map": [[{"$bytes": "61"}, [1]]]}) == {b"a": [1]}
    # A tag only counts alone: with other keys it is an ordinary map.
    assert from_json({"$bytes": "00", "other": 1}) == {"$bytes": "00", "other": 1}
    assert set(TAGS) == {"$bytes", "$int", "$datetime", "$map"}
    with pytest.raises(ValueError, match="offset"):
        from_json({"$datetime": "2024-01-01T00:00:00"})


def test_vector_files_are_canonical_json() -> None:
    # Stable formatting keeps diffs of a deliberate protocol change readable.
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n", path


# --------------------------------------------------------------------------
# Invalid vectors: what a reader must refuse


def invalid_entry(vector: dict[str, Any]) -> dict[bytes, bytes]:
    return {k.encode("ascii"): bytes.fromhex(v) for k, v in vector["entry"].items()}


def limit(vector: dict[str, Any]) -> int:
    size: int = vector.get("max_size", wire.DEFAULT_MAX_SIZE)
    return size


def read_as_the_layer_does(fields: dict[bytes, bytes], max_size: int) -> wire.Message:
    """A channel stream's reader: split at arrival, decode the body at delivery."""
    _, body = wire.split_channel_message(fields, max_size=max_size)
    return wire.decode_message(body, max_size=max_size)


def test_invalid_vectors_cover_every_rule() -> None:
    names = {path.stem for path in INVALID}
    assert {
        "not_msgpack", "truncated_payload", "trailing_bytes", "non_utf8_str", "nesting_too_deep",
        "version_2", "version_missing", "kind_unknown", "kind_missing", "payload_missing",
        "task_channel_bin", "task_message_without_type", "task_attempts_negative",
        "msg_to_missing", "msg_to_not_a_list", "msg_to_bin_names", "msg_body_without_type",
        "ext_type_2", "ext_type_1_in_64_bit_range", "ext_type_1_at_uint64_max",
        "timestamp_bad_length", "oversized_entry", "oversized_msg_body",
    } <= names  # fmt: skip
    kinds = {load(path)["entry"].get("k") for path in INVALID}
    assert {bytes.fromhex(k).decode() for k in kinds if k is not None} >= KINDS | {"job"}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_is_well_formed(path: Path) -> None:
    vector = load(path)
    assert set(vector) - {"max_size"} == {"description", "entry", "error", "reason"}
    assert vector["description"]
    assert vector["error"] == "WireError"
    assert vector["reason"]
    assert isinstance(vector.get("max_size", 1), int)
    for name, value in vector["entry"].items():
        assert name.isascii()
        assert value == value.lower()
        assert bytes.fromhex(value).hex() == value


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_is_refused(path: Path) -> None:
    vector = load(path)
    fields = invalid_entry(vector)
    # WireError and nothing else, for the reason the vector gives.
    with pytest.raises(WireError) as caught:
        wire.decode(fields, max_size=limit(vector))
    assert vector["reason"] in str(caught.value)
    with pytest.raises(WireError):
        read_as_the_layer_does(fields, limit(vector))


def test_an_oversized_vector_is_refused_for_its_size_alone() -> None:
    sized = [load(path) for path in INVALID if "max_size" in load(path)]
    assert len(sized) == 2
    for vector in sized:
        fields = invalid_entry(vector)
        one_more = limit(vector) + 1
        if fields.get(b"k") == b"msg":  # limited field by field
            assert max(len(v) for v in fields.values()) == one_more
            read_as_the_layer_does(fields, one_more)
        else:  # limited as a whole, field names included
            assert wire.entry_size(fields) == one_more
            wire.decode(fields, max_size=one_more)


@pytest.mark.anyio
async def test_a_layer_skips_invalid_messages_and_delivers_the_next(redis_url: str) -> None:
    vectors = [load(p) for p in INVALID if load(p)["entry"].get("k") == b"msg".hex()]
    assert len(vectors) >= 8
    raw = aioredis.Redis.from_url(redis_url)
    try:
        for i, vector in enumerate(vectors):
            layer = RedisStreamsChannelLayer(hosts=[redis_url], max_message_size=limit(vector))
            try:
                channel = f"inbox{i}"
                stream = keys.channel_stream("asgi", channel)
                await raw.xadd(stream, invalid_entry(vector))  # type: ignore[arg-type]
                await layer.send(channel, {"type": "after", "i": i})
                with anyio.fail_after(5):
                    assert await layer.receive(channel) == {"type": "after", "i": i}
                assert layer.statistics().malformed == 1, vector["description"]
            finally:
                await layer.close()
    finally:
        await raw.aclose()
