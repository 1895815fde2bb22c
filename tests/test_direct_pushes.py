"""A push is written straight to its socket only when nothing of the socket's can be overtaken.

Why: the protocol server writes a push to an idle socket the moment its
layer reads it (``protocol_server/pushes.py``), framed once for every socket
of the entry, instead of waking each socket's bridge. The layer offers only
messages for a channel with nothing buffered (tests/channels_lite/
test_layer_on_arrival.py); the bridge must also decline while it holds a
message it has taken and not yet written: uvicorn's ``send`` waits while
the client's socket is full, and when the socket drains there is a moment
when it is writable again but the bridge has not run yet. A push written
then would overtake the app's message. End to end the moment is too short
to hit on purpose, so here a real bridge on a real Redis relays to a stand-in
for uvicorn's side of one socket, and the push is offered in that moment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from channels_lite import relay, wire
from channels_lite.layer import RedisStreamsChannelLayer
from protocol_server.bridge import ServerContext
from protocol_server.config import Config
from protocol_server.pushes import DirectPushes
from protocol_server.websocket import WebSocketBridge
from protocol_server.ws_protocols import FRAME_WRITER

pytestmark = pytest.mark.anyio

PREFIX = "direct"


class Socket:
    """uvicorn's side of one WebSocket: what reaches the client, in order.

    ``send`` waits while the socket is full (``drained`` not set), as
    uvicorn's does; ``write`` is the frame writer, which writes only while
    the socket is writable.
    """

    def __init__(self) -> None:
        self.out: list[str] = []
        self.writable = True
        self.drained = anyio.Event()
        self.drained.set()
        self.waiting = anyio.Event()  # a send is waiting for the socket

    async def send(self, message: dict[str, Any]) -> None:
        if not self.drained.is_set():
            self.waiting.set()
            await self.drained.wait()
        self.out.append(message.get("text") or message["type"])

    def write(self, frame: bytes) -> bool:
        if not self.writable:
            return False
        assert frame[0] == 0x81  # one text frame, whole
        assert frame[1] < 126  # short, unmasked
        self.out.append(frame[2:].decode())
        return True


@pytest.fixture
async def layers(redis_url: str) -> AsyncIterator[tuple[Any, DirectPushes, Any]]:
    direct = DirectPushes(max_size=1 << 20)
    layer = relay.make_layer(redis_url, PREFIX, max_message_size=1 << 21, on_arrival=direct)
    worker = RedisStreamsChannelLayer(hosts=[redis_url], prefix=PREFIX)
    yield layer, direct, worker
    await layer.close()
    await worker.close()


async def _until(condition: Any) -> None:
    """Wait for the bridge's state (it has no event to wait on), 5 s at most."""
    for _ in range(500):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("not within 5 s")


async def test_a_push_is_declined_while_the_bridge_holds_an_unwritten_message(
    layers: tuple[Any, DirectPushes, Any], redis_url: str
) -> None:
    layer, direct, worker = layers
    config = Config(redis_url=redis_url, prefix=PREFIX)
    ctx = ServerContext(config, layer, None, "ps1", direct=direct)  # type: ignore[arg-type]
    socket = Socket()
    scope = {"type": "websocket", "extensions": {FRAME_WRITER: {"write": socket.write}}}
    bridge = WebSocketBridge(ctx, scope, None, socket.send)
    bridge.channel = await layer.new_channel(ctx.channel_prefix)
    bridge.worker = "wk.test!1"  # where credit goes; nobody reads it here

    def push(text: str) -> bytes:
        return wire.encode_message({"type": relay.PUSH, "text": text})

    async with anyio.create_task_group() as tg:
        tg.start_soon(bridge._relay_to_client)
        await worker.send(bridge.channel, {"type": "websocket.accept"})
        await _until(lambda: bridge.parked and bridge.channel in direct.sockets)

        # Idle and accepted: written at once, by the hook.
        assert direct(bridge.channel, push("p1"))
        assert socket.out == ["websocket.accept", "p1"]

        # The client's socket fills; the app's message waits in uvicorn's send.
        socket.writable = False
        socket.drained = anyio.Event()
        await worker.send(bridge.channel, {"type": "websocket.send", "text": "a1"})
        with anyio.fail_after(5):
            await socket.waiting.wait()
        assert not direct(bridge.channel, push("p-full"))  # busy writing (and full)

        # It drains: writable again, and the bridge not yet run. A push
        # offered now must be declined (the layer then buffers it behind).
        socket.writable = True
        socket.drained.set()
        assert not bridge.parked
        assert not direct(bridge.channel, push("p2"))
        await _until(lambda: bridge.parked)
        assert socket.out == ["websocket.accept", "p1", "a1"]

        # Parked again, nothing left unwritten: straight through once more.
        assert direct(bridge.channel, push("p3"))
        assert socket.out == ["websocket.accept", "p1", "a1", "p3"]
        assert direct.written == 2
        tg.cancel_scope.cancel()
    bridge.close()
    assert bridge.channel not in direct.sockets
