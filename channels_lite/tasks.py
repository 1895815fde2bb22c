"""Background tasks: the registry an app declares its handlers in, and their dispatch.

A task is a message (a dict with a ``str`` ``type``, like any channel-layer
message) enqueued on a named *task channel*. Workers started with ``--tasks
module:registry`` consume the channels their registry declares (see
``worker/tasks.py`` and docs/architecture.md, "Background tasks")::

    from channels_lite.tasks import TaskRegistry

    tasks = TaskRegistry()

    @tasks.task("thumbnails")
    async def make_thumbnail(message, ctx):
        ...  # raise to have it retried
        await ctx.channel_layer.group_send("room", {"type": "thumb.ready"})

    tasks.consumer("emails", EmailConsumer)  # a Channels (Sync|Async)Consumer

Two kinds of handler:

* an ``async def handler(message, ctx)``, where ``ctx`` is a
  :class:`TaskContext`: the worker's channel layer, the lifespan state, and
  where the message came from;
* a Channels consumer class (or any ASGI app, such as ``Consumer.as_asgi()``
  or a ``ChannelNameRouter``), run as Channels' ``runworker`` runs it: an
  instance per message with the scope ``{"type": "channel", "channel":
  name}``, the message from ``receive()``, dispatched on its type
  (``"thumb.make"`` calls ``thumb_make``). A ``SyncConsumer``'s handler runs
  in a thread, as Channels runs it (``database_sync_to_async``). The consumer
  finds its channel layer as it always does, from ``CHANNEL_LAYERS``. A task
  has no client, so ``send()`` raises.

A handler that returns has done its task; one that raises is retried. This
module is pure dispatch: it never talks to Redis.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Handler", "TaskContext", "TaskRegistry"]

Message = dict[str, Any]
TaskFunction = Callable[[Message, "TaskContext"], Awaitable[Any]]
F = TypeVar("F", bound=TaskFunction)
C = TypeVar("C")

# The publisher's rule for task channel names (a group name's: ``client.py``).
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.\-]{1,99}")


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task function gets besides its message.

    Attributes:
        channel: the task channel the message was enqueued on.
        entry_id: the stream entry id; a retry is a new entry with a new id.
        attempts: earlier runs of this task that did not succeed (0 at first).
        channel_layer: the worker's channel layer: ``group_send`` from here
            reaches WebSocket clients whose apps joined the group.
        state: a shallow copy of the app's lifespan state.
        worker_id: the id of the worker running it.
    """

    channel: str
    entry_id: str
    attempts: int
    channel_layer: Any
    state: dict[str, Any] = field(default_factory=dict)
    worker_id: str = ""


class _StopApp(Exception):
    """Ends an ASGI app that asks for a second message (when Channels is absent)."""


def _stop_exception() -> type[Exception]:
    try:
        from channels.exceptions import StopConsumer
    except ImportError:  # plain ASGI apps work without Channels
        return _StopApp
    stop: type[Exception] = StopConsumer
    return stop


@dataclass(frozen=True, slots=True)
class Handler:
    """One registered handler: a task function, or an ASGI app (a Channels consumer).

    Attributes:
        channel: the task channel it consumes.
        function: the task function, or ``None`` for an app.
        app: the ASGI app, or ``None`` for a function.
        consumer_class: the Channels consumer class behind ``app``, if known;
            it lets a message whose type it has no method for be refused
            before it runs.
    """

    channel: str
    function: TaskFunction | None = None
    app: Any = None
    consumer_class: type | None = None

    def refuse(self, message: Message) -> str | None:
        """Why this handler can never handle ``message`` (``None``: it can try).

        A consumer without a method for the message's type would fail on
        every retry: such a message goes to the dead letters at once.
        """
        if self.consumer_class is None:
            return None
        method = str(message.get("type", "")).replace(".", "_")
        if method.startswith("_"):
            return f"message type {message.get('type')!r} has a leading underscore"
        if not callable(getattr(self.consumer_class, method, None)):
            name = self.consumer_class.__qualname__
            return f"{name} has no handler for message type {message.get('type')!r}"
        return None

    async def run(self, message: Message, ctx: TaskContext) -> None:
        """Run the handler on ``message``; its exceptions propagate (the task failed).

        Cancellation: the handler is cancelled where it awaits; a
        ``SyncConsumer``'s thread finishes on its own, unobserved.
        """
        if self.function is not None:
            await self.function(message, ctx)
            return
        await _run_app(self.app, self.channel, message)


async def _run_app(app: Any, channel: str, message: Message) -> None:
    """Give one message to a fresh instance of ``app``, as Channels' runworker does."""
    stop = _stop_exception()
    given = False

    async def receive() -> Message:
        nonlocal given
        if given:
            # Asked again: the message has been handled (Channels asks for the
            # next one only after dispatch returned). One message per
            # instance, so the instance stops here, the way Channels' own
            # consumers stop: StopConsumer.
            raise stop
        given = True
        return message

    async def send(event: Message) -> None:
        raise RuntimeError(
            f"task consumer on {channel!r} sent {event.get('type')!r}: a task has no "
            "client to send to; use the channel layer (group_send) instead"
        )

    with contextlib.suppress(stop):
        await app({"type": "channel", "channel": channel}, receive, send)


class TaskRegistry:
    """The task handlers of an app, by task channel; one handler per channel.

    A worker finds it with ``--tasks module:attribute`` and consumes every
    channel it declares.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def task(self, channel: str) -> Callable[[F], F]:
        """Decorate ``async def fn(message, ctx)`` as the handler of ``channel``.

        Raises:
            TypeError: the function is not an ``async def``.
            ValueError: a bad channel name, or ``channel`` has a handler already.
        """

        def register(fn: F) -> F:
            function: Any = fn  # unnarrowed: the check below is a TypeGuard
            if not inspect.iscoroutinefunction(function):
                raise TypeError(f"task handler {fn!r} must be an async function")
            self._add(Handler(channel, function=fn))
            return fn

        return register

    def consumer(self, channel: str, consumer: C) -> C:
        """Register a Channels consumer class (or any ASGI app) for ``channel``.

        Raises:
            TypeError: ``consumer`` is neither a consumer class nor callable.
            ValueError: a bad channel name, or ``channel`` has a handler already.
        """
        if isinstance(consumer, type) and hasattr(consumer, "as_asgi"):
            handler = Handler(channel, app=consumer.as_asgi(), consumer_class=consumer)
        elif callable(consumer):
            cls = getattr(consumer, "consumer_class", None)  # what as_asgi() sets
            handler = Handler(channel, app=consumer, consumer_class=cls)
        else:
            raise TypeError(f"{consumer!r} is not a Channels consumer class or an ASGI app")
        self._add(handler)
        return consumer

    def _add(self, handler: Handler) -> None:
        if not isinstance(handler.channel, str) or not _CHANNEL_RE.fullmatch(handler.channel):
            raise ValueError(
                f"task channel {handler.channel!r} must be 1-99 ASCII letters, digits, "
                "'-', '_' or '.'"
            )
        if handler.channel in self._handlers:
            raise ValueError(f"task channel {handler.channel!r} already has a handler")
        self._handlers[handler.channel] = handler

    @property
    def channels(self) -> tuple[str, ...]:
        """The task channels declared, in registration order."""
        return tuple(self._handlers)

    def get(self, channel: str) -> Handler | None:
        """The handler of ``channel``, or ``None``."""
        return self._handlers.get(channel)

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"<TaskRegistry {list(self._handlers)}>"
