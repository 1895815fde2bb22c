"""Django Channels compatibility: our layers as a real ``CHANNEL_LAYERS`` backend.

Why: the layers promise to be drop-in Channels backends. These tests prove it
end to end with Channels' own machinery instead of calling the layer directly:
real ``AsyncWebsocketConsumer`` subclasses, driven by Channels'
``WebsocketCommunicator``, find the layer through ``get_channel_layer()`` from
``settings.CHANNEL_LAYERS``, receive on the process-specific channel Channels
asks ``new_channel()`` for, and use groups, point-to-point sends and
``ChannelFull`` exactly as an application does. The sync path is the one Django
views and Celery tasks take: ``async_to_sync(layer.group_send)`` from a worker
thread.

Every test runs on both backends (``backend`` from ``conftest.py``), so the
in-memory layer is proven to be a faithful stand-in for the Redis one.

Settings: Django is configured once for this module (``INSTALLED_APPS`` with
``channels``, nothing else) unless something configured it already. Each test
points ``CHANNEL_LAYERS`` at its own layer with ``override_settings``: its
``setting_changed`` signal is what makes Channels drop cached layers, so the
layer a test sees is always built from that test's configuration, and the
override is undone (resetting the cache again) after the layer is closed.

Absence of a message is proven with the spec's FIFO guarantee (see
``_support``), not by waiting for a timeout.
"""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import anyio
import anyio.to_thread
import django
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.exceptions import ChannelFull as ChannelsChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import override_settings

from channels_lite.exceptions import ChannelFull
from channels_lite.layer import InMemoryChannelLayer, RedisStreamsChannelLayer

from ._support import RECEIVE_TIMEOUT, assert_nothing_pending

pytestmark = pytest.mark.anyio


Communicator = Any  # Channels ships no type hints

BACKEND_PATHS = {
    "redis": "channels_lite.layer.RedisStreamsChannelLayer",
    "memory": "channels_lite.layer.InMemoryChannelLayer",
}
BACKEND_CLASSES = {"redis": RedisStreamsChannelLayer, "memory": InMemoryChannelLayer}
PREFIX = "djtest"
GROUP = "chat"


# ----------------------------------------------------------------------
# Consumers: written the way a Channels application writes them.


class ChatConsumer(AsyncWebsocketConsumer):
    """Joins ``chat`` on connect, broadcasts every frame to it, leaves on disconnect.

    The first frame it sends is ``{"channel": <its channel name>}``, so the
    test can address it directly and check it stopped receiving afterwards.
    """

    group = GROUP

    async def connect(self) -> None:
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"channel": self.channel_name}))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(self.group, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"text": event["text"]}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)


class EchoConsumer(AsyncWebsocketConsumer):
    """Answers every frame by sending it to itself through the layer first."""

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data=json.dumps({"channel": self.channel_name}))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.send(
            self.channel_name, {"type": "echo.reply", "text": text_data, "via": "self"}
        )

    async def echo_reply(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"echo": event["text"], "via": event["via"]}))


class JobConsumer(AsyncWebsocketConsumer):
    """Queues a job per frame on the ``jobs`` channel and reports ``ChannelFull``.

    It catches the exception the way existing Channels code does, by
    ``channels.exceptions.ChannelFull``, and reports the class it caught.
    """

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            await self.channel_layer.send("jobs", {"type": "job.run", "job": text_data})
        except ChannelsChannelFull as exc:
            cls = type(exc)
            await self.send(
                text_data=json.dumps(
                    {"busy": text_data, "error": f"{cls.__module__}.{cls.__name__}"}
                )
            )
        else:
            await self.send(text_data=json.dumps({"queued": text_data}))


# ----------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> None:
    if not settings.configured:
        settings.configure(INSTALLED_APPS=["channels"], CHANNEL_LAYERS={})
    django.setup()


UseLayer = Callable[..., Any]
Connect = Callable[[Any], Awaitable[tuple[Communicator, str | None]]]


