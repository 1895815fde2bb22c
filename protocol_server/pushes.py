"""Pushes written straight to idle sockets, framed once per message.

A broadcast to the sockets of a protocol server arrives as one entry naming
every member channel. Taken the ordinary way, each socket's bridge is woken
to receive its copy, and the WebSocket library frames the same text once per
socket: a task switch, a decode and a framing for each of hundreds of
sockets. Most of the time a socket is idle: its bridge is parked waiting for
its next message, with nothing of its own unwritten. Such a socket can have
the push written the moment the layer reads it (the layer's ``on_arrival``,
called only for a channel with nothing buffered), and every socket of the
entry gets the same frame bytes, built once.

Whatever cannot go that way (a socket busy writing, a client whose socket is
full, a push to a socket not accepted yet, a malformed one) is declined and
takes the ordinary way through the layer's buffer, where it keeps its order,
is shed for a slow client, and is dropped and counted when it cannot be
written.

Frames are written uncompressed, also where permessage-deflate was agreed
(RFC 7692 lets a sender leave any message uncompressed): compressing means a
deflate per socket, the very cost this path is for.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from websockets.exceptions import ProtocolError
from websockets.frames import Frame, Opcode

from channels_lite.relay import as_push, payload_size

logger = logging.getLogger(__name__)

Message = dict[str, Any]


def push_event(message: Message, max_size: int) -> tuple[Message | None, str]:
    """The ``websocket.send`` event a push stands for, or None and why it cannot go.

    Nothing from the wire is trusted: exactly one of ``text`` (a str) and
    ``bytes`` (bytes), and no more than ``max_size`` bytes of it.
    """
    text, data = message.get("text"), message.get("bytes")
    if isinstance(text, str) and data is None:
        event: Message = {"type": "websocket.send", "text": text}
    elif isinstance(data, bytes) and text is None:
        event = {"type": "websocket.send", "bytes": data}
    else:
        return None, "not exactly one of text (str) and bytes"
    if payload_size(event) > max_size:
        return None, f"larger than ws_max_size ({max_size})"
    return event, ""


def data_frame(event: Message) -> bytes:
    """One complete, unmasked, uncompressed WebSocket frame (RFC 6455) for a
    ``websocket.send`` event, as a server writes it.

    Raises:
        ValueError: text that is not encodable as UTF-8 (lone surrogates).
    """
    data = event.get("bytes")
    if data is not None:
        frame = Frame(Opcode.BINARY, data)
    else:
        try:
            frame = Frame(Opcode.TEXT, event["text"].encode())
        except UnicodeEncodeError as exc:
            raise ValueError(f"text not encodable as UTF-8: {exc}") from None
    try:
        return frame.serialize(mask=False)
    except ProtocolError as exc:  # pragma: no cover - a data frame always serializes
        raise ValueError(str(exc)) from None


class DirectSocket(Protocol):
    """A socket's side of the direct path (the WebSocket bridge)."""

    def write_direct(self, frame: bytes) -> bool:
        """Write ``frame`` now if nothing of the socket's own can be overtaken."""
        ...


class DirectPushes:
    """The protocol server's ``on_arrival``: pushes to idle sockets, written at once.

    Accepted sockets register here by channel while they can take frames
    directly. Each entry's body is decoded and framed once, whichever number
    of its channels are on this server (the layer hands over the same body
    object for each channel of one entry, so a one-entry cache by identity
    is enough).
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.sockets: dict[str, DirectSocket] = {}
        #: Pushes written here, not through a bridge (status, tests).
        self.written = 0
        # The last push's body and its frame (at most ws_max_size each). The
        # reference keeps the body alive, so its identity cannot be reused.
        self._body: bytes | None = None
        self._frame: bytes | None = None

    def __call__(self, channel: str, body: bytes) -> bool:
        socket = self.sockets.get(channel)
        if socket is None:
            return False
        if body is self._body:
            frame = self._frame
        else:
            push = as_push(body)
            if push is None:
                return False  # the app's own message (one socket): nothing to keep
            # Kept, also when it cannot be framed (malformed, too large), so
            # that is found out once per entry, not once per socket.
            frame = self._framed(push)
            self._body, self._frame = body, frame
        if frame is None or not socket.write_direct(frame):
            return False
        self.written += 1
        return True

    def _framed(self, push: Message) -> bytes | None:
        """The frame for a valid push; None for an invalid one, which the
        ordinary path drops and counts."""
        event, _ = push_event(push, self.max_size)
        if event is None:
            return None
        try:
            return data_frame(event)
        except ValueError:
            return None
