"""What HTTP and WebSocket connections share on the protocol server side.

A :class:`Bridge` is one client connection seen from Redis: it offers the
connection to the workers, waits for a claim, and then relays events both
ways with credit-based flow control (see :mod:`channels_lite.relay`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio

from channels_lite import relay, wire
from channels_lite.exceptions import BrokerUnavailable
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.queue import WorkQueue

from .config import Config
from .pushes import DirectPushes

logger = logging.getLogger(__name__)

Message = dict[str, Any]

#: Seconds between two log lines of one kind of flood (refusals, pushes dropped).
_LOG_INTERVAL = 10.0


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
    #: Live bridges by the id of the worker running them, for the liveness watch.
    by_worker: dict[str, set[Bridge]] = field(default_factory=dict)
    #: Since when (anyio clock) offers fail because Redis is unreachable.
    broker_down_since: float | None = None
    #: Connections offered and waiting for a worker's claim (``max_pending``).
    pending: int = 0
    #: Connections refused because ``max_pending`` were waiting.
    rejected: int = 0
    #: Connections workers gave up on (their heartbeat lapsed).
    given_up: int = 0
    #: Pushes not written to their socket (not accepted yet, malformed, too
    #: large, or beyond ``ws_max_push_backlog`` for a slow client).
    pushes_dropped: int = 0
    #: Pushes written to their socket by its bridge (the direct ones: ``direct.written``).
    pushes_written: int = 0
    #: The layer's ``on_arrival``: pushes written to idle sockets at once.
    direct: DirectPushes = field(default_factory=lambda: DirectPushes(0))
    #: When each kind of now-and-then warning was last logged.
    _logged: dict[str, float] = field(default_factory=dict)

    def _now_and_then(self, kind: str, message: str, *args: object) -> None:
        """Log a warning at most every few seconds per kind: these come in
        floods (a thousand connections at once), and one line with a running
        count says it all."""
        now = time.monotonic()
        if now - self._logged.get(kind, -math.inf) >= _LOG_INTERVAL:
            self._logged[kind] = now
            logger.warning(message, *args)

    def reject(self) -> None:
        """Count a connection refused for ``max_pending``."""
        self.rejected += 1
        self._now_and_then(
            "reject",
            "%d connections wait for a worker (max_pending); answering 503 (%d so far)",
            self.pending,
            self.rejected,
        )

    def gave_up(self, worker_id: str) -> None:
        """Count a connection its worker gave up on (a worker that lapses
        gives up all of its connections at once)."""
        self.given_up += 1
        self._now_and_then(
            "gave_up",
            "worker %s gave up on a connection (its heartbeat lapsed); "
            "%d given up so far, answering 502 or closing 1011",
            worker_id or "-",
            self.given_up,
        )

    def push_dropped(self, channel: str, why: str) -> None:
        """Count a push that was not written to its socket."""
        self.pushes_dropped += 1
        self._now_and_then(
            "push",
            "conn %s: push dropped (%s); %d dropped so far",
            channel,
            why,
            self.pushes_dropped,
        )

    #: Of this server's connection channels, so that its inbox stream names
    #: it (``ps.<server id>.<loop>!``): a worker that sees it gone deletes it.
    channel_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.channel_prefix = f"{relay.SERVER_CHANNEL_PREFIX}.{self.server_id}"

    def worker_lost(self, worker_id: str) -> list[Bridge]:
        """Fail every connection of a worker that stopped beating; return them."""
        bridges = list(self.by_worker.pop(worker_id, ()))
        for bridge in bridges:
            bridge.worker_lost()
        return bridges


class WorkerLost(Exception):
    """The worker running (or about to run) a connection is gone."""


class Bridge:
    """One client connection relayed to a worker."""

    def __init__(self, ctx: ServerContext, scope: Message) -> None:
        self.ctx = ctx
        self.scope = scope
        self.layer = ctx.layer
        self.channel = ""
        self.worker = ""  # the worker's channel for this connection
        self.worker_id = ""  # the worker process, whose heartbeat is watched
        self.lost = False  # the worker died mid-connection
        # Cancelled when the worker is lost; subclasses relay inside it.
        # None until the relay starts: ``lost`` says what happened before.
        self.relay_scope: anyio.CancelScope | None = None
        # Body bytes sent to the worker that it has not yet consumed.
        self.in_flight = 0
        # WebSocket messages (parts) sent to the worker the app has not taken.
        self.queued = 0
        # Set when credit arrives; made only when someone waits for it.
        self._credit: anyio.Event | None = None
        # Response bytes written to the client not yet credited to the worker.
        self._written = 0
        # Events of a batch from the worker not yet handled, in order.
        self._unread: deque[Message] = deque()
        # Waiting in the layer's receive for the next message: everything
        # taken before has been handled (for WebSockets, written).
        self.parked = False

    def _credit_event(self) -> anyio.Event:
        if self._credit is None:
            self._credit = anyio.Event()
        return self._credit

    def _release_credit(self) -> None:
        """Wake whoever waits for credit (or to learn that none will come)."""
        if self._credit is not None:
            self._credit.set()
            self._credit = None

    async def offer(self, first_events: tuple[Message, ...]) -> str | None:
        """Offer the connection to the workers and wait for a claim.

        Returns the claiming worker's channel, or None when no worker took it
        within ``queue_timeout`` (the offer is then withdrawn, so no worker
        will run it later), or Redis is unreachable (503 either way), or at
        once when ``max_pending`` connections of this server are waiting
        already: a flood beyond what the workers take is answered quickly
        rather than queued (in memory and on the connect stream) until each
        one's timeout.
        """
        ctx = self.ctx
        if ctx.pending >= ctx.config.max_pending:
            ctx.reject()
            return None
        ctx.pending += 1
        try:
            return await self._offer(first_events)
        finally:
            ctx.pending -= 1

    async def _offer(self, first_events: tuple[Message, ...]) -> str | None:
        self.channel = await self.layer.new_channel(self.ctx.channel_prefix)
        connect = wire.Connect(
            conn=self.channel,
            reply_to=self.channel,
            scope=relay.portable_scope(self.scope),
            events=first_events,
            server=self.ctx.server_id,
        )
        fields = wire.encode(connect, max_size=self.layer.max_message_size)
        try:
            entry_id = await self.ctx.queue.offer(fields)  # one round trip
        except BrokerUnavailable as exc:
            # Redis is down or restarting: 503 at once rather than a hang.
            if self.ctx.broker_down_since is None:
                self.ctx.broker_down_since = anyio.current_time()
                logger.warning("broker unreachable (%s); answering 503 until it is back", exc)
            return None
        if self.ctx.broker_down_since is not None:
            down = anyio.current_time() - self.ctx.broker_down_since
            logger.warning("broker reachable again after %.1fs; relaying again", down)
            self.ctx.broker_down_since = None
        worker = await self._claim_in_time()
        if worker is not None:
            return worker
        try:
            withdrawn = await self.ctx.queue.cancel(entry_id)
        except BrokerUnavailable:
            withdrawn = False  # not known: as if a worker held it
        if withdrawn:
            return None
        # A worker holds the entry: its claim is on the way, or the worker
        # died and another will reclaim it. One more queue_timeout, no more.
        worker = await self._claim_in_time()
        if worker is not None:
            return worker
        raise WorkerLost(f"conn {self.channel}: taken by a worker that never answered")

    async def _claim_in_time(self) -> str | None:
        """The claiming worker's channel, or None after ``queue_timeout``.

        A plain cancel scope and a loop timer rather than ``move_on_after``,
        which is the same thing through anyio's clock and deadline machinery:
        that was 5-8% of a protocol server's time under load, for a timer
        that almost never fires.
        """
        with anyio.CancelScope() as scope:
            timeout = self.ctx.config.queue_timeout
            timer = asyncio.get_running_loop().call_later(timeout, scope.cancel)
            try:
                # Cancellation point: the layer keeps anything popped for us.
                return await self._wait_claim()
            finally:
                timer.cancel()
        return None

    async def _next(self) -> Message:
        """The next message from the worker, batches unpacked."""
        if self._unread:
            return self._unread.popleft()
        while True:
            self.parked = True
            try:
                # Cancellation point: the layer keeps what it took for the next call.
                batch = await self.layer.receive(self.channel)
            finally:
                self.parked = False
            events = relay.unbatch(batch)
            if events:
                self._unread.extend(events[1:])
                return events[0]
            logger.warning("conn %s: empty or malformed batch from the worker", self.channel)

    async def _wait_claim(self) -> str:
        while True:
            message = await self._next()
            if message["type"] == relay.LOST:
                # The worker that took it gave up before its claim got here.
                raise WorkerLost(f"conn {self.channel}: the worker gave up on it")
            if message["type"] == relay.CLAIM and isinstance(message.get("channel"), str):
                self.worker = message["channel"]
                worker_id = message.get("worker")
                if isinstance(worker_id, str) and worker_id:
                    self.worker_id = worker_id
                    self.ctx.by_worker.setdefault(worker_id, set()).add(self)
                return self.worker
            if message["type"] == relay.PUSH:
                self.ctx.push_dropped(self.channel, "the socket is not accepted yet")
                continue
            logger.warning("conn %s: %r before any claim; ignored", self.channel, message["type"])

    async def next_from_worker(self) -> Message:
        """The next ASGI event from the worker; control messages are handled here."""
        while True:
            message = await self._next()
            kind = message["type"]
            if kind == relay.CREDIT:
                self.in_flight = max(0, self.in_flight - relay.count(message, "bytes"))
                self.queued = max(0, self.queued - relay.count(message, "messages"))
                self._release_credit()
            elif kind == relay.CLAIM:
                # A second worker claims what the first already has: the
                # protocol server is the authority, the first claim won.
                loser = message.get("channel")
                if isinstance(loser, str) and loser != self.worker:
                    await self.layer.send(loser, {"type": relay.DROP})
            elif kind == relay.ABORT:
                raise ResponseAborted(f"conn {self.channel}: the app failed mid-response")
            elif kind == relay.LOST:
                self.ctx.gave_up(self.worker_id)
                self.worker_lost()  # the relay scope is cancelled at the next wait
            elif kind.startswith("cl."):
                logger.debug("conn %s: unknown control message %r", self.channel, kind)
            else:
                return message

    async def to_worker(self, event: Message) -> None:
        """Send an event to the worker, waiting while the body window is full."""
        size = relay.payload_size(event)
        while self.in_flight and self.in_flight + size > self.ctx.config.flow_window:
            # Cancellation point: waiting for credit holds nothing.
            await self._credit_event().wait()
        self.in_flight += size
        await self.layer.send(self.worker, event)

    async def credit_worker(self, written: int) -> None:
        """Tell the worker ``written`` more response bytes reached the socket.

        Credits are batched (a quarter window at a time) to keep the number
        of messages per response small.
        """
        self._written += written
        if self._written >= self.ctx.config.flow_window // 4:
            amount, self._written = self._written, 0
            await self.layer.send(self.worker, {"type": relay.CREDIT, "bytes": amount})

    def worker_lost(self) -> None:
        """The worker is gone: stop relaying; ``run`` answers 502 or 1011.

        Logged by the caller: once per worker when a whole worker is lost
        (a line per connection was a thousand lines for one event).
        """
        logger.debug("conn %s: worker %s gone", self.channel, self.worker_id)
        self.lost = True
        if self.relay_scope is not None:
            self.relay_scope.cancel()

    def close(self) -> None:
        if self.worker_id:
            bridges = self.ctx.by_worker.get(self.worker_id)
            if bridges is not None:
                bridges.discard(self)
                if not bridges:
                    del self.ctx.by_worker[self.worker_id]
        if self.channel:
            self.layer.forget_channel(self.channel)
