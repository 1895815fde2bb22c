"""Write the sealed-entry vectors of this folder (``python -m tests.vectors.sealed.generate``).

Like ``tests/vectors/generate.py`` it never overwrites a vector: the
committed files are the source of truth (``tests/test_sealing_vectors.py``).
The keys are fixed test keys, never to be used for anything else. Signed
vectors are exact bytes for writers; an encrypted entry has a random salt
and nonce, so its vector is for readers: decrypting ``sealed`` must give
``fields``.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from channels_lite import wire
from channels_lite.sealing import Keyring

HERE = Path(__file__).parent
KEY_1 = "k1:" + base64.b64encode(bytes(range(32))).decode()
KEY_2 = "k2:" + base64.b64encode(bytes(range(100, 132))).decode()

GROUP = wire.channel_message_fields(
    ["specific.ab12!c1", "specific.ab12!c2"],
    wire.encode_message({"type": "chat.message", "text": "hello, room"}),
)
TASK = wire.encode(wire.Task("thumbnails", {"type": "thumb.make", "path": "/img/1.png"}))

VECTORS: dict[str, tuple[str, str, str, str, dict[bytes, bytes]]] = {
    "signed_group_message": (
        "A group_send entry signed with k1 for the stream of its members.",
        "sign", KEY_1, "asgi:ch:specific.ab12!", GROUP,
    ),
    "signed_task_rotation": (
        "A task signed mid-rotation: k2 writes, k1 still reads (keys lists both).",
        "sign", f"{KEY_2},{KEY_1}", "asgi:task:thumbnails", TASK,
    ),
    "encrypted_group_message": (
        "The group entry encrypted with k1 (AES-256-GCM); for readers: open `sealed`.",
        "encrypt", KEY_1, "asgi:ch:specific.ab12!", GROUP,
    ),
}  # fmt: skip


def _hex(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode("ascii"): v.hex() for k, v in fields.items()}


def main() -> int:
    for name, (description, mode, keys, stream, fields) in VECTORS.items():
        path = HERE / f"{name}.json"
        if path.exists():
            continue
        vector: dict[str, Any] = {
            "description": description,
            "mode": mode,
            "keys": keys,
            "stream": stream,
            "fields": _hex(fields),
            "sealed": _hex(Keyring(keys, mode).seal(stream, fields)),
        }
        path.write_text(json.dumps(vector, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
