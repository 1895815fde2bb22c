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
from functools import partial
from typing import Any

import anyio
import anyio.abc
from redis.exceptions import RedisError

from channels_lite import keys, relay, wire
from channels_lite.exceptions import BrokerError, WireError
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.heartbeat import Heartbeat
from channels_lite.layer.inspect import DROP_COUNTERS
from channels_lite.layer.queue import WorkQueue

from .config import Config
from .connection import AppConnection
from .lifespan import lifespan
from .tasks import TaskRunner

logger = logging.getLogger(__name__)

_TAKE_BLOCK_MS = 1000


class Worker:
    """One worker process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker_id = config.worker_id or secrets.token_hex(6)
        self.active = 0
        self.connections: set[AppConnection] = set()
        self._slot_freed = anyio.Event()
        self._stopping = anyio.Event()
        self.tasks: TaskRunner | None = None

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
                    info=partial(self._info, layer),
                )
                # All live in the connections' group: they keep running while
                # in-flight connections drain, and stop with them.
                await connections.start(heartbeat.run)
                connections.start_soon(self._watch_servers, heartbeat)
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

    def _info(self, layer: RedisStreamsChannelLayer) -> dict[str, Any]:
        """Live counters for the heartbeat (``channels-lite status``)."""
        info: dict[str, Any] = {"active": self.active, "concurrency": self.config.concurrency}
        if self.tasks is not None:
            info["tasks"] = self.tasks.statistics()
        # Undelivered messages: the app's, and the relay's (refused entries
        # on this worker's inbox and the connect stream count as malformed).
        stats, relay_stats = self.app_layer.statistics(), layer.statistics()
        info["layer"] = {
            name: getattr(stats, name) + getattr(relay_stats, name) for name in DROP_COUNTERS
        }
        return info

    async def _watch_servers(self, heartbeat: Heartbeat) -> None:
        """Give a disconnect to every app whose protocol server stopped beating."""
        while True:
            await anyio.sleep(self.config.heartbeat_interval)  # cancellation point
            servers = {c.connect.server for c in self.connections if c.connect.server}
            if not servers:
                continue
            try:
                alive = await heartbeat.alive("ps", servers)  # one round trip
            except (BrokerError, RedisError, OSError) as exc:
                # Redis itself is unreachable: that says nothing about the
                # protocol servers, so no connection is judged on it.
                logger.debug("cannot check protocol servers: %s", exc)
                continue
            for connection in list(self.connections):
                if connection.connect.server and connection.connect.server not in alive:
                    connection.peer_lost()

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
        reclaim_every = config.reclaim_idle
        next_reclaim = anyio.current_time() + reclaim_every
        while not self._stopping.is_set():
            free = config.concurrency - self.active
            if free <= 0:
                with anyio.move_on_after(1):
                    await self._slot_freed.wait()  # cancellation point: holds nothing
                continue
            entries = []
            if anyio.current_time() >= next_reclaim:
                next_reclaim = anyio.current_time() + reclaim_every
                entries = await queue.reclaim(
                    self.worker_id, int(config.reclaim_idle * 1000), count=free
                )
                for entry_id, _ in entries:
                    logger.warning("reclaimed connection %r from a worker that died", entry_id)
            if not entries:
                # Bounded block so stop() is noticed within a second. Entries
                # Redis delivers are pending until acked below, so nothing is
                # lost if this process dies in between.
                entries = await queue.take(self.worker_id, free, _TAKE_BLOCK_MS)
            if not entries:
                continue
            # Acked = started: from here on no other worker will run these.
            await queue.ack([entry_id for entry_id, _ in entries])
            for entry_id, fields in entries:
                connect = _decode_connect(layer, queue.stream, entry_id, fields)
                if connect is None:
                    layer.note_malformed()
                    continue
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

    async def _run(self, connection: AppConnection) -> None:
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:
            # Relay failures (Redis gone mid-connection): log and go on serving.
            logger.exception("conn %s: relay failed", connection.peer)
        finally:
            self.connections.discard(connection)
            self.active -= 1
            self._slot_freed.set()
            self._slot_freed = anyio.Event()

    async def _drain(self, connections: anyio.abc.TaskGroup) -> None:
        if self.active:
            logger.info("draining %d connection(s)", self.active)
        with anyio.move_on_after(self.config.shutdown_timeout):
            while self.active:
                await self._slot_freed.wait()
            if self.tasks is not None:
                await self.tasks.done.wait()  # it drains its own tasks meanwhile
        if self.active:
            logger.warning("shutdown timeout: cancelling %d connection(s)", self.active)
        connections.cancel_scope.cancel()


def _decode_connect(
    layer: RedisStreamsChannelLayer, stream: str, entry_id: bytes, fields: dict[bytes, bytes]
) -> wire.Connect | None:
    try:
        envelope = wire.decode(layer.unseal(stream, fields))
    except WireError as exc:
        logger.warning("skipped malformed connect entry %r: %s", entry_id, exc)
        return None
    if not isinstance(envelope, wire.Connect):
        kind = type(envelope).__name__
        logger.warning("skipped %s entry %r on the connect stream", kind, entry_id)
        return None
    if envelope.scope.get("type") not in ("http", "websocket"):
        scope_type = envelope.scope.get("type")
        logger.warning("skipped connect entry %r with scope type %r", entry_id, scope_type)
        return None
    return envelope
