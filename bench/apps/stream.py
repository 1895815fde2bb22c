"""``/?mib=N``: N MiB of ``x`` in 64 KiB sends (the slow-reader benchmark's app)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

MiB = 1024 * 1024
CHUNK = b"x" * 65536


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    size = int(query.get("mib", ["1"])[0]) * MiB
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % size)],
        }
    )
    for _ in range(size // len(CHUNK)):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
