"""The worker's background tasks: take from the task streams, run, settle.

Theory of operation
===================

* Pull-based, like connections: the runner reads its registry's task
  streams through the consumer group ``tasks`` (``XREADGROUP``, bounded
  ``BLOCK``), asking for no more than its free slots (``task_concurrency``,
  apart from the connections' ``concurrency``). ``COUNT`` applies per
  stream, so a read over several streams can bring more than fits: the
  surplus waits in a local backlog, still pending on this worker (and kept
  fresh, below), and starts as slots free up.
* At least once. An entry is acked only when its fate is sealed: the handler
  returned (ack), it raised and gets another run (a retry, atomically with
  the ack), or it is given up (a dead letter, atomically with the ack). A
  worker that dies leaves its entries pending; any worker reclaims entries
  idle for ``reclaim_idle``. While a task runs, its worker touches the entry
  every ``reclaim_idle / 3``, so a long task is not mistaken for an orphan.
* Attempts: a task entry carries ``attempts``, the earlier runs that did not
  succeed. A delivery that was reclaimed counts as one more such run (its
  holder died or was stopped mid-run). A handler that raises on run ``n``
  (1-based) is retried as a new entry with ``attempts = n``, after
  ``task_retry_backoff * 2 ** (n - 1)`` seconds (capped at
  ``task_retry_backoff_max``), until ``task_max_attempts`` runs have failed;
  then it goes to the dead letters with the error and its traceback. An
  entry reclaimed after ``task_max_attempts`` runs is a poison task (it
  kills its workers): it goes to the dead letters without running again.
* Retries wait in Redis (``TaskStreams.retry`` / ``promote``), not in this
  process, so they survive its death; every worker promotes due retries.
* Bad input (not a task entry of this wire version, oversized, a task for
  another channel, a message type the consumer has no method for) is
  logged once with its stream and id, counted as ``malformed``, moved to
  the dead letters with its original fields and acked. Nothing is dropped
  silently and nothing stalls the loop.
* Shutdown: ``stop()`` takes no new task; running ones get
  ``shutdown_timeout`` to finish; one still running then is cancelled and
  not acked, so another worker runs it again (at least once).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, cast

import anyio
import anyio.abc

from channels_lite import wire
from channels_lite.exceptions import BrokerError, WireError
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.layer.task_streams import TaskEntry, TaskStreams
from channels_lite.tasks import Handler, TaskContext, TaskRegistry

from .config import Config

logger = logging.getLogger(__name__)

#: Longest wait between two looks at the delayed retries (other workers' too).
_PROMOTE_POLL = 1.0
#: Characters of an error (message and traceback) a dead letter keeps.
_ERROR_LIMIT = 8000


@dataclass
class TaskCounters:
    """What the runner did since it started (``channels-lite status`` shows them).

    Attributes:
        processed: tasks whose handler returned (acked).
        failed: handler runs that raised.
        retried: failed tasks scheduled for another run.
        dead_lettered: tasks given up after their last attempt (or poison).
        malformed: entries that were not valid tasks (dead-lettered too).
        reclaimed: entries taken over from a worker that stopped.
    """

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    malformed: int = 0
    reclaimed: int = 0


class TaskRunner:
    """Consumes the task channels of a registry inside a worker.

    Args:
        config: the worker's settings (``task_*``, ``reclaim_idle``,
            ``shutdown_timeout``).
        registry: the handlers, by task channel.
        layer: the worker's Redis layer (its connections run the queue).
        app_layer: the channel layer handlers get as ``ctx.channel_layer``.
        worker_id: this worker's consumer name in the group.
        stopping: set to stop taking tasks (the worker's own stop event).
        block: seconds a read waits for new tasks (``XREADGROUP BLOCK``),
            and so how long ``stop()`` may take to be noticed.
    """

    def __init__(
        self,
        config: Config,
        registry: TaskRegistry,
        layer: RedisStreamsChannelLayer,
        app_layer: Any,
        *,
        worker_id: str,
        stopping: anyio.Event | None = None,
        block: float = 1.0,
    ) -> None:
        self.config = config
        self.registry = registry
        self.streams = TaskStreams(layer, registry.channels)
        self.app_layer = app_layer
        self.worker_id = worker_id
        self.counters = TaskCounters()
        self.active = 0
        self._held: dict[tuple[str, bytes], TaskEntry] = {}  # running or in the backlog
        self._backlog: deque[TaskEntry] = deque()
        self._slot_freed = anyio.Event()
        self._retry_scheduled = anyio.Event()
        self._stopping = stopping if stopping is not None else anyio.Event()
        self._broker_down = False
        self._block_ms = max(1, int(block * 1000))
        self.done = anyio.Event()

    def stop(self) -> None:
        """Take no new task; running ones get ``shutdown_timeout`` to finish."""
        self._stopping.set()

    def statistics(self) -> dict[str, int]:
        """The counters, the tasks running now and the task concurrency."""
        return {
            **asdict(self.counters),
            "active": self.active,
            "concurrency": self.config.task_concurrency,
            "malformed_retries": self.streams.malformed_retries,
        }

    async def serve(
        self,
        state: dict[str, Any] | None = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume until ``stop()``, drain, return.

        ``task_status.started()`` is called once every group exists.

        Args:
            state: the app's lifespan state; each task gets a shallow copy.
        """
        try:
            await self.streams.ensure_groups()
            async with anyio.create_task_group() as service:
                # Promotion and touches go on while running tasks drain.
                service.start_soon(self._promote_loop)
                service.start_soon(self._touch_loop)
                async with anyio.create_task_group() as handlers:
                    channels = ", ".join(self.registry.channels)
                    logger.info(
                        "consuming task channels %s (task concurrency %d)",
                        channels,
                        self.config.task_concurrency,
                    )
                    task_status.started()
                    await self._pull(handlers, state or {})
                    await self._drain(handlers)
                service.cancel_scope.cancel()
        finally:
            self.done.set()

    # ------------------------------------------------------------------
    # Taking

    async def _pull(self, handlers: anyio.abc.TaskGroup, state: dict[str, Any]) -> None:
        config = self.config
        next_reclaim = anyio.current_time()  # at once: pick up what dead workers left
        while not self._stopping.is_set():
            free = config.task_concurrency - self.active
            if free <= 0:
                with anyio.move_on_after(1):
                    await self._slot_freed.wait()  # cancellation point: holds nothing
                continue
            if self._backlog:
                for _ in range(min(free, len(self._backlog))):
                    self._start(handlers, self._backlog.popleft(), state)
                continue
            try:
                entries: list[TaskEntry] = []
                if anyio.current_time() >= next_reclaim:
                    next_reclaim = anyio.current_time() + config.reclaim_idle
                    entries = await self._reclaim(free)
                if not entries:
                    # Bounded block: stop() is noticed within ``block``.
                    # Delivered entries are pending until settled, so none is
                    # lost if this process dies from here on.
                    entries = await self.streams.take(self.worker_id, free, self._block_ms)
                self._broker_ok()
            except BrokerError as exc:
                self._broker_failed(exc)
                await anyio.sleep(1)  # cancellation point: holds nothing
                continue
            for entry in entries:
                self._held[(entry.stream, entry.entry_id)] = entry
                if self.active < config.task_concurrency:
                    self._start(handlers, entry, state)
                else:
                    self._backlog.append(entry)

    async def _reclaim(self, count: int) -> list[TaskEntry]:
        idle_ms = int(self.config.reclaim_idle * 1000)
        entries = []
        for entry in await self.streams.reclaim(self.worker_id, idle_ms, count):
            if (entry.stream, entry.entry_id) in self._held:
                continue  # ours and running: the loop was too busy to touch it
            self.counters.reclaimed += 1
            logger.warning(
                "task stream %s: reclaimed entry %s from a worker that stopped (delivery %d)",
                entry.stream,
                entry.entry_id.decode(),
                entry.deliveries,
            )
            entries.append(entry)
        return entries

    def _start(
        self, handlers: anyio.abc.TaskGroup, entry: TaskEntry, state: dict[str, Any]
    ) -> None:
        self.active += 1
        handlers.start_soon(self._handle, entry, state)

    async def _drain(self, handlers: anyio.abc.TaskGroup) -> None:
        if self.active:
            logger.info("draining %d task(s)", self.active)
        with anyio.move_on_after(self.config.shutdown_timeout):
            while self.active:
                await self._slot_freed.wait()
        if self.active:
            # Not acked: they stay pending and another worker runs them again.
            logger.warning("shutdown timeout: cancelling %d task(s)", self.active)
        handlers.cancel_scope.cancel()

    # ------------------------------------------------------------------
    # Running and settling

    async def _handle(self, entry: TaskEntry, state: dict[str, Any]) -> None:
        try:
            await self._process(entry, state)
        except BrokerError as exc:
            # Redis failed while settling: the entry stays pending and is
            # reclaimed (run again) once idle. At least once.
            logger.warning(
                "task stream %s: entry %s not settled (%s); it will run again",
                entry.stream,
                entry.entry_id.decode(),
                exc,
            )
        finally:
            del self._held[(entry.stream, entry.entry_id)]
            self.active -= 1
            self._slot_freed.set()
            self._slot_freed = anyio.Event()

    async def _process(self, entry: TaskEntry, state: dict[str, Any]) -> None:
        checked = self._check(entry)
        if isinstance(checked, str):
            await self._reject(entry, checked)
            return
        task, handler = checked
        # Earlier runs that did not succeed: the failed ones the entry counts,
        # plus deliveries whose worker died or stopped before settling.
        runs = task.attempts + entry.deliveries - 1
        if runs >= self.config.task_max_attempts:
            logger.error(
                "task stream %s: entry %s abandoned after %d runs; moved to the dead letters",
                entry.stream,
                entry.entry_id.decode(),
                runs,
            )
            error = (
                f"Abandoned: {runs} runs without success, {entry.deliveries - 1} of them "
                "ended with their worker (it died or was stopped mid-run)"
            )
            await self._dead_letter(entry, error)
            self.counters.dead_lettered += 1
            return
        ctx = TaskContext(
            channel=task.channel,
            entry_id=entry.entry_id.decode(),
            attempts=runs,
            channel_layer=self.app_layer,
            state=dict(state),
            worker_id=self.worker_id,
        )
        try:
            await handler.run(task.message, ctx)
        except Exception as exc:
            # The app's exception stops here: the task failed, the worker goes on.
            self.counters.failed += 1
            await self._failed(entry, runs + 1, exc)
            return
        await self.streams.ack(entry)
        self.counters.processed += 1

    def _check(self, entry: TaskEntry) -> tuple[wire.Task, Handler] | str:
        """The task and its handler, or why the entry is not a task we can run."""
        try:
            envelope = wire.decode(self.streams.layer.unseal(entry.stream, entry.fields))
        except WireError as exc:
            return f"WireError: {exc}"
        if not isinstance(envelope, wire.Task):
            return f"WireError: a {type(envelope).__name__} entry on a task stream"
        channel = self.streams.channels[entry.stream]
        if envelope.channel != channel:
            return (
                f"UnknownTask: task for channel {envelope.channel!r} on the stream of {channel!r}"
            )
        handler = self.registry.get(channel)
        if handler is None:
            return f"UnknownTask: no handler for task channel {channel!r}"
        refused = handler.refuse(envelope.message)
        if refused is not None:
            return f"UnknownTask: {refused}"
        return envelope, handler

    async def _reject(self, entry: TaskEntry, error: str) -> None:
        self.counters.malformed += 1
        logger.warning(
            "task stream %s: entry %s is not a valid task, moved to the dead letters: %s",
            entry.stream,
            entry.entry_id.decode(),
            error,
        )
        await self._dead_letter(entry, error)

    async def _failed(self, entry: TaskEntry, failures: int, exc: Exception) -> None:
        config = self.config
        where = f"task stream {entry.stream}: entry {entry.entry_id.decode()}"
        if failures < config.task_max_attempts:
            delay = min(
                config.task_retry_backoff * 2 ** (failures - 1), config.task_retry_backoff_max
            )
            # Decoded afresh: the handler may have changed the message it got.
            # Checked before it ran (so unsealing cannot fail now).
            fields = self.streams.layer.unseal(entry.stream, entry.fields)
            task = cast(wire.Task, wire.decode(fields))
            try:
                fields = wire.encode(wire.Task(task.channel, task.message, failures))
            except WireError as error:  # the attempts field pushed it over the limit
                logger.error("%s failed and cannot be retried: %s", where, error, exc_info=exc)
            else:
                logger.warning(
                    "%s failed (run %d of %d), retrying in %.3g s",
                    where,
                    failures,
                    config.task_max_attempts,
                    delay,
                    exc_info=exc,
                )
                await self.streams.retry(entry, fields, delay)
                self.counters.retried += 1
                self._retry_scheduled.set()
                return
        else:
            logger.error(
                "%s failed on its last run (%d); moved to the dead letters",
                where,
                failures,
                exc_info=exc,
            )
        await self._dead_letter(entry, _describe(exc))
        self.counters.dead_lettered += 1

    async def _dead_letter(self, entry: TaskEntry, error: str) -> None:
        dead = wire.DeadLetter(entry.stream, entry.entry_id.decode(), entry.fields, error)
        # No size limit: an oversized entry is moved aside whole, byte for byte.
        await self.streams.dead_letter(entry, wire.encode(dead, max_size=sys.maxsize))

    # ------------------------------------------------------------------
    # Background duties

    async def _promote_loop(self) -> None:
        """Move due retries into their streams: ours as they fall due, others' each second."""
        while True:
            try:
                _, wait = await self.streams.promote()
            except BrokerError as exc:
                logger.debug("cannot promote task retries: %s", exc)
                wait = None
            delay = _PROMOTE_POLL if wait is None else min(wait, _PROMOTE_POLL)
            with anyio.move_on_after(delay):
                await self._retry_scheduled.wait()  # cancellation point: holds nothing
            if self._retry_scheduled.is_set():
                self._retry_scheduled = anyio.Event()

    async def _touch_loop(self) -> None:
        """Keep the idle time of held entries low: they belong to a live worker."""
        interval = self.config.reclaim_idle / 3
        while True:
            await anyio.sleep(interval)  # cancellation point: holds nothing
            held = list(self._held.values())
            if not held:
                continue
            try:
                await self.streams.touch(self.worker_id, held)
            except BrokerError as exc:
                logger.debug("cannot touch running tasks: %s", exc)

    def _broker_failed(self, exc: BaseException) -> None:
        if not self._broker_down:
            logger.warning("task streams: Redis failed (%s); retrying", exc)
        self._broker_down = True

    def _broker_ok(self) -> None:
        if self._broker_down:
            logger.warning("task streams: Redis is back")
        self._broker_down = False


def _describe(exc: BaseException) -> str:
    """``ExcType: message`` and the traceback, for a dead letter (bounded)."""
    head = f"{type(exc).__name__}: {exc}"
    trace = "".join(traceback.format_exception(exc)).rstrip()
    text = f"{head}\n{trace}"
    if len(text) > _ERROR_LIMIT:
        keep = _ERROR_LIMIT - len(head) - 6
        text = f"{head}\n...\n{trace[-keep:]}"
    return text
