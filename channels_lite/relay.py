"""The conversation between a protocol server and a worker about one connection.

Rules
=====

* Both sides talk over the channel layer: each side of a connection has a
  process-specific channel (``ps.<server>!<conn>`` on the protocol server,
  ``wk.<worker>!<conn>`` on the worker), so all connections of one process
  share that process's inbox stream and are demultiplexed locally.
* The protocol server offers a :class:`~channels_lite.wire.Connect` on the
  shared connect stream: the scope, the first events, and ``reply_to`` (its
  channel for this connection).
* The worker that takes it sends :data:`CLAIM` naming its own channel, then the
  app's events. The protocol server is the authority: the first claim wins and
  any later claimant gets :data:`DROP`.
* Everything else is an ASGI event, unchanged, plus :data:`CREDIT` for flow
  control: each side may have at most ``window`` bytes of body in flight that
  the other has not yet consumed (written to the socket, or read by the app).
  A slow client slows the app, not Redis memory; the same for uploads.
* Control messages carry ``type`` values in the ``cl.`` namespace, which no
  ASGI event uses.
* Messages a side has ready at once travel as one :data:`BATCH` (a claim, a
  response start and its body: one stream entry, not three), unpacked in
  order by the receiver. Redis's work per request is mostly per entry.
* Bodies travel in pieces of at most :data:`CHUNK_SIZE` bytes, and so do
  WebSocket messages: a larger ``websocket.receive`` or ``websocket.send``
  crosses as several events of the same type, all but the last marked
  :data:`MORE`, which the receiver joins (:class:`Joiner`) before the app or
  the client sees one message. So no relay entry is ever larger than a chunk,
  whatever ``--ws-max-size`` is, and a large message flows under credit.
"""

from __future__ import annotations

from typing import Any, Final

from .exceptions import WireError
from .layer._inbox import OnArrival, Shedding
from .layer._names import RELAY_CAPACITY as RELAY_CAPACITY  # the runtime's name for it
from .wire import decode_message

CLAIM: Final = "cl.claim"
DROP: Final = "cl.drop"
CREDIT: Final = "cl.credit"
#: Worker to protocol server: the app failed after the response started;
#: cut the connection rather than let a truncated response look complete.
ABORT: Final = "cl.abort"

#: Several messages in one, in order: ``{"type": BATCH, "events": [...]}``.
BATCH: Final = "cl.batch"

#: Worker to protocol server: the worker gave up on the connection (its
#: heartbeat lapsed); answer 502 or close 1011 as if the worker had died.
LOST: Final = "cl.lost"

#: To a protocol server's connection channel (the app's ``reply_channel``),
#: from the app, a group or an outside publisher: ``{"type": PUSH, "text": ...}``
#: or ``"bytes"``, written to the WebSocket client as it is. Not a ``cl.``
#: message: it is the public way to reach a socket without its app.
PUSH: Final = "websocket.push"

#: Key on a WebSocket message event that is a part of a larger message.
MORE: Final = "cl.more"

#: Channel-name prefixes of the two sides (``new_channel(prefix)``).
SERVER_CHANNEL_PREFIX: Final = "ps"
WORKER_CHANNEL_PREFIX: Final = "wk"

#: Extensions that can cross a network; ``zerocopysend`` and ``pathsend``
#: hand a file descriptor or path to the local server and cannot.
FORWARDED_EXTENSIONS: Final = ("http.response.trailers", "websocket.http.response")

_SCOPE_KEYS: Final = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
    "subprotocols",
)


