"""WebSocket on the protocol server: one socket relayed to a worker.

The ``websocket.connect`` event travels with the offer; the worker's app then
accepts (optionally with a subprotocol and headers), denies with a close
(403) or with an HTTP response (the ``websocket.http.response`` extension).
Messages flow both ways under the same byte credit as HTTP bodies, so a
flood from the client waits in uvicorn's bounded queue, not in Redis. The
credit also counts messages: a flood of small (or empty) messages, which
bytes alone would not bound, closes the socket with 1013 once the app is
``ws_max_queue`` messages behind.

Pushes: a ``websocket.push`` message on the connection's channel (the app's
``scope["reply_channel"]``, directly or as a member of a group) is written to
the client as it is, with no worker in between: a broadcast costs one Redis
entry per protocol server and a socket write per client, not a wake-up of
every member's app. A push is dropped (and counted) when the socket is not
accepted yet, or when it is malformed or larger than ``ws_max_size``.

Pushes take no part in flow control (no worker waits for their credit).
While uvicorn waits for a slow client, what arrives for the socket waits in
the layer's buffer for its channel, and there the pushes are shed, the
oldest first, beyond ``ws_max_push_backlog`` messages or ``flow_window``
bytes (the gateway gives its layer that ``Shedding``): the app's events are
bounded by their credit and never shed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from channels_lite.exceptions import BrokerError
from channels_lite.relay import PUSH, Joiner, payload_size, split_message

from .bridge import Bridge, ServerContext, WorkerLost
from .pushes import push_event
from .ws_protocols import FRAME_WRITER

logger = logging.getLogger(__name__)

Message = dict[str, Any]

_DENIAL = "websocket.http.response"


async def handle_websocket(ctx: ServerContext, scope: Message, receive: Any, send: Any) -> None:
    """Serve one WebSocket through a worker."""
    await WebSocketBridge(ctx, scope, receive, send).run()


class WebSocketBridge(Bridge):
    def __init__(self, ctx: ServerContext, scope: Message, receive: Any, send: Any) -> None:
        super().__init__(ctx, scope)
        self.receive = receive
        self.send = send
        self.accepted = False
        self.overloaded = False  # the client ran ws_max_queue messages ahead
        self._joiner = Joiner()  # parts of a large message from the app
        self._worker_told = False  # the worker has (or is being sent) the disconnect
        # Our uvicorn protocol's writer of pre-framed pushes (ws_protocols.py).
        writer = (scope.get("extensions") or {}).get(FRAME_WRITER)
        self._write_frame: Callable[[bytes], bool] | None = (
            writer.get("write") if isinstance(writer, dict) else None
        )

    async def run(self) -> None:
        connect = await self.receive()
        if connect["type"] != "websocket.connect":
            return
        try:
            try:
                worker = await self.offer((connect,))
            except WorkerLost:
                self.lost = True
                worker = ""
            if worker is None:
                await self._deny(503, b"No worker available\n")
                return
            async with anyio.create_task_group() as tg:
                self.relay_scope = tg.cancel_scope
                if self.lost:
                    tg.cancel_scope.cancel()
                tg.start_soon(self._pump_client, tg.cancel_scope)
                await self._pump_worker()
                tg.cancel_scope.cancel()
            if self.overloaded:
                await self._too_far_ahead()
            elif self.lost:
                if self.accepted:
                    await self.send({"type": "websocket.close", "code": 1011})
                else:
                    await self._deny(502, b"Bad Gateway: the worker went away\n")
        finally:
            self.close()

    async def _pump_client(self, relay_scope: anyio.CancelScope) -> None:
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.receive":
                event: Message = {"type": kind}
                if message.get("bytes") is not None:
                    event["bytes"] = message["bytes"]
                else:
                    event["text"] = message.get("text", "")
                for part in split_message(event):
                    if self.queued >= self.ctx.config.ws_max_queue:
                        self.overloaded = True
                        relay_scope.cancel()  # run() closes with 1013
                        return
                    self.queued += 1
                    await self.to_worker(part)
            elif kind == "websocket.disconnect":
                self._worker_told = True
                await self.to_worker(
                    {
                        "type": kind,
                        "code": message.get("code", 1005),
                        "reason": message.get("reason", ""),
                    }
                )
                relay_scope.cancel()  # the socket is gone: nothing more to relay
                return

    async def _pump_worker(self) -> None:
        try:
            await self._relay_to_client()
        except OSError as exc:
            if isinstance(exc, BrokerError):
                raise  # Redis, not the client
            # The client left while a send waited for its socket (uvicorn's
            # ClientDisconnected): as when the reader hears it, the app must
            # learn it, even if the reader is cancelled before it can say so.
            logger.debug("conn %s: the client left mid-send: %s", self.channel, exc)
            if not self._worker_told:
                self._worker_told = True
                gone = {"type": "websocket.disconnect", "code": 1006, "reason": ""}
                await self.layer.send(self.worker, gone)

    async def _relay_to_client(self) -> None:
        while True:
            message = await self.next_from_worker()
            kind = message["type"]
            if kind in ("websocket.accept", "websocket.http.response.start"):
                self.accepted = kind == "websocket.accept"
                await self.send(message)
                if self.accepted and self._write_frame is not None:
                    self.ctx.direct.sockets[self.channel] = self
            elif kind == "websocket.send":
                size = payload_size(message)
                if self._joiner.size + size > self.ctx.config.ws_max_size:
                    await self._too_big()
                    return
                whole = self._joiner.add(message)
                if whole is not None:
                    await self.send(whole)
                # Parts are credited as they arrive: the message is held here
                # whole anyway (bounded by ws_max_size), and a message larger
                # than the window must not wait for credit that never comes.
                await self.credit_worker(size)
            elif kind == PUSH:
                await self._push(message)
            elif kind == "websocket.close":
                await self.send(message)
                return
            elif kind == "websocket.http.response.body":
                await self.send(message)
                if not message.get("more_body", False):
                    return
            else:
                logger.warning("conn %s: unexpected %r from worker; ignored", self.channel, kind)

    async def _push(self, message: Message) -> None:
        """Write a push to the client, or drop it (counted) if it cannot go."""
        event, why = push_event(message, self.ctx.config.ws_max_size)
        if event is None:
            self.ctx.push_dropped(self.channel, why)
        elif not self.accepted:
            self.ctx.push_dropped(self.channel, "the socket is not accepted yet")
        else:
            # Cancellation point: uvicorn waits while the client's socket is full.
            await self.send(event)
            self.ctx.pushes_written += 1

    def write_direct(self, frame: bytes) -> bool:
        """Write a push's frame now, for :class:`DirectPushes`, if that keeps
        the order: this bridge is parked in its receive (all it took is
        written, and no event of a batch is left: it parks only then), and
        the socket is accepted and keeping up. Otherwise the push waits in
        the layer as usual (tests/test_direct_pushes.py)."""
        return (
            self.parked
            and self.accepted
            and self._write_frame is not None
            and self._write_frame(frame)
        )

    def close(self) -> None:
        if self.ctx.direct.sockets.get(self.channel) is self:
            del self.ctx.direct.sockets[self.channel]
        super().close()

    async def _too_big(self) -> None:
        """The app sent a message over ``ws_max_size``: close as for a client's."""
        logger.warning(
            "conn %s: the app sent a WebSocket message over %d bytes; closing with 1009",
            self.channel,
            self.ctx.config.ws_max_size,
        )
        await self.send({"type": "websocket.close", "code": 1009, "reason": "message too big"})
        await self.layer.send(
            self.worker, {"type": "websocket.disconnect", "code": 1009, "reason": ""}
        )

    async def _too_far_ahead(self) -> None:
        """The app is ``ws_max_queue`` messages behind the client: close with 1013."""
        logger.warning(
            "conn %s: the app has not taken %d messages of the client; closing with 1013",
            self.channel,
            self.queued,
        )
        await self.send({"type": "websocket.close", "code": 1013, "reason": "try again later"})
        await self.layer.send(
            self.worker, {"type": "websocket.disconnect", "code": 1013, "reason": ""}
        )

    async def _deny(self, status: int, body: bytes) -> None:
        if _DENIAL in (self.scope.get("extensions") or {}):
            await self.send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await self.send({"type": "websocket.http.response.body", "body": body})
        else:
            await self.send({"type": "websocket.close", "code": 1013})