@pytest.fixture
async def use_layer(backend: str, layer_hosts: list[str] | None) -> AsyncIterator[UseLayer]:
    """``use_layer(**config)``: make ``CHANNEL_LAYERS`` this backend with ``config``
    and return ``get_channel_layer()``. Closed and un-overridden at teardown, which
    fails if the layer left a connection open."""
    with ExitStack() as stack:
        layers: list[Any] = []

        def use(**config: Any) -> Any:
            config.setdefault("prefix", PREFIX)
            if backend == "redis":
                config.setdefault("hosts", layer_hosts)
            stack.enter_context(
                override_settings(
                    CHANNEL_LAYERS={
                        "default": {"BACKEND": BACKEND_PATHS[backend], "CONFIG": config}
                    }
                )
            )
            layer = get_channel_layer()
            assert type(layer) is BACKEND_CLASSES[backend]
            layers.append(layer)
            return layer

        yield use
        with collect_unclosed() as unclosed:
            with anyio.fail_after(10):
                while layers:
                    await layers.pop().close()
            stack.close()
            assert channel_layers.backends == {}  # the override's exit reset Channels' cache
    # close() closes this event loop's connections; anything still open now
    # was opened on another loop and never closed.
    assert unclosed == [], f"the closed layer left {describe(unclosed)}"


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(app)``: a connected ``WebsocketCommunicator`` and, for apps
    that announce it, the consumer's channel name. Disconnected at teardown."""
    clients: list[Communicator] = []

    async def connect_(app: Any) -> tuple[Communicator, str | None]:
        client = WebsocketCommunicator(app, "/ws/")
        clients.append(client)
        connected, _ = await client.connect(timeout=RECEIVE_TIMEOUT)
        assert connected
        channel = None
        if app.consumer_class in (ChatConsumer, EchoConsumer):
            channel = (await receive_json(client))["channel"]
        return client, channel

    yield connect_
    for client in clients:
        # _future: the app's task; the public ``future`` would start one.
        if client._future is not None and not client.future.done():
            await client.disconnect(timeout=RECEIVE_TIMEOUT)


async def receive_json(client: Communicator) -> Any:
    return await client.receive_json_from(timeout=RECEIVE_TIMEOUT)


@contextmanager
def collect_unclosed() -> Iterator[list[str]]:
    """Collect the ResourceWarnings (unclosed sockets, Redis connections,
    transports) of what becomes garbage in the block, garbage collection included.

    Why not let ``filterwarnings = error`` report them: raised inside
    ``__del__``, the warning aborts the finalizer before it closes the socket,
    so the socket warns again later, in whichever test is running then.
    Recording them lets every finalizer finish here and lets the test assert
    on them by name.
    """
    unclosed: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield unclosed
        for _ in range(3):  # a finalizer can free the next unclosed object
            gc.collect()
    unclosed.extend(str(w.message) for w in caught if issubclass(w.category, ResourceWarning))


def describe(unclosed: list[str]) -> str:
    connections = sum(w.startswith("unclosed Connection") for w in unclosed)
    return f"{connections} Redis connection(s) open ({len(unclosed)} ResourceWarnings): {unclosed}"


def sweep_earlier_garbage() -> None:
    """Finalize what earlier tests left for the garbage collector, before this
    one starts counting: a failed test's traceback (``sys.last_traceback``,
    dropped when the next test's call phase starts) keeps its layer alive past
    its own teardown, and its leak must not be reported a second time here.
    Call it in the test body, not in a fixture: setup runs too early."""
    with collect_unclosed():
        pass


# ----------------------------------------------------------------------
# Tests


async def test_layer_is_the_configured_channels_backend(use_layer: UseLayer) -> None:
    layer = use_layer(expiry=30, capacity=7)
    assert get_channel_layer() is layer  # cached by Channels, built once
    assert layer.prefix == PREFIX
    assert layer.expiry == 30
    assert layer.capacity == 7
    assert "groups" in layer.extensions


