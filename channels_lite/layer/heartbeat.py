"""Process liveness: every process refreshes a key with a TTL; a missing key means gone.

Each protocol server and worker owns ``{prefix}:hb:{role}:{id}``, rewritten
every ``interval`` with a TTL of ``timeout`` and a small JSON description
(pid, host, start time, live counters) that ``channels-lite status`` shows.
A process that dies stops refreshing and its key expires by itself, so
nothing it leaves behind lives forever; one that stops cleanly deletes it.

Peers check each other with :meth:`Heartbeat.alive` (one ``EXISTS`` per id,
pipelined in one round trip) for the ids they depend on: a protocol server
for the workers running its connections, a worker for the protocol servers
its connections belong to.

A process whose own key vanished while it kept beating has *lapsed*: Redis
lost its data (a restart) or the process stalled for longer than the
timeout. Either way its peers have given up on it, or its conversations with
them are gone with Redis's data, so ``run`` calls ``on_lapse`` to fail what
it has in flight. Each refresh is ``SET ... GET``, so a lapse is seen in the
same round trip. After a lapse or an outage the view of liveness in Redis is
wrong for a moment (every key vanished at once and peers have not beaten
again yet): for one ``timeout`` ``alive`` judges nobody gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.abc
from redis.exceptions import RedisError

from .. import keys
from .redis import RedisStreamsChannelLayer

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)


class Heartbeat:
    """The liveness key of one process, and the check of its peers'.

    Args:
        layer: whose connections (and prefix) to use.
        role: ``ps`` or ``wk``.
        process_id: this process's id.
        interval: seconds between refreshes.
        timeout: the key's TTL: how long after its last refresh a silent
            process counts as gone. Must exceed ``interval``.
        info: returns live counters to publish with each refresh.
        on_lapse: awaited when a refresh finds the key gone (see the module
            docstring): fail the connections in flight.
    """

    def __init__(
        self,
        layer: RedisStreamsChannelLayer,
        role: str,
        process_id: str,
        *,
        interval: float = 1.0,
        timeout: float = 5.0,
        info: Callable[[], dict[str, Any]] | None = None,
        on_lapse: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if timeout <= interval:
            raise ValueError("the heartbeat timeout must exceed its interval")
        self.layer = layer
        self.role = role
        self.process_id = process_id
        self.interval = interval
        self.timeout = timeout
        self._info = info or dict
        self._on_lapse = on_lapse
        self._started = time.time()
        self.key = keys.heartbeat(layer.prefix, role, process_id)
        self._running = False
        # anyio clock: before this, Redis's view of liveness is not trusted.
        self._trust_from = 0.0
        #: Since when (anyio clock) refreshes fail: Redis unreachable; None while they work.
        self.failing_since: float | None = None
        # A refresh and a check never overlap: a check whose reply lands just
        # after a refresh found the key gone must not judge peers that have
        # not beaten again yet.
        self._lock = anyio.Lock()

    def _describe(self) -> bytes:
        return json.dumps(
            {
                "role": self.role,
                "id": self.process_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": self._started,
                "seen": time.time(),
                **self._info(),
            }
        ).encode()

    async def beat(self) -> bool:
        """Refresh the key once; whether it still existed. One round trip."""
        client = self.layer._client_for(self.key)
        async with self._lock:
            previous = await client.set(
                self.key, self._describe(), px=int(self.timeout * 1000), get=True
            )
            if previous is None and self._running:
                self._distrust()
        return previous is not None

    def _distrust(self) -> None:
        self._trust_from = anyio.current_time() + self.timeout

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat every ``interval`` until cancelled; delete the key on the way out.

        A failed refresh (Redis unreachable) is logged once and retried; the
        process keeps serving what it can.
        """
        await self.beat()
        task_status.started()
        self._running = True
        failing = False
        try:
            while True:
                await anyio.sleep(self.interval)  # cancellation point: nothing held
                try:
                    existed = await self.beat()
                except (RedisError, OSError) as exc:
                    if not failing:
                        logger.warning("heartbeat %s: cannot refresh (%s)", self.key, exc)
                        self.failing_since = anyio.current_time()
                    failing = True
                    self._distrust()
                    continue
                if failing:
                    logger.warning("heartbeat %s: refreshing again", self.key)
                    failing = False
                    self.failing_since = None
                    self._distrust()  # from now: peers beat again within an interval
                if not existed:
                    await self._lapsed()
        finally:
            self._running = False
            # Shielded: a clean stop should not leave peers waiting for the
            # TTL to find out.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2),
                contextlib.suppress(RedisError, OSError),
            ):
                await self.layer._client_for(self.key).delete(self.key)

    async def _lapsed(self) -> None:
        logger.warning(
            "heartbeat %s had lapsed (Redis lost its data, or this process stalled "
            "for over %.1fs): peers count this process as gone; failing its connections",
            self.key,
            self.timeout,
        )
        self._distrust()
        if self._on_lapse is not None:
            await self._on_lapse()

    async def alive(self, role: str, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` (processes of ``role``) whose key exists. One round trip.

        While this process's own view cannot be trusted (its own key is
        missing although it beats, or it lapsed or lost Redis less than a
        ``timeout`` ago) every id counts as alive: nobody is judged on keys
        that vanished all at once.
        """
        wanted = list(dict.fromkeys(ids))
        async with self._lock:
            if not wanted or anyio.current_time() < self._trust_from:
                return set(wanted)
            return await self._alive(role, wanted)

    async def _alive(self, role: str, wanted: list[str]) -> set[str]:
        by_client: dict[int, tuple[Any, list[tuple[str, str]]]] = {}
        names = [
            (process_id, keys.heartbeat(self.layer.prefix, role, process_id))
            for process_id in wanted
        ]
        if self._running:
            names.append(("", self.key))  # our own, in the same round trip
        for process_id, name in names:
            client = self.layer._client_for(name)  # keys may be sharded over hosts
            by_client.setdefault(id(client), (client, []))[1].append((process_id, name))
        live: set[str] = set()
        for client, items in by_client.values():
            async with client.pipeline(transaction=False) as pipe:
                for _, name in items:
                    pipe.exists(name)
                found = await pipe.execute()
            live.update(process_id for (process_id, _), n in zip(items, found, strict=True) if n)
        if self._running and "" not in live:
            self._distrust()  # our own key is gone too: Redis lost its data
            return set(wanted)
        live.discard("")
        return live
