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
"""

from __future__ import annotations

from typing import Any, Final

CLAIM: Final = "cl.claim"
DROP: Final = "cl.drop"
CREDIT: Final = "cl.credit"
#: Worker to protocol server: the app failed after the response started;
#: cut the connection rather than let a truncated response look complete.
ABORT: Final = "cl.abort"

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
    """Bytes of payload an event carries, as counted by flow control."""
    body = event.get("body") or event.get("bytes")
    if body:
        return len(body)
    text = event.get("text")
    if text:
        return len(text.encode())
    return 0


def make_layer(redis_url: str, prefix: str, *, max_message_size: int) -> Any:
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
    )


#: Undelivered entries a process inbox stream may hold.
RELAY_CAPACITY: Final = 1_000_000
#: Largest body chunk one relay event carries; bigger sends are split.
CHUNK_SIZE: Final = 256 * 1024
