"""The protocol server's adjustment to uvicorn's websockets-sansio implementation.

A Close frame between the fragments of a message (RFC 6455 5.4: control frames
may come between fragments) is answered with a Close echoing its code, as
Autobahn case 7.1.5 expects; websockets alone answers 1002. The end-to-end
check is the Autobahn subset in tests/e2e/test_autobahn.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from protocol_server.ws_protocols import WebSocketsSansIOProtocol, _ServerProtocol, uvicorn_ws


def _from_client(protocol: ServerProtocol, *frames: Frame) -> bytes:
    for frame in frames:
        protocol.receive_data(frame.serialize(mask=True, extensions=[]))
    return b"".join(protocol.data_to_send())


def test_close_between_fragments_is_answered_with_its_code() -> None:
    protocol = _ServerProtocol(state=OPEN)
    sent = _from_client(
        protocol,
        Frame(Opcode.TEXT, b"fragment1", fin=False),
        Frame(Opcode.CLOSE, Close(CloseCode.NORMAL_CLOSURE, "").serialize()),
        Frame(Opcode.CONT, b"fragment2"),  # after the Close: discarded
    )
    assert sent == Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=False, extensions=[])
    assert protocol.close_sent == Close(CloseCode.NORMAL_CLOSURE, "")
    assert [event.opcode for event in protocol.events_received()] == [Opcode.TEXT, Opcode.CLOSE]


def test_everything_else_is_websockets_own() -> None:
    protocol = _ServerProtocol(state=OPEN)
    sent = _from_client(
        protocol,
        Frame(Opcode.TEXT, b"frag", fin=False),
        Frame(Opcode.PING, b"p"),
        Frame(Opcode.CONT, b"ment"),
    )
    assert sent == Frame(Opcode.PONG, b"p").serialize(mask=False, extensions=[])
    events = protocol.events_received()
    assert [event.opcode for event in events] == [Opcode.TEXT, Opcode.PING, Opcode.CONT]
    # A continuation with no message started is still a protocol error.
    protocol = _ServerProtocol(state=OPEN)
    _from_client(protocol, Frame(Opcode.CONT, b"x"))
    assert protocol.close_sent is not None
    assert protocol.close_sent.code == CloseCode.PROTOCOL_ERROR


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise NotImplementedError


def test_uvicorn_gets_the_adjusted_protocol_for_websockets_sansio() -> None:
    assert uvicorn_ws("wsproto") == "wsproto"
    assert uvicorn_ws("websockets") == "websockets"
    config = uvicorn.Config(_app, ws=uvicorn_ws("websockets-sansio"), ws_max_size=12345)
    config.load()
    assert config.ws_protocol_class is WebSocketsSansIOProtocol
    loop = asyncio.new_event_loop()
    try:
        protocol = WebSocketsSansIOProtocol(
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
    finally:
        loop.close()
    assert type(protocol.conn) is _ServerProtocol
    assert protocol.conn.max_message_size == 12345  # what uvicorn configured, kept
