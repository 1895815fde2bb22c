"""The worker process: pull connections from Redis and run the app for each.

Pull-based load balancing: the worker asks the consumer group for at most as
many new connections as it has free slots, so a full worker takes nothing and
the others get the work; ``--scale worker=N`` is all scaling needs. A taken
connection is acked before its app starts: from then on it is never handed to
another worker (a request that started is never run twice). A connection that
a dead worker took but never started stays pending and is reclaimed by a live
worker after ``reclaim_idle``.

With ``--tasks`` the same process also consumes background-task channels
(``worker/tasks.py``), with its own concurrency, inside the same task group.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from redis.exceptions import RedisError

from channels_lite import keys, relay, wire
from channels_lite.exceptions import BrokerError, WireError
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer._names import _channel_ok
from channels_lite.layer.heartbeat import Heartbeat
from channels_lite.layer.inspect import DROP_COUNTERS
from channels_lite.layer.queue import Entry, WorkQueue

from .config import Config
from .connection import AppConnection
from .lifespan import lifespan
from .tasks import TaskRunner

logger = logging.getLogger(__name__)

_TAKE_BLOCK_MS = 1000
#: Retry pacing while Redis is unreachable.
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0


class Worker:
    """One worker process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker_id = config.worker_id or secrets.token_hex(6)
        self.active = 0
        self.connections: set[AppConnection] = set()
        # Set when a connection ends; made only while someone waits for one.
        self._slot_freed: anyio.Event | None = None
        self._stopping = anyio.Event()
        self.tasks: TaskRunner | None = None
        self._broker_down_since: float | None = None
        # The inbox channels (``ps.<id>.<loop>!``) of the protocol servers whose
        # connections ran here, with when last: when one stops beating, its
        # inbox is deleted at once instead of living on for its stream TTL.
        self._inboxes: dict[str, dict[str, float]] = {}
        self.relay_layer: RedisStreamsChannelLayer | None = None
        #: Connect entries skipped as malformed (reported with the layer's counters).
        self.malformed_connects = 0

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run start-up, serve until ``stop()``, drain, run shutdown, return.

        ``task_status.started()`` is called once the lifespan start-up is
        complete and the consumer group exists.

        Raises:
            ConfigError: the app cannot be imported.
            LifespanFailed: the app's start-up failed.
        """
        config = self.config
        app = config.load_app()
        registry = config.load_tasks()
        if registry is not None and not len(registry):
            logger.warning("task registry %s declares no task channel", config.tasks)
            registry = None
        layer: RedisStreamsChannelLayer = relay.make_layer(
            config.redis_url,
            config.prefix,
            max_message_size=relay.CHUNK_SIZE + 64 * 1024,
            keys=config.keys,
            seal=config.seal,
        )
        self.relay_layer = layer
        queue = WorkQueue(layer, keys.connect_stream(config.prefix), keys.WORKERS_GROUP)
        # The layer apps see in scope["channel_layer"]: ordinary capacities,
        # the deployment's prefix, so groups are shared with Channels
        # consumers and external publishers on the same Redis.
        self.app_layer = RedisStreamsChannelLayer(
            hosts=[config.redis_url], prefix=config.prefix, keys=config.keys, seal=config.seal
        )
        try:
            await queue.ensure_group()
            async with (
                lifespan(app, config.lifespan, shutdown_timeout=config.shutdown_timeout) as state,
                anyio.create_task_group() as connections,
            ):
                logger.info(
                    "worker %s serving %s (concurrency %d)",
                    self.worker_id,
                    config.app,
                    config.concurrency,
                )
                heartbeat = Heartbeat(
                    layer,
                    "wk",
                    self.worker_id,
                    interval=config.heartbeat_interval,
                    timeout=config.heartbeat_timeout,
                    info=self._info,
                    on_lapse=lambda: self._lapsed(layer),
                )
                # All live in the connections' group: they keep running while
                # in-flight connections drain, and stop with them.
                await connections.start(heartbeat.run)
                connections.start_soon(self._watch_servers, heartbeat, layer)
                if registry is not None:
                    self.tasks = TaskRunner(
                        config,
                        registry,
                        layer,
                        self.app_layer,
                        worker_id=self.worker_id,
                        stopping=self._stopping,
                    )
                    await connections.start(self.tasks.serve, state)
                task_status.started()
                await self._pull(queue, layer, app, state, connections)
                await self._drain(connections)
        finally:
            with anyio.CancelScope(shield=True):
                await layer.close()
                await self.app_layer.close()

    def _info(self) -> dict[str, Any]:
        """Live counters for the heartbeat (``channels-lite status``)."""
        info: dict[str, Any] = {"active": self.active, "concurrency": self.config.concurrency}
        if self.tasks is not None:
            info["tasks"] = self.tasks.statistics()
        # Undelivered messages of the app's layer and of the relay (whose
        # inbox anyone with access to Redis can write garbage to), and
        # connect entries that were not connections.
        stats = [self.app_layer.statistics()]
        if self.relay_layer is not None:
            stats.append(self.relay_layer.statistics())
        info["layer"] = {name: sum(getattr(s, name) for s in stats) for name in DROP_COUNTERS}
        info["layer"]["malformed"] += self.malformed_connects
        return info

    async def _watch_servers(self, heartbeat: Heartbeat, layer: RedisStreamsChannelLayer) -> None:
        """Give a disconnect to every app whose protocol server stopped beating,
        and delete that server's inbox stream."""
        interval = self.config.heartbeat_interval
        # An inbox not written for this long has expired by itself.
        forget_after = layer.expiry + 10
        reported: set[str] = set()
        while True:
            await anyio.sleep(interval)  # cancellation point
            in_use = {c.connect.server for c in self.connections if c.connect.server}
            now = anyio.current_time()
            for server, inboxes in list(self._inboxes.items()):
                if server not in in_use and now - max(inboxes.values()) > forget_after:
                    del self._inboxes[server]
            servers = in_use | self._inboxes.keys()
            if not servers:
                continue
            try:
                alive = await heartbeat.alive("ps", servers)  # one round trip
                # Only servers checked: a connection that arrived meanwhile
                # from a server not in the snapshot is not judged.
                gone = servers - alive
                disconnected = dict.fromkeys(gone, 0)
                for connection in list(self.connections):
                    if connection.connect.server in gone and connection.peer_lost():
                        disconnected[connection.connect.server] += 1
                for server in gone:
                    # Deleted on every check until forgotten: a reply that was
                    # on its way when the server died cannot bring it back.
                    await layer.delete_streams(self._inboxes.get(server, ()))  # one round trip
                    if server not in reported:
                        # One line per server, not one per connection.
                        logger.warning(
                            "protocol server %s stopped beating; disconnected %d app(s) "
                            "and deleted its inbox",
                            server,
                            disconnected[server],
                        )
                reported = gone
            except (BrokerError, RedisError, OSError) as exc:
                # Redis itself is unreachable: that says nothing about the
                # protocol servers, so no connection is judged on it.
                logger.debug("cannot check protocol servers: %s", exc)

    async def _lapsed(self, layer: RedisStreamsChannelLayer) -> None:
        """Our heartbeat lapsed: the protocol servers have failed our connections
        (or Redis lost them). Every app gets its disconnect and, in case its
        protocol server did not notice, the server is told (502 or 1011)."""
        notices: list[tuple[str, dict[str, Any]]] = []
        for connection in list(self.connections):
            connection.peer_lost()
            notices.append((connection.peer, {"type": relay.LOST}))
        try:
            await layer.send_many(notices)  # one round trip, best effort
        except (BrokerError, RedisError, OSError) as exc:
            logger.debug("cannot tell the protocol servers: %s", exc)

    def stop(self) -> None:
        """Take no new connection or task; let in-flight ones finish (``shutdown_timeout``)."""
        self._stopping.set()

    async def _pull(
        self,
        queue: WorkQueue,
        layer: RedisStreamsChannelLayer,
        app: Any,
        state: dict[str, Any],
        connections: anyio.abc.TaskGroup,
    ) -> None:
        config = self.config
        next_reclaim = anyio.current_time() + config.reclaim_idle
        backoff = _BACKOFF_MIN
        while not self._stopping.is_set():
            free = config.concurrency - self.active
            if free <= 0:
                with anyio.move_on_after(1):
                    await self._slot_event().wait()  # cancellation point: holds nothing
                continue
            reclaim = anyio.current_time() >= next_reclaim
            if reclaim:
                next_reclaim = anyio.current_time() + config.reclaim_idle
            try:
                entries = await self._take(queue, free, reclaim=reclaim)
            except BrokerError as exc:
                # Redis is down or restarting: wait it out, logged once each way.
                if self._broker_down_since is None:
                    self._broker_down_since = anyio.current_time()
                    logger.warning(
                        "cannot take connections, broker unreachable (%s); retrying", exc
                    )
                await anyio.sleep(backoff)  # cancellation point: holds nothing
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if self._broker_down_since is not None:
                down = anyio.current_time() - self._broker_down_since
                logger.warning("taking connections again after %.1fs", down)
                self._broker_down_since = None
            backoff = _BACKOFF_MIN
            now = anyio.current_time()
            for entry in entries:
                connect = _decode_connect(layer, queue.stream, *entry)
                if connect is None:
                    self.malformed_connects += 1
                    continue
                if connect.server:
                    inbox = connect.reply_to.partition("!")[0] + "!"
                    self._inboxes.setdefault(connect.server, {})[inbox] = now
                self.active += 1
                connection = AppConnection(
                    layer,
                    app,
                    connect,
                    state,
                    flow_window=config.flow_window,
                    tasks=connections,
                    app_layer=self.app_layer,
                    worker_id=self.worker_id,
                )
                connections.start_soon(self._run, connection)
            if entries:
                # Let the apps just started run to their first wait (a small
                # response is then on its way to Redis) before the next take
                # is written: at low load that take is not urgent, and written
                # first it would delay every response by a socket write.
                await anyio.lowlevel.checkpoint()

    async def _take(self, queue: WorkQueue, free: int, *, reclaim: bool) -> list[Entry]:
        """Up to ``free`` entries, reclaimed from dead workers or new; acked (started).

        Raises:
            BrokerError: Redis failed; nothing taken is lost (pending until reclaimed).
        """
        entries = []
        if reclaim:
            idle_ms = int(self.config.reclaim_idle * 1000)
            entries = await queue.reclaim(self.worker_id, idle_ms, count=free)
            for entry_id, _ in entries:
                logger.warning("reclaimed connection %r from a worker that died", entry_id)
        if not entries:
            # Bounded block so stop() is noticed within a second. Entries
            # Redis delivers are pending until acked below, so nothing is
            # lost if this process dies in between.
            entries = await queue.take(self.worker_id, free, _TAKE_BLOCK_MS)
        if not entries:
            return []
        # Acked = started: from here on no other worker will run these.
        held = await queue.ack_held(self.worker_id, [entry_id for entry_id, _ in entries])
        for entry_id, _ in entries:
            if entry_id not in held:
                logger.warning(
                    "connection %r was taken over by another worker while this one "
                    "stalled; skipped",
                    entry_id,
                )
        return [entry for entry in entries if entry[0] in held]

    async def _run(self, connection: AppConnection) -> None:
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception as exc:
            errors = _leaves(exc)
            if all(isinstance(error, BrokerError) for error in errors):
                # Redis went away mid-connection: the connection is lost, the
                # worker is not. One line, no traceback: it is not a bug.
                logger.warning("conn %s: lost with the broker (%s)", connection.peer, errors[0])
            else:
                logger.exception("conn %s: relay failed", connection.peer)
        finally:
            self.connections.discard(connection)
            self.active -= 1
            if self._slot_freed is not None:
                self._slot_freed.set()
                self._slot_freed = None

    def _slot_event(self) -> anyio.Event:
        """Set when the next connection ends (one event per wait, not per connection)."""
        if self._slot_freed is None:
            self._slot_freed = anyio.Event()
        return self._slot_freed

    async def _drain(self, connections: anyio.abc.TaskGroup) -> None:
        if self.active:
            logger.info("draining %d connection(s)", self.active)
        with anyio.move_on_after(self.config.shutdown_timeout):
            while self.active:
                await self._slot_event().wait()
            if self.tasks is not None:
                await self.tasks.done.wait()  # it drains its own tasks meanwhile
        if self.active:
            logger.warning("shutdown timeout: cancelling %d connection(s)", self.active)
        connections.cancel_scope.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _decode_connect(
    layer: RedisStreamsChannelLayer, stream: str, entry_id: bytes, fields: dict[bytes, bytes]
) -> wire.Connect | None:
    """The connection an entry offers, or None (logged once, with the stream and id)."""
    try:
        envelope = wire.decode(layer.unseal(stream, fields))
    except WireError as exc:
        logger.warning("skipped malformed entry %r on %s: %s", entry_id, stream, exc)
        return None
    if not isinstance(envelope, wire.Connect):
        kind = type(envelope).__name__
        logger.warning("skipped %s entry %r on %s", kind, entry_id, stream)
        return None
    problem = _connect_problem(envelope)
    if problem:
        logger.warning("skipped entry %r on %s: %s", entry_id, stream, problem)
        return None
    return envelope


def _connect_problem(connect: wire.Connect) -> str:
    """What makes a well-formed entry no connection a worker can run, if anything.

    The wire codec checks types of the envelope, not the scope's contents:
    anyone who can write to Redis can offer a connection, and one without a
    path or with a reply channel nobody could own would only fail later, in
    the app or in the relay, with a traceback.
    """
    scope = connect.scope
    if scope.get("type") not in ("http", "websocket"):
        return f"scope type {scope.get('type')!r}"
    if not _channel_ok(connect.reply_to) or "!" not in connect.reply_to:
        return f"reply_to {connect.reply_to!r} is not a process-specific channel"
    required = ("method", "path", "headers") if scope["type"] == "http" else ("path", "headers")
    types = {"method": str, "path": str, "headers": list}
    for key in required:
        if not isinstance(scope.get(key), types[key]):
            return f"scope without a valid {key!r}"
    return ""