async def test_chat_group_broadcast_and_discard(use_layer: UseLayer, connect: Connect) -> None:
    layer = use_layer()
    alice, alice_channel = await connect(ChatConsumer.as_asgi())
    bob, bob_channel = await connect(ChatConsumer.as_asgi())
    assert alice_channel != bob_channel
    assert alice_channel is not None
    assert "!" in alice_channel  # Channels got a process-specific channel from us

    # A frame from one socket reaches every socket of the group, sender included.
    await alice.send_to(text_data="hello room")
    assert await receive_json(alice) == {"text": "hello room"}
    assert await receive_json(bob) == {"text": "hello room"}
    await bob.send_to(text_data="hi alice")
    assert await receive_json(alice) == {"text": "hi alice"}
    assert await receive_json(bob) == {"text": "hi alice"}

    # The sender leaves: its consumer ends cleanly and discards itself.
    await alice.disconnect(timeout=RECEIVE_TIMEOUT)
    assert alice.future.done()
    assert alice.future.exception() is None

    # A publisher outside any consumer (a view, a task) still reaches the rest.
    await get_channel_layer().group_send(GROUP, {"type": "chat.message", "text": "from outside"})
    assert await receive_json(bob) == {"text": "from outside"}
    await bob.send_to(text_data="anyone?")
    assert await receive_json(bob) == {"text": "anyone?"}

    # Neither group_send was queued for the discarded channel: the next message
    # on it is a fresh marker (FIFO), so alice's channel is no longer a member.
    await assert_nothing_pending(layer, alice_channel)
    assert await alice.receive_nothing()
    # And nothing extra reached bob: the next frame is the next broadcast.
    await layer.group_send(GROUP, {"type": "chat.message", "text": "last"})
    assert await receive_json(bob) == {"text": "last"}


async def test_consumer_sends_to_its_own_channel(use_layer: UseLayer, connect: Connect) -> None:
    layer = use_layer()
    one, one_channel = await connect(EchoConsumer.as_asgi())
    two, two_channel = await connect(EchoConsumer.as_asgi())
    assert one_channel is not None
    assert two_channel is not None

    # Both consumers' process-specific channels share one stream; each gets
    # only its own messages.
    await one.send_to(text_data="one-1")
    await two.send_to(text_data="two-1")
    await one.send_to(text_data="one-2")
    assert await receive_json(one) == {"echo": "one-1", "via": "self"}
    assert await receive_json(one) == {"echo": "one-2", "via": "self"}
    assert await receive_json(two) == {"echo": "two-1", "via": "self"}

    # Point to point from outside the consumer, as a worker replying to it.
    await layer.send(two_channel, {"type": "echo.reply", "text": "for two", "via": "worker"})
    assert await receive_json(two) == {"echo": "for two", "via": "worker"}
    await two.send_to(text_data="two-2")
    assert await receive_json(two) == {"echo": "two-2", "via": "self"}
    await one.send_to(text_data="one-3")
    assert await receive_json(one) == {"echo": "one-3", "via": "self"}


async def test_channel_full_is_channels_channel_full(use_layer: UseLayer, connect: Connect) -> None:
    layer = use_layer(capacity=1)
    client, _ = await connect(JobConsumer.as_asgi())

    await client.send_to(text_data="first")
    assert await receive_json(client) == {"queued": "first"}
    await client.send_to(text_data="second")
    assert await receive_json(client) == {
        "busy": "second",
        "error": "channels_lite.exceptions.ChannelFull",
    }
    # The consumer survived the full channel and goes on working.
    assert not client.future.done()

    # Only the first job was queued; once it is taken there is room again.
    with anyio.fail_after(RECEIVE_TIMEOUT):
        assert await layer.receive("jobs") == {"type": "job.run", "job": "first"}
    await client.send_to(text_data="third")
    assert await receive_json(client) == {"queued": "third"}

    # Outside a consumer too: our exception is Channels' exception.
    with pytest.raises(ChannelsChannelFull) as caught:
        await layer.send("jobs", {"type": "job.run", "job": "fourth"})
    assert isinstance(caught.value, ChannelFull)
    with anyio.fail_after(RECEIVE_TIMEOUT):
        assert await layer.receive("jobs") == {"type": "job.run", "job": "third"}


