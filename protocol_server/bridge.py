"""What HTTP and WebSocket connections share on the protocol server side.

A :class:`Bridge` is one client connection seen from Redis: it offers the
connection to the workers, waits for a claim, and then relays events both
ways with credit-based flow control (see :mod:`channels_lite.relay`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio

from channels_lite import relay, wire
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.queue import WorkQueue

from .config import Config

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class ResponseAborted(Exception):
    """The worker's app failed after the response started.

    Raised out of the gateway so the terminating server closes the client
    connection: a truncated response must not look complete.
    """


@dataclass
class ServerContext:
    """What every connection of one protocol-server process needs."""

    config: Config
    layer: RedisStreamsChannelLayer
    queue: WorkQueue
    server_id: str


class Bridge:
    """One client connection relayed to a worker."""

    def __init__(self, ctx: ServerContext, scope: Message) -> None:
        self.ctx = ctx
        self.scope = scope
        self.layer = ctx.layer
        self.channel = ""
        self.worker = ""
        # Body bytes sent to the worker that it has not yet consumed.
        self.in_flight = 0
        self._credit = anyio.Event()
        # Response bytes written to the client not yet credited to the worker.
        self._written = 0

    async def offer(self, first_events: tuple[Message, ...]) -> str | None:
        """Offer the connection to the workers and wait for a claim.

        Returns the claiming worker's channel, or None when no worker took it
        within ``queue_timeout`` (the offer is then withdrawn, so no worker
        will run it later).
        """
        self.channel = await self.layer.new_channel(relay.SERVER_CHANNEL_PREFIX)
        connect = wire.Connect(
            conn=self.channel,
            reply_to=self.channel,
            scope=relay.portable_scope(self.scope),
            events=first_events,
        )
        fields = wire.encode(connect, max_size=self.layer.max_message_size)
        entry_id = await self.ctx.queue.offer(fields)  # one round trip
        deadline = anyio.current_time() + self.ctx.config.queue_timeout
        while True:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                # Cancellation point: the layer keeps anything popped for us.
                return await self._wait_claim()
            if await self.ctx.queue.cancel(entry_id):
                return None
            # A worker holds the entry: its claim is on the way. Give it one
            # more queue_timeout (its death is covered by reclaim), then give up.
            deadline = anyio.current_time() + self.ctx.config.queue_timeout

    async def _wait_claim(self) -> str:
        while True:
            message = await self.layer.receive(self.channel)
            if message["type"] == relay.CLAIM and isinstance(message.get("channel"), str):
                self.worker = message["channel"]
                return self.worker
            logger.warning("conn %s: %r before any claim; ignored", self.channel, message["type"])

    async def next_from_worker(self) -> Message:
        """The next ASGI event from the worker; control messages are handled here."""
        while True:
            message = await self.layer.receive(self.channel)
            kind = message["type"]
            if kind == relay.CREDIT:
                self.in_flight = max(0, self.in_flight - int(message.get("bytes", 0)))
                self._credit.set()
                self._credit = anyio.Event()
            elif kind == relay.CLAIM:
                # A second worker claims what the first already has: the
                # protocol server is the authority, the first claim won.
                loser = message.get("channel")
                if isinstance(loser, str) and loser != self.worker:
                    await self.layer.send(loser, {"type": relay.DROP})
            elif kind == relay.ABORT:
                raise ResponseAborted(f"conn {self.channel}: the app failed mid-response")
            elif kind.startswith("cl."):
                logger.debug("conn %s: unknown control message %r", self.channel, kind)
            else:
                return message

    async def to_worker(self, event: Message) -> None:
        """Send an event to the worker, waiting while the body window is full."""
        size = relay.payload_size(event)
        while self.in_flight and self.in_flight + size > self.ctx.config.flow_window:
            # Cancellation point: waiting for credit holds nothing.
            await self._credit.wait()
        self.in_flight += size
        await self.layer.send(self.worker, event)

    async def credit_worker(self, written: int, *, final: bool = False) -> None:
        """Tell the worker ``written`` more response bytes reached the socket.

        Credits are batched (a quarter window at a time) to keep the number
        of messages per response small.
        """
        self._written += written
        if self._written and (final or self._written >= self.ctx.config.flow_window // 4):
            amount, self._written = self._written, 0
            await self.layer.send(self.worker, {"type": relay.CREDIT, "bytes": amount})

    def close(self) -> None:
        if self.channel:
            self.layer.forget_channel(self.channel)
