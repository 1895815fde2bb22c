"""One connection's app instance in a worker.

The app gets an ordinary ASGI 3 ``(scope, receive, send)``: ``receive`` yields
the events the protocol server sent with the offer, then those that arrive on
this connection's worker channel; ``send`` relays to the protocol server,
splitting large bodies and waiting for credit so that at most ``flow_window``
bytes are unacknowledged. The app's exceptions stop here: logged, then a 500
(or close 1011), and the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import anyio
import anyio.abc

from channels_lite import relay, wire
from channels_lite.exceptions import BrokerError
from channels_lite.layer import BaseChannelLayer, RedisStreamsChannelLayer

logger = logging.getLogger(__name__)

Message = dict[str, Any]


#: WebSocket messages an app reads before it credits them, even with more waiting.
_MESSAGE_CREDIT_BATCH = 16


class ClientDisconnected(OSError):
    """``send`` on a WebSocket whose client is gone (what uvicorn raises too)."""


class AppConnection:
    """Runs the app for one :class:`~channels_lite.wire.Connect`."""

    def __init__(
        self,
        layer: RedisStreamsChannelLayer,
        app: Any,
        connect: wire.Connect,
        state: dict[str, Any],
        *,
        flow_window: int,
        tasks: anyio.abc.TaskGroup,
        app_layer: BaseChannelLayer | None = None,
        worker_id: str = "",
    ) -> None:
        self.layer = layer
        self.app = app
        self.connect = connect
        self.state = state
        self.window = flow_window
        self.app_layer = app_layer
        self.worker_id = worker_id
        self.kind = str(connect.scope.get("type"))
        self.channel = ""
        self.peer = connect.reply_to
        # Events from the protocol server the app has not read yet, and the
        # event a receive waiting for one parks on.
        self._inbox: deque[Message] = deque()
        self._inbox_ready: anyio.Event | None = None
        self._initial = list(connect.events)
        self._in_flight = 0  # response bytes sent, not yet credited
        # Set when credit arrives; made only when someone waits for it.
        self._credit: anyio.Event | None = None
        self._consumed = 0  # request bytes the app read, not yet credited
        self._consumed_messages = 0  # WebSocket messages (parts) read, not yet credited
        self._started = False  # http.response.start / websocket.accept sent
        self._complete = False  # response finished / socket closed by the app
        self._trailers = False  # the response announced trailers
        self._disconnect: Message | None = None  # the client left (the app has read it)
        self._gone = False  # the client left (the protocol server said so)
        self._closed: Message | None = None  # the disconnect after the app's own close
        self._joiner = relay.Joiner()  # parts of a large WebSocket message
        self._outbox: list[Message] = []  # posted, not yet sent to the protocol server
        # asyncio's: taken without a trip round the loop when free, and
        # without anyio's per-call backend lookup (one per WebSocket message).
        self._flush_lock = asyncio.Lock()
        self._flush_scheduled = False
        self._flushing = 0
        # The worker's task group: the inbox pump and background flushes run
        # there, so a connection needs no task group of its own.
        self._tasks = tasks
        self._app_scope = anyio.CancelScope()  # cancelled on a drop
        self._pump_scope: anyio.CancelScope | None = None  # set once the pump runs

    def _credit_event(self) -> anyio.Event:
        if self._credit is None:
            self._credit = anyio.Event()
        return self._credit

    def _release_credit(self) -> None:
        """Wake whoever waits for credit (or to learn that none will come)."""
        if self._credit is not None:
            self._credit.set()
            self._credit = None

    async def run(self) -> None:
        """Claim the connection and run the app to completion. Never raises app errors."""
        self.channel = await self.layer.new_channel(relay.WORKER_CHANNEL_PREFIX)
        # The first message on the protocol server's channel names ours; the
        # app's events follow it on the same stream, so they cannot overtake.
        self._post({"type": relay.CLAIM, "channel": self.channel, "worker": self.worker_id})
        scope = dict(self.connect.scope)
        scope["state"] = dict(self.state)
        app_channel = ""
        if self.app_layer is not None:
            # The app's way to the channel layer (docs/architecture.md): the
            # layer and a process-specific channel of its own, as a Channels
            # consumer has self.channel_layer and self.channel_name.
            app_channel = await self.app_layer.new_channel()
            scope["channel_layer"] = self.app_layer
            scope["channel_name"] = app_channel
        if self.kind == "websocket":
            # The protocol server's channel for this socket: a websocket.push
            # sent there (or to a group it joined) goes to the client with no
            # app in between (protocol_server/websocket.py).
            scope["reply_channel"] = self.peer
        if self.kind != "http":
            # A WebSocket app always listens; an HTTP app often never needs
            # to hear from the protocol server (its body came with the offer),
            # so its pump starts only when it waits for an event or for credit.
            self._start_pump()
        try:
            with self._app_scope:
                try:
                    await self.app(scope, self.receive, self.send)
                except ClientDisconnected:
                    # A send after the client left, not caught: as uvicorn does,
                    # not an error worth a traceback.
                    logger.debug("conn %s: the app sent to a client that had left", self.peer)
                    self._complete = True
                except BrokerError:
                    raise  # our send failed, not the app: Redis is gone (worker.py logs it)
                except Exception:
                    logger.exception("conn %s: exception in ASGI application", self.peer)
                    await self._after_failure()
                else:
                    await self._after_return()
                if not self._gone:
                    await self._flush()  # nothing posted is left behind
        finally:
            if self._pump_scope is not None:
                self._pump_scope.cancel()
            self.layer.forget_channel(self.channel)
            if app_channel and self.app_layer is not None:
                self.app_layer.forget_channel(app_channel)

    # ------------------------------------------------------------------
    # The app's receive and send

    async def receive(self) -> Message:
        while True:
            message = await self._receive_event()
            if message["type"] != "websocket.receive":
                return message
            # A large message comes in parts; the app gets it whole. Parts
            # taken so far stay in the joiner if this receive is cancelled.
            whole = self._joiner.add(message)
            if whole is not None:
                return whole

    async def _receive_event(self) -> Message:
        if self._initial:
            return self._consume(self._initial.pop(0))
        if self._disconnect is not None:
            return self._disconnect
        if self.kind == "http" and self._complete:
            return {"type": "http.disconnect"}
        if self._closed is not None and not self._inbox:
            # The app closed the socket: what the client had sent before is
            # above; now the disconnect, with the app's code, as uvicorn does.
            return self._consume(self._closed)
        if (self._consumed or self._consumed_messages) and not self._inbox:
            # The app waits for more: credit what it read so the sender can go on.
            await self._send_credit()
        elif self._consumed_messages >= _MESSAGE_CREDIT_BATCH:
            # An app that keeps up with a steady stream never finds its inbox
            # empty: credit now and then anyway, or the protocol server would
            # count it behind (ws_max_queue) and close the socket.
            await self._send_credit()
        if self._outbox and not self._inbox:
            # About to wait for the client: what the app posted must go first
            # (the protocol server needs our claim to send us anything).
            await self._flush()
        while not self._inbox:
            self._start_pump()
            ready = self._inbox_ready = anyio.Event()
            # Cancellation point: nothing is taken from the inbox unless returned.
            await ready.wait()
        return self._consume(self._inbox.popleft())

    def _consume(self, message: Message) -> Message:
        kind = message["type"]
        if kind in ("http.disconnect", "websocket.disconnect"):
            self._disconnect = message
            self._gone = True
        self._consumed += relay.payload_size(message)
        if kind == "websocket.receive":
            self._consumed_messages += 1
        return message

    async def _send_credit(self) -> None:
        await self._emit(self._take_credit())

    def _take_credit(self) -> Message:
        """A credit for everything the app has read since the last one."""
        amount, self._consumed = self._consumed, 0
        messages, self._consumed_messages = self._consumed_messages, 0
        return {"type": relay.CREDIT, "bytes": amount, "messages": messages}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if self._gone:
            if self.kind == "websocket":
                raise ClientDisconnected("the WebSocket client has disconnected")
            return  # HTTP: the client is gone; what the app says is moot
        if self._complete:
            raise RuntimeError(f"ASGI message {kind!r} after the response was complete")
        if kind == "http.response.body":
            await self._send_body(message)
            return
        if kind == "http.response.start":
            self._started = True
            self._trailers = bool(message.get("trailers", False))
            self._post(message)  # goes out with the first body chunk (or soon)
            return
        if kind == "websocket.accept":
            self._started = True
            # At once, not with what follows: once accept() returns, a push
            # the app sends to its reply channel (through another layer, on
            # another connection) must land behind the accept, or the
            # protocol server drops it as early.
            await self._emit(message)
            return
        if kind == "websocket.close":
            self._complete = True
            code = message.get("code", 1000) if self._started else 1006
            reason = (message.get("reason") or "") if self._started else ""
            self._closed = {"type": "websocket.disconnect", "code": code, "reason": reason}
        elif kind == "http.response.trailers":
            self._complete = not message.get("more_trailers", False)
        elif kind == "websocket.send":
            for part in relay.split_message(message):
                await self._wait_credit(relay.payload_size(part))
                if self._gone:
                    raise ClientDisconnected("the WebSocket client has disconnected")
                await self._emit(part)
            return
        elif kind == "websocket.http.response.body":
            self._complete = not message.get("more_body", False)
            if self._complete:
                self._closed = {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        await self._emit(message)

    async def _send_body(self, message: Message) -> None:
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        # Split large bodies: each relay event stays well under the entry limit,
        # and credit is waited for chunk by chunk. Each chunk is cut only when
        # its turn comes: slicing them all up front would copy the whole body
        # at once (a second 100 MB next to the app's own for one big send).
        size = len(body)
        for start in range(0, size, relay.CHUNK_SIZE) or (0,):
            end = start + relay.CHUNK_SIZE
            chunk = body if start == 0 and end >= size else body[start:end]
            last = end >= size
            await self._wait_credit(len(chunk))
            if self._gone:
                return  # the client left while we waited: the rest is moot
            event = {"type": "http.response.body", "body": chunk, "more_body": more or not last}
            await self._emit(event)
        if not more:
            self._complete = not self._trailers

    async def _wait_credit(self, size: int) -> None:
        while not self._gone and self._in_flight and self._in_flight + size > self.window:
            self._start_pump()  # credit comes through it
            # Cancellation point: waiting for the protocol server to write.
            await self._credit_event().wait()
        self._in_flight += size

    # ------------------------------------------------------------------
    # The outbox: what goes to the protocol server, in order, batched

    def _post(self, message: Message) -> None:
        """Queue a message; it leaves with the next flush.

        A claim, a response start or an accept waits for company (the body
        that usually follows at once), so a simple response crosses Redis as
        one call. If the app does not send again before the event loop comes
        round (it awaits something else), the queue is flushed then, from a
        task of its own.
        """
        self._outbox.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_scheduled = False
        if self._outbox and not self._flushing and not self._app_scope.cancel_called:
            self._tasks.start_soon(self._flush_in_background)

    async def _flush_in_background(self) -> None:
        # In the worker's task group: a relay failure must end this
        # connection's app, never the worker.
        try:
            await self._flush()
        except Exception:
            logger.exception("conn %s: relay failed", self.peer)
            self._gone = True
            self._app_scope.cancel()

    async def _emit(self, message: Message) -> None:
        """Queue a message and send everything queued, in one broker call.

        Not through :meth:`_post`: flushed at once, it needs no flush scheduled
        for later (a call_soon per WebSocket message, 7% of a broadcasting
        worker).
        """
        self._outbox.append(message)
        await self._flush()

    async def _flush(self) -> None:
        self._flushing += 1
        try:
            # Serialized: two overlapping broker calls could land out of order.
            async with self._flush_lock:
                if not self._outbox:
                    return
                events, self._outbox = self._outbox, []
                if self.kind == "websocket" and (self._consumed or self._consumed_messages):
                    # What the app has read goes out with what it sends (an
                    # echo, a reply): the credit it would send on its next
                    # receive was one more entry, and one more wake-up of the
                    # protocol server, per message.
                    events.insert(0, self._take_credit())
                messages = relay.batch(events)
                if len(messages) == 1:
                    await self.layer.send(self.peer, messages[0])
                else:
                    await self.layer.send_many([(self.peer, message) for message in messages])
        finally:
            self._flushing -= 1

    def peer_lost(self) -> bool:
        """The protocol server stopped beating: the client is as good as gone.

        The app gets the disconnect a departed client would give it, and any
        send waiting for credit that will never come is released. True if
        this told the app (it had not heard already); the caller logs, once
        for all the connections of a server.
        """
        if self._gone:
            return False
        logger.debug("conn %s: protocol server gone; disconnecting the app", self.peer)
        self._disconnect_app()
        return True

    def _disconnect_app(self) -> None:
        """The client is as good as gone: the app gets its disconnect."""
        if self._gone:
            return
        if self.kind == "http":
            event: Message = {"type": "http.disconnect"}
        else:
            event = {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        self._gone = True
        self._release_credit()
        self._deliver(event)

    def _deliver(self, message: Message) -> None:
        """Queue an event for the app's receive."""
        self._inbox.append(message)
        if self._inbox_ready is not None:
            self._inbox_ready.set()
            self._inbox_ready = None

    # ------------------------------------------------------------------
    # From the protocol server

    def _start_pump(self) -> None:
        if self._pump_scope is None:
            self._pump_scope = anyio.CancelScope()
            self._tasks.start_soon(self._pump_inbox, self._pump_scope)

    async def _pump_inbox(self, pump_scope: anyio.CancelScope) -> None:
        # Cancelled when the connection ends (even before it got here: a
        # scope cancelled before it is entered cancels at the first await).
        with pump_scope:
            try:
                while True:
                    # Cancellation point: the layer keeps what it took for the next call.
                    for message in relay.unbatch(await self.layer.receive(self.channel)):
                        if not self._handle_inbound(message, self._app_scope):
                            return
            except Exception:
                # In the worker's task group: a relay failure must end this
                # connection, never the worker. The app hears the client left.
                logger.exception("conn %s: relay failed", self.peer)
                self._disconnect_app()

    def _handle_inbound(self, message: Message, app_scope: anyio.CancelScope) -> bool:
        """Act on one message from the protocol server; False once dropped."""
        kind = message["type"]
        if kind == relay.CREDIT:
            self._in_flight = max(0, self._in_flight - relay.count(message, "bytes"))
            self._release_credit()
        elif kind == relay.DROP:
            logger.warning("conn %s: claimed by another worker first; dropped", self.peer)
            self._complete = True
            app_scope.cancel()
            return False
        elif kind.startswith("cl."):
            logger.debug("conn %s: unknown control message %r", self.peer, kind)
        else:
            if kind in ("http.disconnect", "websocket.disconnect"):
                # The client is gone whether or not the app reads this:
                # no credit will come, so a send must not wait for it
                # (uvicorn's send fails or does nothing at once, too).
                self._gone = True
                self._release_credit()
            self._deliver(message)
        return True

    # ------------------------------------------------------------------
    # Ending

    async def _after_failure(self) -> None:
        if self._complete or self._gone:
            return
        if self.kind == "http" and not self._started:
            await self._send_error("http.response", 500)
        elif self.kind == "websocket" and not self._started and self._can_deny:
            await self._send_error("websocket.http.response", 500)
        elif self.kind == "websocket":
            # Accepted: 1011 (internal error). Not accepted and no denial
            # extension: a close before accept, which the server turns into 403.
            await self._emit({"type": "websocket.close", "code": 1011, "reason": ""})
        else:
            # The response started: all we can do is cut it short.
            await self._emit({"type": relay.ABORT})
        self._complete = True

    async def _after_return(self) -> None:
        if self._complete or self._gone:
            return
        if self.kind == "http":
            if not self._started:
                logger.error("conn %s: app returned without starting a response", self.peer)
                await self._send_error("http.response", 500)
            else:
                logger.error("conn %s: app returned before completing the response", self.peer)
                await self._emit({"type": relay.ABORT})
        elif self.kind == "websocket":
            # Returning closes the socket: normally if accepted, else 403.
            await self._emit({"type": "websocket.close", "code": 1000, "reason": ""})
        self._complete = True

    @property
    def _can_deny(self) -> bool:
        return "websocket.http.response" in (self.connect.scope.get("extensions") or {})

    async def _send_error(self, prefix: str, status: int) -> None:
        body = b"Internal Server Error\n"
        self._post(
            {
                "type": f"{prefix}.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            },
        )
        await self._emit({"type": f"{prefix}.body", "body": body})