def notify_chat(text: str) -> None:
    """What a Django view or a Celery task does: plain sync code."""
    async_to_sync(get_channel_layer().group_send)(GROUP, {"type": "chat.message", "text": text})


async def run_in_django_view_thread(func: Callable[[], None]) -> None:
    # A sync view under ASGI: async_to_sync hops back onto the server's loop.
    await sync_to_async(func)()


async def run_in_plain_thread(func: Callable[[], None]) -> None:
    # A Celery task / management command: no loop anywhere, async_to_sync
    # runs the call in a brand-new event loop each time.
    await anyio.to_thread.run_sync(func)


@pytest.mark.parametrize("run_sync", [run_in_django_view_thread, run_in_plain_thread])
async def test_async_to_sync_group_send_from_a_worker_thread(
    use_layer: UseLayer,
    connect: Connect,
    run_sync: Callable[[Callable[[], None]], Awaitable[None]],
) -> None:
    sweep_earlier_garbage()
    layer = use_layer()
    alice, _ = await connect(ChatConsumer.as_asgi())
    bob, _ = await connect(ChatConsumer.as_asgi())

    def publish_twice() -> None:
        # Twice: with no outer loop, the second call meets a new event loop.
        notify_chat("sync 1")
        notify_chat("sync 2")

    with collect_unclosed() as unclosed:
        await run_sync(publish_twice)
        for client in (alice, bob):
            assert await receive_json(client) == {"text": "sync 1"}
            assert await receive_json(client) == {"text": "sync 2"}

        await run_sync(lambda: notify_chat("sync 3"))
        for client in (alice, bob):
            assert await receive_json(client) == {"text": "sync 3"}

    # The consumers' own loop still uses the layer normally afterwards.
    await alice.send_to(text_data="async again")
    for client in (alice, bob):
        assert await receive_json(client) == {"text": "async again"}
    await layer.group_send(GROUP, {"type": "chat.message", "text": "done"})
    for client in (alice, bob):
        assert await receive_json(client) == {"text": "done"}

    # Three sync calls left no Redis connection behind (a Celery worker makes
    # millions). The last loop's are checked when the layer is closed.
    assert unclosed == [], f"sync group_send left {describe(unclosed)}"


def test_sync_only_process_uses_the_layer(
    django_settings: None, backend: str, layer_hosts: list[str] | None
) -> None:
    """A process with no event loop at all (a sync worker) sends and receives."""
    sweep_earlier_garbage()
    config: dict[str, Any] = {"prefix": PREFIX}
    if backend == "redis":
        config["hosts"] = layer_hosts
    with (
        collect_unclosed() as unclosed,
        override_settings(
            CHANNEL_LAYERS={"default": {"BACKEND": BACKEND_PATHS[backend], "CONFIG": config}}
        ),
    ):
        layer = get_channel_layer()
        async_to_sync(layer.group_add)("sync.group", "sync.member")
        async_to_sync(layer.group_send)("sync.group", {"type": "sync.hello", "n": 1})
        async_to_sync(layer.send)("sync.member", {"type": "sync.hello", "n": 2})
        assert async_to_sync(layer.receive)("sync.member") == {"type": "sync.hello", "n": 1}
        assert async_to_sync(layer.receive)("sync.member") == {"type": "sync.hello", "n": 2}
        del layer
    # Each call ran in a fresh event loop that asyncio.run closed at once; none
    # may leave its Redis connection open.
    assert unclosed == [], f"sync calls left {describe(unclosed)}"
