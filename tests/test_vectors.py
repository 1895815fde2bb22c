"""The wire protocol's test vectors (``tests/vectors/*.json``) against the codec.

Why: docs/wire-protocol.md promises non-Python writers exact bytes they can
check themselves. Each vector holds an envelope (``input``) and the stream
entry fields it must become (``expected``, hex). The committed files are the
source of truth: a codec change that alters a single byte, or that decodes a
vector to something else, fails here, loudly, instead of silently breaking
every publisher written against the document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from channels_lite import wire
from tests.vectors._convention import TAGS, envelope, from_json, load, vector_files

FILES = vector_files()
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
