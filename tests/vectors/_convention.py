"""The JSON convention of the test vectors (see ``README.md`` here), as Python.

A vector's ``input`` is plain JSON plus four tagged objects for what JSON
cannot say: ``{"$bytes": hex}``, ``{"$int": decimal}``, ``{"$datetime": iso}``
and ``{"$map": [[key, value], ...]}``. :func:`from_json` turns it into the
Python values ``channels_lite.wire`` takes; :func:`envelope` builds the
envelope a vector describes.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from channels_lite import wire

HERE = Path(__file__).resolve().parent
#: The negative vectors: entries a reader must refuse (see README.md here).
INVALID_DIR = HERE / "invalid"
TAGS = ("$bytes", "$int", "$datetime", "$map")


def from_json(value: Any) -> Any:
    """A vector value in the JSON convention to the Python value it stands for."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in TAGS:
            [(tag, body)] = value.items()
            if tag == "$bytes":
                return bytes.fromhex(body)
            if tag == "$int":
                return int(body)
            if tag == "$datetime":
                parsed = dt.datetime.fromisoformat(body)
                if parsed.tzinfo is None:
                    raise ValueError(f"$datetime {body!r} needs an offset")
                return parsed
            return {from_json(k): from_json(v) for k, v in body}
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def envelope(spec: dict[str, Any]) -> wire.Envelope:
    """The envelope a vector's ``input`` describes (``kind`` plus its fields)."""
    data = {k: from_json(v) for k, v in spec.items() if k != "kind"}
    kind = spec["kind"]
    if kind == "msg":
        return wire.ChannelMessage(to=tuple(data["to"]), message=data["message"])
    if kind == "task":
        return wire.Task(
            channel=data["channel"], message=data["message"], attempts=data.get("attempts", 0)
        )
    if kind == "conn":
        return wire.Connect(
            conn=data["conn"],
            reply_to=data["reply_to"],
            scope=data["scope"],
            events=tuple(data["events"]),
            server=data.get("server", ""),
        )
    if kind == "ev":
        return wire.Event(conn=data["conn"], seq=data["seq"], event=data["event"])
    if kind == "dead":
        return wire.DeadLetter(
            stream=data["stream"], entry_id=data["id"], fields=data["fields"], error=data["error"]
        )
    raise ValueError(f"unknown vector kind {kind!r}")


def vector_files() -> list[Path]:
    return sorted(HERE.glob("*.json"))


def invalid_vector_files() -> list[Path]:
    return sorted(INVALID_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector
