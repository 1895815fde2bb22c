"""Publishing from outside: send to channels and groups, enqueue background tasks.

For services that are not part of a deployment (a Django view, a Celery task,
a cron script, another asyncio service) but must reach its apps.

* :class:`AsyncPublisher` is for code that runs in an event loop. Sends go
  through a :class:`~channels_lite.layer.RedisStreamsChannelLayer`, so they
  have exactly the layer's semantics: capacity (``ChannelFull``), expiry, and
  one entry per destination stream for ``group_send``. It may be used from
  several event loops in turn (the layer keeps connections per loop).
* :class:`Publisher` is the same API for plain synchronous code. It owns one
  private event loop in one daemon thread, started on first use; every call
  is handed to that loop (``run_coroutine_threadsafe``) and waited for with a
  timeout. The caller's event loop, if it has one, is never touched, so the
  "Event loop is closed" and "attached to a different loop" errors of
  ``async_to_sync`` around a shared Redis client cannot happen: the only loop
  that ever sees the Redis connections is the Publisher's own. It is safe
  from any number of threads, and after ``fork()`` (Celery's prefork pool,
  ``gunicorn --preload``) the child starts a loop of its own.

Tasks: ``enqueue`` appends a :class:`wire.Task` to the task channel's stream
(``XADD MAXLEN ~ task_maxlen``) and makes sure the workers' consumer group
exists from the start of the stream, so a task enqueued before any worker ran
is still delivered (at least once, see ``docs/wire-protocol.md``).

This module imports no Redis client: Redis is the layer package's business.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from . import keys, wire
from .config import PublisherConfig
from .exceptions import BrokerUnavailable, InvalidChannelName
from .layer import LayerStatistics, RedisStreamsChannelLayer
from .layer._names import check_group, check_message
from .layer._stats import Counters
from .layer.queue import WorkQueue

__all__ = ["AsyncPublisher", "Publisher", "PublisherConfig"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncPublisher:
    """Send to channels and groups and enqueue tasks, from an event loop.

    Args:
        config: the settings; ``None`` reads them from the environment
            (:meth:`PublisherConfig.from_env`).

    Use as ``async with AsyncPublisher.from_url(url) as publisher: ...`` or
    call :meth:`close` when done; a closed publisher reconnects if used again.
    """

    def __init__(self, config: PublisherConfig | None = None) -> None:
        self.config = config if config is not None else PublisherConfig.from_env()
        self.layer = RedisStreamsChannelLayer(
            hosts=[self.config.redis_url],
            prefix=self.config.prefix,
            expiry=self.config.expiry,
            group_expiry=self.config.group_expiry,
            capacity=self.config.capacity,
            channel_capacity=self.config.channel_capacity,
            max_message_size=self.config.max_message_size,
            keys=self.config.keys,
            seal=self.config.seal,
        )
        self._task_groups: set[str] = set()

    @classmethod
    def from_url(
        cls, redis_url: str | None = None, *, prefix: str | None = None, **options: Any
    ) -> AsyncPublisher:
        """A publisher for ``redis_url``; anything not given comes from the environment.

        ``redis_url`` defaults to ``CHANNELS_LITE_REDIS_URL``, then
        ``REDIS_URL``; ``prefix`` to ``CHANNELS_LITE_PREFIX``, then ``"asgi"``;
        ``options`` are other :class:`PublisherConfig` fields.

        Raises:
            ConfigError: an invalid setting.
        """
        return cls(PublisherConfig.from_env(redis_url=redis_url, prefix=prefix, **options))

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``, as the channel layer's ``send`` does.

        Raises:
            InvalidChannelName, InvalidMessage: bad arguments (``TypeError``).
            WireError: a value has no wire form, or the message is too large.
            ChannelFull: the channel holds ``capacity`` undelivered messages.
            BrokerUnavailable, BrokerError: Redis failed.

        Cancellation: the message may or may not have been sent.
        """
        await self.layer.send(channel, message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``, as the layer's ``group_send`` does.

        A member whose stream is at capacity is skipped, logged and counted
        in ``statistics().dropped``; the others still receive.

        Raises:
            As :meth:`send`, except ``ChannelFull``.

        Cancellation: some members may have been sent the message.
        """
        await self.layer.group_send(group, message)

    async def enqueue(self, task_channel: str, message: dict[str, Any]) -> str:
        """Append a background task for the workers serving ``task_channel``.

        Returns the task's stream entry id. Delivery is at least once: a
        task may run twice if its worker dies mid-run, never zero times once
        this returned (unless the stream outgrows ``task_maxlen``).

        Raises:
            InvalidChannelName, InvalidMessage: bad arguments (``TypeError``).
            WireError: a value has no wire form, or the task is too large.
            BrokerUnavailable, BrokerError: Redis failed.

        Cancellation: the task may or may not have been enqueued.
        """
        check_task_channel(task_channel)
        check_message(message)
        fields = wire.encode(
            wire.Task(task_channel, message), max_size=self.config.max_message_size
        )
        queue = WorkQueue(
            self.layer,
            keys.task_stream(self.config.prefix, task_channel),
            keys.TASKS_GROUP,
            maxlen=self.config.task_maxlen,
        )
        if queue.stream not in self._task_groups:
            # Created from id 0: what is enqueued before the first worker
            # starts is delivered to it. Once per stream and publisher.
            await queue.ensure_group()
            self._task_groups.add(queue.stream)
        entry_id = await queue.offer(fields)
        return entry_id.decode()

    def statistics(self) -> LayerStatistics:
        """Counters of this publisher: ``sent``, ``full``, ``dropped``, ..."""
        return self.layer.statistics()

    async def close(self) -> None:
        """Close this event loop's Redis connections. Idempotent."""
        await self.layer.close()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def check_task_channel(name: object) -> str:
    """Return ``name`` if it is a valid task channel name, else raise InvalidChannelName."""
    try:
        return check_group(name)
    except InvalidChannelName:
        raise InvalidChannelName(
            f"task channel name {name!r} must be a str shorter than 100 characters "
            "containing only ASCII letters, digits, hyphens, underscores and periods"
        ) from None


class Publisher:
    """The :class:`AsyncPublisher` API for synchronous code, safe from any thread.

    Every call blocks the calling thread until Redis has answered, at most
    ``config.timeout`` seconds, while the work runs on the Publisher's own
    event loop in its own daemon thread (started on first use). One
    Publisher serves a whole process: create it once (a module global is
    fine, also before a fork) and share it between threads.

    Called from inside a running event loop it still works, but it blocks
    that loop for the duration of the call: use :class:`AsyncPublisher` there.

    Args:
        config: the settings; ``None`` reads them from the environment.

    :meth:`close` (or leaving a ``with`` block) waits for calls in flight,
    closes the connections and stops the thread; a Publisher that is never
    closed is closed when it is garbage-collected or at interpreter exit.
    """

    def __init__(self, config: PublisherConfig | None = None) -> None:
        self.config = config if config is not None else PublisherConfig.from_env()
        self._lock = threading.Lock()
        self._runner: _Runner | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False
        _publishers.add(self)

    @classmethod
    def from_url(
        cls, redis_url: str | None = None, *, prefix: str | None = None, **options: Any
    ) -> Publisher:
        """As :meth:`AsyncPublisher.from_url`."""
        return cls(PublisherConfig.from_env(redis_url=redis_url, prefix=prefix, **options))

    def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; see :meth:`AsyncPublisher.send`.

        Raises:
            As :meth:`AsyncPublisher.send`; ``BrokerUnavailable`` also when
            no answer came within ``timeout`` (the message may have been sent).
            RuntimeError: the Publisher is closed.
        """
        self._call(lambda p: p.send(channel, message))

    def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``; see :meth:`AsyncPublisher.group_send`.

        Raises:
            As :meth:`send`, except ``ChannelFull``.
        """
        self._call(lambda p: p.group_send(group, message))

    def enqueue(self, task_channel: str, message: dict[str, Any]) -> str:
        """Enqueue a background task; returns its entry id. See :meth:`AsyncPublisher.enqueue`.

        Raises:
            As :meth:`send`, except ``ChannelFull``.
        """
        return self._call(lambda p: p.enqueue(task_channel, message))

    def statistics(self) -> LayerStatistics:
        """Counters since the Publisher's thread started (``sent``, ``dropped``, ...)."""
        runner = self._runner
        if runner is None:
            return Counters().snapshot()
        return runner.publisher.statistics()

    def close(self) -> None:
        """Wait for calls in flight, close the connections, stop the thread. Idempotent.

        Raises:
            RuntimeError: called from the Publisher's own thread.
        """
        with self._lock:
            runner, finalizer = self._runner, self._finalizer
            if runner is not None and threading.current_thread() is runner.thread:
                raise RuntimeError("a Publisher cannot be closed from its own thread")
            self._closed = True
            self._runner = self._finalizer = None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[AsyncPublisher], Coroutine[Any, Any, T]]) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Publisher is closed")
            runner = self._runner
            if runner is None:
                runner = self._runner = _Runner(self.config)
                # runner.stop, nothing of self: the finalizer must not keep self alive.
                self._finalizer = weakref.finalize(self, runner.stop, self.config.timeout)
            if threading.current_thread() is runner.thread:
                raise RuntimeError("a Publisher cannot be called from its own thread")
            # Submitted under the lock, so close() cannot stop the loop between
            # the check above and the hand-over.
            future = runner.submit(fn)
        done, _ = concurrent.futures.wait([future], self.config.timeout)
        if not done:
            future.cancel()
            raise BrokerUnavailable(
                f"no answer from Redis within {self.config.timeout} s "
                "(the call may or may not have taken effect)"
            )
        return future.result()

    def _forget_after_fork(self) -> None:
        # In a forked child the parent's thread does not exist and its loop's
        # sockets are the parent's: keep them referenced (never closed or
        # collected here) and start afresh on the next call.
        self._lock = threading.Lock()
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._runner is not None:
            _orphans.append(self._runner)
        self._runner = self._finalizer = None


