"""Adjustments to uvicorn's WebSocket implementations, chosen by ``--ws``.

``websockets-sansio``: the websockets library answers a Close frame that
arrives in the middle of a fragmented message with its own Close 1002
("incomplete fragmented message"). RFC 6455 allows control frames between
fragments (section 5.4) and requires a Close to be answered with a Close
(section 5.5.1, echoing the code), and the unfinished message can simply be
dropped: the Autobahn|Testsuite (case 7.1.5) expects exactly that, and uvicorn
with wsproto does it. So here the sans-I/O protocol forgets the unfinished
message when a Close arrives, and the closing handshake then runs as usual.
Nothing else changes.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol as _UvicornSansIOProtocol,
)
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol


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


#: ``--ws`` names whose uvicorn implementation is replaced, and by what.
WS_PROTOCOLS: dict[str, str] = {
    "websockets-sansio": f"{__name__}:WebSocketsSansIOProtocol",
}


def uvicorn_ws(name: str) -> str:
    """What to pass to uvicorn's ``ws`` setting for the ``--ws`` ``name``."""
    return WS_PROTOCOLS.get(name, name)
