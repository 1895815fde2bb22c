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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
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
    ) -> None:
        if timeout <= interval:
            raise ValueError("the heartbeat timeout must exceed its interval")
        self.layer = layer
        self.role = role
        self.process_id = process_id
        self.interval = interval
        self.timeout = timeout
        self._info = info or dict
        self._started = time.time()
        self.key = keys.heartbeat(layer.prefix, role, process_id)

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

    async def beat(self) -> None:
        """Refresh the key once. One round trip."""
        client = self.layer._client_for(self.key)
        await client.set(self.key, self._describe(), px=int(self.timeout * 1000))

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat every ``interval`` until cancelled; delete the key on the way out.

        A failed refresh (Redis unreachable) is logged once and retried; the
        process keeps serving what it can.
        """
        await self.beat()
        task_status.started()
        failing = False
        try:
            while True:
                await anyio.sleep(self.interval)  # cancellation point: nothing held
                try:
                    await self.beat()
                except (RedisError, OSError) as exc:
                    if not failing:
                        logger.warning("heartbeat %s: cannot refresh (%s)", self.key, exc)
                    failing = True
                else:
                    if failing:
                        logger.warning("heartbeat %s: refreshing again", self.key)
                    failing = False
        finally:
            # Shielded: a clean stop should not leave peers waiting for the
            # TTL to find out.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2),
                contextlib.suppress(RedisError, OSError),
            ):
                await self.layer._client_for(self.key).delete(self.key)

    async def alive(self, role: str, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` (processes of ``role``) whose key exists. One round trip."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set()
        by_client: dict[int, tuple[Any, list[tuple[str, str]]]] = {}
        for process_id in wanted:
            name = keys.heartbeat(self.layer.prefix, role, process_id)
            client = self.layer._client_for(name)  # keys may be sharded over hosts
            by_client.setdefault(id(client), (client, []))[1].append((process_id, name))
        live: set[str] = set()
        for client, items in by_client.values():
            async with client.pipeline(transaction=False) as pipe:
                for _, name in items:
                    pipe.exists(name)
                found = await pipe.execute()
            live.update(process_id for (process_id, _), n in zip(items, found, strict=True) if n)
        return live