class _Runner:
    """One event loop in one daemon thread, running one AsyncPublisher."""

    def __init__(self, config: PublisherConfig) -> None:
        self.publisher = AsyncPublisher(config)  # first: it may refuse the config
        self.loop = asyncio.new_event_loop()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._pending_lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._run, name="channels-lite-publisher", daemon=True
        )
        self.thread.start()

    def submit(
        self, fn: Callable[[AsyncPublisher], Coroutine[Any, Any, T]]
    ) -> concurrent.futures.Future[T]:
        future = asyncio.run_coroutine_threadsafe(fn(self.publisher), self.loop)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self._shutdown())
            except Exception:  # the thread ends either way
                logger.warning("closing the publisher's connections failed", exc_info=True)
            finally:
                asyncio.set_event_loop(None)
                self.loop.close()

    async def _shutdown(self) -> None:
        # Only calls that outlived stop()'s wait are left: they are cancelled.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.publisher.close()
        await self.loop.shutdown_asyncgens()

    def stop(self, timeout: float) -> None:
        with self._pending_lock:
            pending = list(self._pending)
        concurrent.futures.wait(pending, timeout)
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)


_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()
_orphans: list[_Runner] = []


def _after_fork_in_child() -> None:
    for publisher in list(_publishers):
        publisher._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
