"""uvicorn's HTTP protocols with two guards against hostile clients, for ``--http``.

uvicorn bounds neither how long a client may take to send a request's
headers nor how large they may be: with httptools a client may trickle one
header byte at a time forever (slowloris: a few thousand such connections
hold a server's sockets), or send megabytes of headers, which are kept in
memory until the request line and headers are complete. So, per connection:

* ``header_timeout``: the request line and headers must be complete within
  this many seconds of the connection opening or of the request's first
  byte; otherwise the client gets ``408 Request Timeout`` (or, if it sent
  nothing at all, the connection is simply closed) and a log line.
  Between requests uvicorn's own keep-alive timeout applies.
* ``max_header_size``: once more bytes than this have arrived without the
  headers being complete, the client gets ``431 Request Header Fields Too
  Large`` and the connection is closed.

Nothing else changes: the classes below are uvicorn's ``httptools`` and
``h11`` protocols with these checks around ``data_received``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .cork import CorkedTransport, reset_current_cork, set_current_cork

logger = logging.getLogger(__name__)

#: Seconds a refused client's further bytes are read and discarded before closing.
_LINGER = 2.0
_STATUS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeaderGuard:
    """Mixin (before the uvicorn class) enforcing the two limits; see the module doc."""

    header_timeout: float
    max_header_size: int
    transport: asyncio.Transport
    client: tuple[str, int] | None
    cycle: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._discarding = False
        self._arm()  # a connection that never sends a byte is cut too

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # refused: the parser has nothing more to say about this client
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            self._disarm()
            return
        if not self._headers_pending():
            self._header_bytes = 0
            self._disarm()
            return
        # Everything since the request began is still request line and headers.
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_size:
            logger.warning(
                "%s: request headers over %d bytes; answering 431",
                self._peer(),
                self.max_header_size,
            )
            self._refuse(431, b"Request headers too large\n")
        elif self._header_timer is None:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _headers_pending(self) -> bool:
        raise NotImplementedError

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes:
            logger.warning(
                "%s: request headers incomplete after %s s; answering 408",
                self._peer(),
                self.header_timeout,
            )
            self._refuse(408, b"Request headers took too long\n")
        else:
            # Connected and silent since: nothing to answer.
            logger.info("%s: no request within %s s; closing", self._peer(), self.header_timeout)
            self.transport.close()

    def _refuse(self, status: int, body: bytes) -> None:
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            # A response of an earlier (pipelined) request is being written.
            self.transport.close()
            return
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _STATUS[status], len(body), body)
        )
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing now, with the client still sending, would make the kernel
        # answer its next bytes with a reset, which can destroy the response
        # before the client reads it. So: end our side, read and discard
        # what still comes for a moment, then close.
        self.transport.write_eof()
        self._discarding = True
        asyncio.get_running_loop().call_later(_LINGER, self.transport.close)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over the limit."""


class GuardedHttpToolsProtocol(_HeaderGuard, HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and size limit.

    A head that arrives in pieces is measured in ``data_received``; one that
    arrives whole in a single read is measured header by header as the
    parser reports it, and parsing stops at the header that crosses the
    limit (uvicorn then answers, through ``send_400_response``, with our 431).
    """

    _in_headers = False
    _head_size = 0
    _head_over = False

    def _headers_pending(self) -> bool:
        return self._in_headers

    def on_message_begin(self) -> None:
        self._in_headers = True
        self._header_bytes = self._head_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_header_size:
            self._head_over = True
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # The request's writes go through a cork its task can find (see
        # protocol_server/cork.py). uvicorn starts every request here,
        # pipelined ones included; were it renamed, requests would simply
        # run uncorked.
        cork = self.__dict__.get("_cork")
        if cork is None:
            cork = self._cork = CorkedTransport(self.transport)
        cycle.transport = cork
        token = set_current_cork(cork)
        try:
            super()._start_asgi_task(cycle, app)
        finally:
            reset_current_cork(token)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cork = self.__dict__.get("_cork")
        if cork is not None:
            cork.lost()

    def send_400_response(self, msg: str) -> None:
        if not self._head_over:
            super().send_400_response(msg)
            return
        logger.warning(
            "%s: request headers over %d bytes; answering 431", self._peer(), self.max_header_size
        )
        self._refuse(431, b"Request headers too large\n")


class GuardedH11Protocol(_HeaderGuard, H11Protocol):
    """uvicorn's h11 protocol with a header timeout and size limit.

    h11 parses a head only once it is complete, so the size is checked on
    the bytes before h11 sees them: the head is everything up to the first
    blank line of what has arrived since the request began.
    """

    def _headers_pending(self) -> bool:
        # IDLE after data arrived: a request has begun, its head is incomplete.
        return bool(self.conn.their_state is h11.IDLE)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            held = self.conn.trailing_data[0]
            head = bytes(held) + data if held else data
            end = head.find(b"\r\n\r\n")
            if (end + 4 if end >= 0 else len(head)) > self.max_header_size:
                logger.warning(
                    "%s: request headers over %d bytes; answering 431",
                    self._peer(),
                    self.max_header_size,
                )
                self._refuse(431, b"Request headers too large\n")
                return
        super().data_received(data)


_CLASSES: dict[str, type[_HeaderGuard]] = {
    "httptools": GuardedHttpToolsProtocol,
    "h11": GuardedH11Protocol,
}


def uvicorn_http(name: str, *, header_timeout: float, max_header_size: int) -> Any:
    """What to pass to uvicorn's ``http`` setting for ``--http name``, with the limits.

    Another name (one of uvicorn's own) is passed on unchanged, unguarded.
    """
    base = _CLASSES.get(name)
    if base is None:
        return name
    attrs = {"header_timeout": header_timeout, "max_header_size": max_header_size}
    return type(base.__name__, (base,), attrs)
