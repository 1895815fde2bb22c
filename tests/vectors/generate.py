"""Write the test vectors of this folder from their inputs, with ``channels_lite.wire``.

Valid vectors (``*.json``) come from ``VECTORS`` below, encoded by the codec;
invalid ones (``invalid/*.json``) from ``_invalid.INVALID``, built by hand,
and checked to be refused by the codec before they are written.

Run once per new vector (``python -m tests.vectors.generate``); it never
overwrites a vector that exists, because the committed files, not this
script, are the source of truth: ``tests/test_vectors.py`` fails if the codec
stops producing their bytes. To change a vector on purpose (a protocol
change), delete its file, rerun, and explain the change in
docs/wire-protocol.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from channels_lite import wire
from channels_lite.exceptions import WireError
from tests.vectors._convention import HERE, INVALID_DIR, envelope
from tests.vectors._invalid import INVALID


def b(hex_: str) -> dict[str, str]:
    return {"$bytes": hex_}


def big(n: int) -> dict[str, str]:
    return {"$int": str(n)}


VECTORS: dict[str, tuple[str, dict[str, Any]]] = {
    "channel_message": (
        "A message for one normal channel, as `send` writes it.",
        {
            "kind": "msg",
            "to": ["chat.lobby"],
            "message": {"type": "chat.message", "text": "hi"},
        },
    ),
    "group_message_many": (
        "A group_send entry naming three process-specific members that share the stream "
        "{prefix}:ch:specific.ab12!; nested values.",
        {
            "kind": "msg",
            "to": ["specific.ab12!c1", "specific.ab12!c2", "specific.ab12!c3"],
            "message": {
                "type": "chat.message",
                "room": "lobby",
                "text": "hello, room",
                "meta": {"from": "alice", "tags": ["a", "b"], "n": 3, "ok": True, "none": None},
            },
        },
    ),
    "task": (
        "A fresh task, as `enqueue` writes it: no `attempts` key.",
        {
            "kind": "task",
            "channel": "thumbnails",
            "message": {"type": "thumb.make", "path": "/img/1.png", "size": 256},
        },
    ),
    "task_retry": (
        "A retry written by a worker: `attempts` after `channel` and `message`.",
        {
            "kind": "task",
            "channel": "emails",
            "message": {"type": "email.send", "to": "bob@example.com"},
            "attempts": 2,
        },
    ),
    "connect_http": (
        "A new HTTP connection offered to the workers, with its first body chunk.",
        {
            "kind": "conn",
            "conn": "ps.p1!conn7",
            "reply_to": "ps.p1!conn7",
            "scope": {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/echo",
                "raw_path": b("2f6563686f"),
                "query_string": b("613d31"),
                "root_path": "",
                "headers": [
                    [b("686f7374"), b("6578616d706c652e636f6d")],
                    [b("636f6e74656e742d6c656e677468"), b("35")],
                ],
                "client": ["127.0.0.1", 50000],
                "server": ["127.0.0.1", 8000],
            },
            "events": [{"type": "http.request", "body": b("68656c6c6f"), "more_body": False}],
            "server": "ps-host-1234-ab",
        },
    ),
    "event": (
        "One event of an established connection (response start, seq 0).",
        {
            "kind": "ev",
            "conn": "ps.p1!conn7",
            "seq": 0,
            "event": {
                "type": "http.response.start",
                "status": 200,
                "headers": [[b("636f6e74656e742d74797065"), b("746578742f706c61696e")]],
            },
        },
    ),
    "dead_letter": (
        "A dead letter keeping a garbage entry byte for byte (map of bin to bin).",
        {
            "kind": "dead",
            "stream": "asgi:task:emails",
            "id": "1700000000000-0",
            "fields": {
                "$map": [
                    [b("76"), b("31")],
                    [b("6b"), b("7461736b")],
                    [b("64"), b("c1ff00")],
                ]
            },
            "error": "WireError: not a valid msgpack value",
        },
    ),
    "bigint": (
        "Integers at every msgpack width, both 64-bit edges, and beyond them (ext type 1).",
        {
            "kind": "msg",
            "to": ["numbers"],
            "message": {
                "type": "numbers",
                "small": [0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296],
                "negative": [-1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649],
                "js_unsafe": [big(2**53 + 1), big(-(2**53) - 1)],
                "edges": [big(2**63 - 1), big(2**64 - 1), big(-(2**63))],
                "beyond": [big(2**64), big(-(2**63) - 1), big(2**100), big(-(2**200))],
            },
        },
    ),
    "bytes_and_text": (
        "bin versus str: empty, non-UTF-8 bytes, non-ASCII text, and lengths past each "
        "fixstr / str8 / bin8 boundary.",
        {
            "kind": "msg",
            "to": ["blobs"],
            "message": {
                "type": "blobs",
                "empty_bytes": b(""),
                "empty_text": "",
                "raw": b("00ff80c1"),
                "text": "h\u00e9llo \u2603 \U0001f600",
                "text_32": "x" * 32,
                "text_256": "y" * 256,
                "bytes_256": b("ab" * 256),
                "looks_like_text": b("6869"),
            },
        },
    ),
    "floats_and_nil": (
        "Floats are always float64; booleans and nil.",
        {
            "kind": "msg",
            "to": ["misc"],
            "message": {
                "type": "misc",
                "half": 1.5,
                "whole_float": 2.0,
                "tiny": 1e-300,
                "neg": -0.25,
                "yes": True,
                "no": False,
                "nothing": None,
            },
        },
    ),
    "timestamp": (
        "Timestamps (ext -1) in the three standard widths; millisecond precision so "
        "that JavaScript Dates can produce them too.",
        {
            "kind": "task",
            "channel": "reports",
            "message": {
                "type": "report.build",
                "ts32": {"$datetime": "2024-01-02T03:04:05+00:00"},
                "ts64": {"$datetime": "2024-01-02T03:04:05.678+00:00"},
                "ts96": {"$datetime": "1969-07-20T20:17:40+00:00"},
            },
        },
    ),
}


def write(path: Path, vector: dict[str, Any]) -> None:
    path.write_text(json.dumps(vector, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(HERE)}")


def write_invalid() -> int:
    written = 0
    INVALID_DIR.mkdir(exist_ok=True)
    for name, spec in INVALID.items():
        path = INVALID_DIR / f"{name}.json"
        if path.exists():
            continue
        fields = {k.encode("ascii"): v for k, v in spec.entry.items()}
        limit = spec.max_size if spec.max_size is not None else wire.DEFAULT_MAX_SIZE
        try:
            wire.decode(fields, max_size=limit)
        except WireError as exc:
            if spec.reason not in str(exc):
                raise SystemExit(f"{name}: refused, but for another reason: {exc}") from None
        else:
            raise SystemExit(f"{name}: the codec accepts it; it is not an invalid vector")
        vector: dict[str, Any] = {
            "description": spec.description,
            "entry": {k: v.hex() for k, v in spec.entry.items()},
        }
        if spec.max_size is not None:
            vector["max_size"] = spec.max_size
        vector.update(error="WireError", reason=spec.reason)
        write(path, vector)
        written += 1
    return written


def main() -> int:
    written = write_invalid()
    for name, (description, spec) in VECTORS.items():
        path = HERE / f"{name}.json"
        if path.exists():
            continue
        fields = wire.encode(envelope(spec))
        vector = {
            "description": description,
            "input": spec,
            "expected": {k.decode("ascii"): v.hex() for k, v in fields.items()},
        }
        write(path, vector)
        written += 1
    print(f"{written} vector(s) written; existing ones left alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
