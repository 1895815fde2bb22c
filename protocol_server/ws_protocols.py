"""Adjustments to uvicorn's WebSocket implementations, chosen by ``--ws``.

``websockets-sansio``: the websockets library answers a Close frame that
arrives in the middle of a fragmented message with its own Close 1002
("incomplete fragmented message"). RFC 6455 allows control frames between
fragments (section 5.4) and requires a Close to be answered with a Close
(section 5.5.1, echoing the code), and the unfinished message can simply be
dropped: the Autobahn|Testsuite (case 7.1.5) expects exactly that, and uvicorn
with wsproto does it. So here the sans-I/O protocol forgets the unfinished
message when a Close arrives, and the closing handshake then runs as usual.

And it offers the gateway a way to write a push framed once for many
sockets (``protocol_server/pushes.py``): the scope's :data:`FRAME_WRITER`
extension, whose ``write`` puts one complete frame on the socket only while
the connection is open and its transport keeps up. Nothing else changes.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol as _UvicornSansIOProtocol,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

#: Scope extension (``{"write": callable}``) to write a pre-framed message.
#: Local to the process: the relay forwards only the extensions it names.
FRAME_WRITER = "channels_lite.frame_writer"


class _ServerProtocol(ServerProtocol):
    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None  # drop the unfinished message, if any
        super().recv_frame(frame)


class WebSocketsSansIOProtocol(_UvicornSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, answering a Close between fragments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keep the protocol object uvicorn configured (extensions, max_size,
        # logger): only its class changes, to add the override above.
        self.conn.__class__ = _ServerProtocol

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # uvicorn answered the upgrade (not a 4xx)
            self.scope["extensions"][FRAME_WRITER] = {"write": self.write_frame}

    def write_frame(self, frame: bytes) -> bool:
        """Write one complete, unmasked data frame; whether it was written.

        Declined unless the app accepted and nobody closed, and unless the
        transport keeps up (uvicorn's ``send`` would wait for it to drain:
        the caller then takes the waiting path, where a slow client's
        messages are bounded). Synchronous, like uvicorn's own writes, so a
        frame never lands inside another.
        """
        if (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
        ):
            self.transport.write(frame)
            return True
        return False


#: ``--ws`` names whose uvicorn implementation is replaced, and by what.
WS_PROTOCOLS: dict[str, str] = {
    "websockets-sansio": f"{__name__}:WebSocketsSansIOProtocol",
}


def uvicorn_ws(name: str) -> str:
    """What to pass to uvicorn's ``ws`` setting for the ``--ws`` ``name``."""
    return WS_PROTOCOLS.get(name, name)
