"""The gateway: a plain ASGI app that forwards every connection to the workers.

Because it is an ordinary ASGI 3 app, any ASGI server can terminate for it:
our protocol-server process runs it under uvicorn, and it runs as well under
hypercorn (HTTP/2) or granian. Its lifespan opens the Redis connections, so
whichever server hosts it drives the same start-up and shutdown.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import anyio
from redis.exceptions import RedisError

from channels_lite import keys, relay
from channels_lite.exceptions import BrokerError
from channels_lite.layer import Shedding
from channels_lite.layer.heartbeat import Heartbeat
from channels_lite.layer.inspect import DROP_COUNTERS
from channels_lite.layer.queue import WorkQueue

from .bridge import ServerContext
from .config import Config
from .http import handle_http
from .pushes import DirectPushes
from .websocket import handle_websocket

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class Gateway:
    """ASGI app relaying HTTP and WebSocket connections over Redis Streams."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server_id = config.server_id or secrets.token_hex(6)
        self.ready = anyio.Event()
        self._ctx: ServerContext | None = None

    async def startup(self) -> None:
        """Connect to Redis and make sure the connect stream's group exists."""
        config = self.config
        # A slow WebSocket client's pushes are shed where they wait, in the
        # layer's buffer for its channel (the app's events there are bounded
        # by their credit, and never shed).
        shedding = Shedding(
            max_messages=config.ws_max_push_backlog,
            max_bytes=config.flow_window,
            sheddable=relay.is_push,
            on_shed=self._push_shed,
        )
        # And a push for an idle socket is written as the layer reads it,
        # framed once for all of its sockets here (pushes.py).
        direct = DirectPushes(config.ws_max_size)
        layer = relay.make_layer(
            config.redis_url,
            config.prefix,
            max_message_size=max(config.ws_max_size, relay.CHUNK_SIZE) + 64 * 1024,
            keys=config.keys,
            seal=config.seal,
            shedding=shedding,
            on_arrival=direct,
        )
        queue = WorkQueue(layer, keys.connect_stream(config.prefix), keys.WORKERS_GROUP)
        await queue.ensure_group()  # one round trip; fails fast if Redis is unreachable
        self._ctx = ServerContext(config, layer, queue, self.server_id, direct=direct)
        logger.info("protocol server %s connected to Redis", self.server_id)
        self.ready.set()

    def _push_shed(self, channel: str) -> None:
        if self._ctx is not None:
            self._ctx.push_dropped(
                channel, "the client is ws_max_push_backlog or flow_window behind"
            )

    async def shutdown(self) -> None:
        if self._ctx is not None:
            await self._ctx.layer.close()
            self._ctx = None

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._ctx is None:
            raise RuntimeError("the gateway's lifespan start-up has not run")
        if kind == "http":
            await handle_http(self._ctx, scope, receive, send)
        elif kind == "websocket":
            await handle_websocket(self._ctx, scope, receive, send)
        else:
            raise RuntimeError(f"unsupported scope type {kind!r}")

    async def _lifespan(self, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self.startup()
        except Exception as exc:
            logger.exception("gateway start-up failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        assert self._ctx is not None
        ctx = self._ctx
        heartbeat = Heartbeat(
            ctx.layer,
            "ps",
            self.server_id,
            interval=self.config.heartbeat_interval,
            timeout=self.config.heartbeat_timeout,
            info=lambda: {
                "connections": sum(len(b) for b in ctx.by_worker.values()),
                "pending": ctx.pending,
                "rejected": ctx.rejected,
                "pushes_written": ctx.pushes_written + ctx.direct.written,
                "pushes_direct": ctx.direct.written,
                "pushes_dropped": ctx.pushes_dropped,
                "layer": {name: getattr(ctx.layer.statistics(), name) for name in DROP_COUNTERS},
            },
            on_lapse=lambda: self._lapsed(ctx),
        )
        # The lifespan task lives as long as the server: it carries the
        # heartbeat and the watch on workers, whichever server hosts us.
        async with anyio.create_task_group() as tg:
            await tg.start(heartbeat.run)
            tg.start_soon(self._watch_workers, ctx, heartbeat)
            await send({"type": "lifespan.startup.complete"})
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            tg.cancel_scope.cancel()
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def _lapsed(self, ctx: ServerContext) -> None:
        """Our heartbeat lapsed: the workers have given up on our connections
        (or Redis lost them). Fail each (502, 1011) and, in case its worker
        did not notice, tell the worker the client is gone."""
        notices: list[tuple[str, Message]] = []
        for worker_id in list(ctx.by_worker):
            for bridge in ctx.worker_lost(worker_id):
                if bridge.scope["type"] == "http":
                    notices.append((bridge.worker, {"type": "http.disconnect"}))
                else:
                    gone = {"type": "websocket.disconnect", "code": 1011, "reason": ""}
                    notices.append((bridge.worker, gone))
        try:
            await ctx.layer.send_many(notices)  # one round trip, best effort
        except (BrokerError, RedisError, OSError) as exc:
            logger.debug("cannot tell the workers: %s", exc)

    async def _watch_workers(self, ctx: ServerContext, heartbeat: Heartbeat) -> None:
        """Fail the connections of workers that stopped beating (502 or 1011),
        and every connection once Redis has been unreachable for longer than
        ``heartbeat_timeout``."""
        failed_for: float | None = None  # the outage whose connections were failed
        while True:
            await anyio.sleep(self.config.heartbeat_interval)  # cancellation point
            since = heartbeat.failing_since
            if since is not None and since == failed_for:
                # Already failed for this outage. What is in by_worker now was
                # claimed since, through a Redis that is back but not yet seen
                # by the heartbeat (it retries every interval): not ours to
                # fail; if our beat lapsed meanwhile, the lapse fails them.
                continue
            if (
                since is not None
                and ctx.by_worker
                and anyio.current_time() - since > self.config.heartbeat_timeout
            ):
                # Nothing of these connections can cross Redis, and past a
                # heartbeat timeout everyone counts us gone anyway (our beat
                # has lapsed; each worker disconnects its apps when it sees
                # Redis again): the clients hear it now, not when Redis is
                # back, which nothing else bounds. Done and said once per
                # outage.
                failed_for = since
                lost = [b for w in list(ctx.by_worker) for b in ctx.worker_lost(w)]
                logger.warning(
                    "broker unreachable for over %.1fs: failed %d connection(s) in flight",
                    self.config.heartbeat_timeout,
                    len(lost),
                )
                continue
            # A snapshot: a worker whose first connection is claimed while
            # the check is on its way was not checked, so is not judged.
            checked = list(ctx.by_worker)
            if not checked:
                continue
            try:
                alive = await heartbeat.alive("wk", checked)  # one round trip
            except (BrokerError, RedisError, OSError) as exc:
                # Redis unreachable says nothing about the workers themselves.
                logger.debug("cannot check workers: %s", exc)
                continue
            for worker_id in [w for w in checked if w not in alive]:
                lost = ctx.worker_lost(worker_id)
                logger.warning(
                    "worker %s stopped beating; failed its %d connection(s)", worker_id, len(lost)
                )
