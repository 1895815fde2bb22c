"""The cork that lets a response's head and body leave in one write (protocol_server/cork.py).

Real sockets: one end is an asyncio transport wrapped in the cork, the other a
plain non-blocking socket that shows what has actually been written.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from protocol_server.cork import CorkedTransport

pytestmark = pytest.mark.anyio


async def _pair() -> tuple[CorkedTransport, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    return CorkedTransport(transport), peer


async def _read_available(peer: socket.socket) -> bytes:
    await asyncio.sleep(0.05)  # the kernel hands over what was written: a moment
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


async def test_held_writes_leave_together_on_release() -> None:
    cork, peer = await _pair()
    cork.hold()
    cork.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    data = bytearray(b"hello")
    cork.write(data)
    data[:] = b"XXXXX"  # a caller may reuse its buffer once write returns
    assert await _read_available(peer) == b""  # nothing left while held
    cork.release()
    assert await _read_available(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    cork.close()
    peer.close()


async def test_unheld_writes_go_straight_through() -> None:
    cork, peer = await _pair()
    cork.write(b"one")
    assert await _read_available(peer) == b"one"
    cork.release()  # nothing held: nothing written twice
    assert await _read_available(peer) == b""
    cork.close()
    peer.close()


@pytest.mark.parametrize("end", ["close", "write_eof"])
async def test_closing_writes_what_was_held_first(end: str) -> None:
    cork, peer = await _pair()
    cork.hold()
    cork.writelines([b"last ", b"words"])
    getattr(cork, end)()
    assert await _read_available(peer) == b"last words"
    assert await _read_available(peer) == b""  # then the end of the stream
    peer.close()