def portable_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The parts of a server's scope that mean something in another process.

    ``state`` (the server's lifespan state) and objects the server put there
    for itself stay behind; extensions are limited to the forwarded ones.
    """
    out: dict[str, Any] = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
    extensions = scope.get("extensions") or {}
    out["extensions"] = {name: {} for name in FORWARDED_EXTENSIONS if name in extensions}
    return out


def payload_size(event: dict[str, Any]) -> int:
    """Bytes of payload an event carries, as counted by flow control.

    Only bytes and text count: a control message's ``bytes`` is a number,
    and a malformed event's odd values are no payload.
    """
    body = event.get("body") or event.get("bytes")
    if body and isinstance(body, bytes | bytearray):
        return len(body)
    text = event.get("text")
    if isinstance(text, str) and text:
        return len(text.encode())
    return 0


def count(message: dict[str, Any], key: str) -> int:
    """A non-negative integer field of a control message; 0 if absent or not one.

    Nothing from the wire is trusted: a forged or garbled credit must not end
    the connection with a ``TypeError``, only fail to grant anything.
    """
    value = message.get(key, 0)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def make_layer(
    redis_url: str,
    prefix: str,
    *,
    max_message_size: int,
    keys: str = "",
    seal: str = "sign",
    shedding: Shedding | None = None,
    on_arrival: OnArrival | None = None,
) -> Any:
    """The channel layer a protocol server or worker relays connections over.

    Process streams (``ps.*!``, ``wk.*!``) hold the events of every connection
    of one process, so their capacity is sized for that; what bounds them in
    practice is the per-connection flow-control window.
    """
    from .layer import RedisStreamsChannelLayer

    return RedisStreamsChannelLayer(
        hosts=[redis_url],
        prefix=prefix,
        capacity=100,
        channel_capacity={
            f"{SERVER_CHANNEL_PREFIX}.*": RELAY_CAPACITY,
            f"{WORKER_CHANNEL_PREFIX}.*": RELAY_CAPACITY,
        },
        max_message_size=max_message_size,
        keys=keys,
        seal=seal,
        bundle_sends=True,
        multiplex=True,
        shedding=shedding,
        on_arrival=on_arrival,
    )


#: Largest body chunk one relay event carries; bigger sends are split.
CHUNK_SIZE: Final = 256 * 1024


#: How the type's value appears in a push's msgpack (a 14-byte fixstr).
_PUSH_MARK: Final = b"\xae" + PUSH.encode()
#: Where the mark is looked for: a map written type-first has it at once,
#: and a small one anywhere.
_PUSH_SEARCH: Final = 4096


def as_push(body: bytes) -> dict[str, Any] | None:
    """An encoded channel message, decoded, if it is a :data:`PUSH`; else None.

    Asked of every message a protocol server files and takes, so a look for
    the type's bytes in the first 4 KiB first, and a decode only to confirm.
    A push whose type comes after 4 KiB of other fields is not recognised,
    and so never shed nor written directly (the safe side: it takes the
    ordinary path).
    """
    if body.find(_PUSH_MARK, 0, _PUSH_SEARCH) < 0:
        return None
    try:
        message = decode_message(body)
    except WireError:
        return None
    return message if message.get("type") == PUSH else None


def is_push(body: bytes) -> bool:
    """Whether an encoded channel message is a :data:`PUSH` (what a protocol
    server may shed for a client that has fallen behind); see :func:`as_push`."""
    return as_push(body) is not None


def split_message(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``websocket.receive``/``websocket.send`` event as relay parts of at most a chunk.

    Text is cut between characters (a quarter chunk of them, at most a chunk
    of UTF-8), so every part is valid text on its own.
    """
    data = event.get("bytes")
    if data is not None:
        key, step = "bytes", CHUNK_SIZE
    else:
        key, data, step = "text", event.get("text") or "", CHUNK_SIZE // 4
    if len(data) <= step:
        return [event]
    parts: list[dict[str, Any]] = [
        {"type": event["type"], key: data[i : i + step], MORE: True}
        for i in range(0, len(data), step)
    ]
    del parts[-1][MORE]
    return parts


class Joiner:
    """Joins the parts of WebSocket messages made by :func:`split_message`."""

    def __init__(self) -> None:
        self._parts: list[dict[str, Any]] = []
        #: Payload bytes of the parts held so far.
        self.size = 0

    def add(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Take one event; return the whole message once its last part is in."""
        if not self._parts and MORE not in event:
            return event  # a message in one part, the usual case
        self._parts.append(event)
        self.size += payload_size(event)
        if event.get(MORE):
            return None
        parts, self._parts, self.size = self._parts, [], 0
        if parts[0].get("bytes") is not None:
            return {"type": event["type"], "bytes": b"".join(p.get("bytes", b"") for p in parts)}
        return {"type": event["type"], "text": "".join(p.get("text", "") for p in parts)}


def batch(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` as few messages as the chunk size allows: :data:`BATCH` es of
    several events whose payloads add up to at most a chunk, single events
    where a batch would hold one."""
    if len(events) < 2:
        return events
    out: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    size = 0
    for event in events:
        payload = payload_size(event)
        if group and size + payload > CHUNK_SIZE:
            out.append(group[0] if len(group) == 1 else {"type": BATCH, "events": group})
            group, size = [], 0
        group.append(event)
        size += payload
    out.append(group[0] if len(group) == 1 else {"type": BATCH, "events": group})
    return out


def unbatch(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The events in a message: its :data:`BATCH` contents, or itself.

    Nothing from the wire is trusted: a batch entry that is not a message
    (a dict with a string ``type``) is left out, and batches do not nest.
    """
    if message.get("type") != BATCH:
        return [message]
    events = message.get("events")
    if not isinstance(events, list):
        return []
    return [
        event
        for event in events
        if isinstance(event, dict) and isinstance(event.get("type"), str) and event["type"] != BATCH
    ]
