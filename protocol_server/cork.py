"""Writes of one response held back and sent to the client as one.

A response that reaches the protocol server whole (the worker's start and
body travel in one relay entry) would otherwise leave as two socket writes,
because uvicorn writes the head when it is sent and the body when that is:
two system calls and two TCP segments for one small response, and the
write is a large part of a protocol server's time per request.

uvicorn gives an ASGI app no way to ask for that, so the httptools protocol
(:mod:`protocol_server.http_protocols`) hands each request's cycle a
:class:`CorkedTransport` in place of the socket's transport and makes it
known to the request's task through :func:`current_cork`. The HTTP bridge
holds the cork while it passes on what it already has in hand and releases
it before it waits for anything; under another server (h11, hypercorn)
there is no cork and nothing changes.

The same object tells the request that its client left (:attr:`on_lost`),
which uvicorn otherwise says only to a task waiting in ``receive()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

_CURRENT: ContextVar[CorkedTransport | None] = ContextVar("channels_lite_cork", default=None)


def current_cork() -> CorkedTransport | None:
    """The cork of the connection whose request this task serves, if any."""
    return _CURRENT.get()


def set_current_cork(cork: CorkedTransport | None) -> Any:
    """Make ``cork`` the current one (for the task about to be created); returns a token."""
    return _CURRENT.set(cork)


def reset_current_cork(token: Any) -> None:
    _CURRENT.reset(token)


class CorkedTransport:
    """A transport whose writes can be held and then written as one.

    Everything but writing and closing is the wrapped transport's own. While
    held, nothing is written: a caller must :meth:`release` before it waits
    for anything (the bridge does, in a ``finally`` too), so holding never
    delays bytes by more than the code between hold and release.
    """

    __slots__ = ("_held", "_transport", "closed", "on_lost")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] | None = None
        #: The client's connection is gone (uvicorn's ``connection_lost``).
        self.closed = False
        #: Called once when it goes, if set: the request being served then
        #: learns of it without a task waiting in ``receive()``.
        self.on_lost: Callable[[], None] | None = None

    def lost(self) -> None:
        """The connection is gone: tell whoever listens."""
        self.closed = True
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Write what was held (one write), and write through from now on."""
        held, self._held = self._held, None
        if held:
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._transport.write(data)
        else:
            # A copy: a caller may reuse a bytearray or memoryview once write returns.
            self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def write_eof(self) -> None:
        self.release()
        self._transport.write_eof()

    def close(self) -> None:
        self.release()  # what the response wrote goes before the close
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
