"""HTTP on the protocol server: one request relayed to a worker.

The first body chunk travels with the connection offer, so a small request
crosses Redis as one entry. The rest of the body follows as ``http.request``
events while the worker grants credit; the response comes back as ASGI
events and each chunk is credited once uvicorn has written it (its ``send``
waits for the socket when the client is slow), so a slow client slows the
app instead of filling Redis.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.lowlevel

from channels_lite import relay

from .bridge import Bridge, ResponseAborted, ServerContext, WorkerLost
from .cork import CorkedTransport, current_cork

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("protocol_server.access")

Message = dict[str, Any]

_TRAILERS = "http.response.trailers"


async def handle_http(ctx: ServerContext, scope: Message, receive: Any, send: Any) -> None:
    """Serve one HTTP request through a worker."""
    await HttpBridge(ctx, scope, receive, send).run()


class HttpBridge(Bridge):
    def __init__(self, ctx: ServerContext, scope: Message, receive: Any, send: Any) -> None:
        super().__init__(ctx, scope)
        self.receive = receive
        self.send = send
        self.body_seen = 0
        self.response_started = False
        self.response_complete = False
        self.status: int | None = None  # for the access log
        self.bytes_sent = 0
        self._listening = False  # a task is reading the client (body, disconnect)
        self.cork: CorkedTransport | None = None  # uvicorn's httptools only

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            self._log_access()

    def _log_access(self) -> None:
        """One uvicorn-style line per request, plus the bytes and the worker."""
        if not access_logger.isEnabledFor(logging.INFO):
            return  # building the line and its fields was 1-2% of a request
        scope = self.scope
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        path = scope.get("path", "")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        access_logger.info(
            '%s - "%s %s HTTP/%s" %s %d bytes, worker %s',
            where,
            scope.get("method", ""),
            path,
            scope.get("http_version", "1.1"),
            self.status if self.status is not None else "-",
            self.bytes_sent,
            self.worker_id or "-",
            extra={
                "client": where,
                "method": scope.get("method", ""),
                "path": path,
                "status": self.status,
                "bytes": self.bytes_sent,
                "worker": self.worker_id or None,
            },
        )

    async def _serve(self) -> None:
        self.cork = current_cork()
        limit = self.ctx.config.max_body_size
        if _content_length(self.scope) > limit:
            await self._error(413, b"Request body too large\n")
            return
        first = await self.receive()
        if first["type"] != "http.request":
            return  # the client left before sending anything
        self.body_seen = len(first.get("body", b""))
        if self.body_seen > limit:
            await self._error(413, b"Request body too large\n")
            return
        try:
            try:
                worker = await self.offer((first,))
            except WorkerLost:
                self.lost = True
                worker = ""
            if worker is None:
                await self._error(503, b"No worker available\n")
                return
            self.in_flight = self.body_seen
            if self.cork is not None and not first.get("more_body", False):
                await self._relay_watched()
            else:
                await self._relay_listening(first)
            if self.lost:
                if self.response_started:
                    raise ResponseAborted(f"conn {self.channel}: the worker died mid-response")
                await self._error(502, b"Bad Gateway: the worker went away\n")
        finally:
            self.close()

    async def _relay_watched(self) -> None:
        """Relay a request whose body is all in, hearing of the client leaving
        from uvicorn's protocol (``CorkedTransport.on_lost``).

        No task reads the client here: with its whole body sent, all that
        receive() could still say is that the client left, and a task per
        request to wait for that (a task group, a spawn, a cancel) was a
        twentieth of the protocol server's time.
        """
        cork = self.cork
        assert cork is not None
        left = False

        def lost() -> None:
            nonlocal left
            left = True
            scope.cancel()  # no response can reach the client now

        with anyio.CancelScope() as scope:
            self.relay_scope = scope
            if self.lost:
                scope.cancel()
            cork.on_lost = lost
            try:
                if cork.closed:
                    lost()  # gone before we got here
                await self._pump_response()
            finally:
                cork.on_lost = None
        if left:
            await self._client_left()  # tells the app, unless it is done

    async def _relay_listening(self, first: Message) -> None:
        """Relay with a task reading the client: the rest of the body, then
        its leaving (any ASGI server, and uvicorn while a body streams in)."""
        async with anyio.create_task_group() as tg:
            self.relay_scope = tg.cancel_scope
            if self.lost:
                tg.cancel_scope.cancel()
            self._listening = True
            if first.get("more_body", False):
                tg.start_soon(self._pump_request)
            else:
                tg.start_soon(self._watch_disconnect)
            await self._pump_response()
            if self._listening:
                # uvicorn ends the listener's receive() as soon as the
                # response is complete, so it is usually done by the next
                # loop turn: cheaper than cancelling it on every request.
                await anyio.lowlevel.checkpoint()
                if self._listening:
                    tg.cancel_scope.cancel()

    async def _pump_request(self) -> None:
        """Forward the rest of the request body, then watch for the client leaving."""
        try:
            await self._forward_body()
        finally:
            self._listening = False

    async def _forward_body(self) -> None:
        limit = self.ctx.config.max_body_size
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                await self._client_left()
                return
            self.body_seen += len(message.get("body", b""))
            if self.body_seen > limit:
                # The app has started: it sees a disconnect; the client a 413.
                await self.layer.send(self.worker, {"type": "http.disconnect"})
                if self.response_started:
                    # Too late for a 413, and the app, told the client left,
                    # will not finish its response: cut the connection.
                    raise ResponseAborted(f"conn {self.channel}: request body over the limit")
                await self._error(413, b"Request body too large\n")
                if self.relay_scope is not None:
                    self.relay_scope.cancel()  # whatever the app answers now is moot
                return
            await self.to_worker(
                {
                    "type": "http.request",
                    "body": message.get("body", b""),
                    "more_body": message.get("more_body", False),
                }
            )
            if not message.get("more_body", False):
                break
        message = await self.receive()
        if message["type"] == "http.disconnect":
            await self._client_left()

    async def _watch_disconnect(self) -> None:
        # uvicorn's receive() returns http.disconnect when the client goes
        # away, or once the response is complete.
        try:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                await self._client_left()
        finally:
            self._listening = False

    async def _client_left(self) -> None:
        # Tell the app, then stop relaying: no response can reach the client
        # now, and the app may well never send one. Not subject to the body
        # window: a disconnect must get through even when the app reads nothing.
        if self.response_complete:
            # uvicorn reports a disconnect as soon as the response is sent;
            # the worker is done with the connection and needs no message.
            return
        if not self.worker:
            # Lost before any claim (taken by a worker that died): there is
            # no one to tell, and relaying is already cancelled.
            return
        await self.layer.send(self.worker, {"type": "http.disconnect"})
        if self.relay_scope is not None:
            self.relay_scope.cancel()

    async def _pump_response(self) -> None:
        # The app may announce trailers (then the response ends with them).
        # An app may announce trailers that this server did not advertise
        # (uvicorn never does; hypercorn only for HTTP/2). Passed on, the
        # announcement would leave hypercorn waiting for trailers it then
        # refuses (the response never ends), and uvicorn would fail on them.
        # So the server sees neither; the client gets the response without.
        advertised = _TRAILERS in (self.scope.get("extensions") or {})
        # A start that arrived with more (its body, in one relay entry) is
        # held and leaves with that body in one write: see cork.py.
        try:
            await self._relay_response(advertised)
        finally:
            if self.cork is not None:
                self.cork.release()

    async def _next(self) -> Message:
        if self.cork is not None and not self._unread:
            self.cork.release()  # about to wait for the worker: nothing may stay held
        return await super()._next()

    async def _relay_response(self, advertised: bool) -> None:
        cork = self.cork
        trailers = False
        while True:
            message = await self.next_from_worker()
            kind = message["type"]
            if kind == "http.response.start":
                self.response_started = True
                self.status = int(message.get("status", 0))
                trailers = bool(message.get("trailers", False))
                if trailers and not advertised:
                    message = {key: value for key, value in message.items() if key != "trailers"}
                if cork is not None and self._unread:
                    cork.hold()  # the next message is in hand: no wait in between
                await self.send(message)
            elif kind == "http.response.body":
                more = bool(message.get("more_body", False))
                # Marked before sending: uvicorn reports the "disconnect" that
                # follows a complete response while send() returns.
                self.response_complete = not more and not trailers
                await self.send(message)
                if cork is not None:
                    cork.release()  # before anything below waits
                self.bytes_sent += len(message.get("body", b""))
                if more:
                    await self.credit_worker(len(message.get("body", b"")))
                elif not trailers:
                    # The last chunk: the worker sends no more body, so it
                    # needs no credit (a round trip saved per response).
                    return
            elif kind == "http.response.trailers":
                self.response_complete = not message.get("more_trailers", False)
                if advertised:
                    await self.send(message)
                if self.response_complete:
                    return
            elif kind == relay.PUSH:
                self.ctx.push_dropped(self.channel, "not a WebSocket")
            else:
                logger.warning("conn %s: unexpected %r from worker; ignored", self.channel, kind)

    async def _error(self, status: int, body: bytes) -> None:
        self.response_started = True
        self.status = status
        self.bytes_sent = len(body)
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    # No "connection: close": uvicorn then reads and discards
                    # the rest of the request body. Closing with unread data
                    # makes the kernel send RST, and a client still sending
                    # (any client with a large body) loses the response.
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body})


def _content_length(scope: Message) -> int:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
