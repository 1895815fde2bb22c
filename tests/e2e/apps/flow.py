"""A plain ASGI 3 app for the flow-control tests: large bodies, both ways.

The bytes are generated on the fly (:func:`data`), so neither the app nor
the test ever holds a whole 100 MB body, except where a test asks for one
send of everything on purpose.

HTTP (the path decides):

* ``/stream?mib=N&chunk=K``: N MiB of :func:`data` in sends of K bytes.
  With ``&id=ID`` the app records after every send how many bytes its
  ``send`` calls have returned for (``progress-ID.json``), and when done.
* ``/single?mib=N``: the same N MiB in one ``send``.
* ``/upload``: reads the body chunk by chunk and answers its size, sha256,
  the number and largest size of the chunks. A slow app with
  ``?rate=R&slow=S``: while it has read less than S bytes, it sleeps after
  each chunk as long as reading it at R bytes/s would take. With ``&id=ID``
  it records after every chunk how many bytes it has read
  (``upload-ID.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio

MiB = 1024 * 1024
_BLOCK = random.Random(11).randbytes(MiB)


def data(offset: int, size: int) -> bytes:
    """Bytes ``[offset, offset + size)`` of an endless deterministic stream.

    Each MiB of the stream is a fixed random block stamped with its own
    index, so a duplicated, lost or reordered MiB changes the digest.
    """
    parts = []
    end = offset + size
    while offset < end:
        unit, start = divmod(offset, MiB)
        stop = min(MiB, start + end - offset)
        block = unit.to_bytes(8, "big") + _BLOCK[8:]
        parts.append(block[start:stop])
        offset += stop - start
    return b"".join(parts)


def whole(size: int) -> bytes:
    """:func:`data` ``[0, size)`` as one bytes object, built without a second copy.

    (``b"".join`` of the parts would briefly hold the body twice; BytesIO
    grows one buffer and hands it over.)
    """
    buffer = io.BytesIO()
    for offset in range(0, size, MiB):
        buffer.write(data(offset, min(MiB, size - offset)))
    return buffer.getvalue()


def _record(name: str, payload: dict[str, Any]) -> None:
    directory = Path(os.environ["E2E_DIR"])
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.replace(directory / f"{name}.json")  # atomic: the test never reads half a file


def _query(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope["query_string"].decode("latin-1"))
    return {key: values[-1] for key, values in parsed.items()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    query = _query(scope)
    if scope["path"] == "/upload":
        await upload(receive, send, query)
        return
    size = int(query.get("mib", 1)) * MiB
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
            ],
        }
    )
    if scope["path"] == "/single":
        await send({"type": "http.response.body", "body": whole(size)})
        return
    chunk = int(query.get("chunk", MiB))
    record = query.get("id")
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        await send({"type": "http.response.body", "body": data(sent, n), "more_body": True})
        sent += n
        if record:
            _record(f"progress-{record}", {"sent": sent, "done": False})
    await send({"type": "http.response.body", "body": b""})
    if record:
        _record(f"progress-{record}", {"sent": sent, "done": True})


async def upload(receive: Any, send: Any, query: dict[str, str]) -> None:
    rate = float(query.get("rate", 0))
    slow = int(query.get("slow", 0))
    record = query.get("id")
    digest = hashlib.sha256()
    size = chunks = largest = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        chunks += 1
        largest = max(largest, len(body))
        if record:
            _record(f"upload-{record}", {"read": size})
        if rate and size <= slow:
            await anyio.sleep(len(body) / rate)
        if not message.get("more_body", False):
            break
    payload = json.dumps(
        {"size": size, "sha256": digest.hexdigest(), "chunks": chunks, "largest": largest}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
