"""``on_arrival``: a consumer that takes some messages the moment the layer reads them.

The protocol server writes pushes to idle sockets this way, framed once for
all of them, instead of waking a receive per socket. What makes that safe is
the layer's rule: only a message for a channel with nothing buffered is
offered, so a message taken on arrival never overtakes one waiting to be
received; what the hook declines is buffered as usual. Redis backend: the
in-memory layer reads no stream.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from channels_lite import wire

pytestmark = pytest.mark.anyio


class Taker:
    """Takes messages of type ``take``; records every offer."""

    def __init__(self) -> None:
        self.offered: list[tuple[str, str]] = []
        self.taken: list[dict[str, Any]] = []
        self.arrived = anyio.Event()

    def __call__(self, channel: str, body: bytes) -> bool:
        message = wire.decode_message(body)
        self.offered.append((channel, message["type"]))
        if message["type"] != "take":
            return False
        self.taken.append(message)
        self.arrived.set()
        return True


@pytest.mark.parametrize("specific", [True, False], ids=["process-specific", "normal"])
async def test_an_idle_channels_message_is_offered_as_it_arrives(
    make_redis_layer: Any, specific: bool
) -> None:
    taker = Taker()
    receiver = make_redis_layer(on_arrival=taker)
    sender = make_redis_layer()
    channel = await receiver.new_channel() if specific else "test.arrivals"
    got: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:

        async def receive_one() -> None:
            got.append(await receiver.receive(channel))

        tg.start_soon(receive_one)  # the read of the stream is under way
        await anyio.sleep(0.1)
        await sender.send(channel, {"type": "take", "n": 1})
        with anyio.fail_after(5):
            await taker.arrived.wait()
        assert got == []  # taken on arrival: the receive still waits
        await sender.send(channel, {"type": "keep", "n": 2})
    assert taker.taken == [{"type": "take", "n": 1}]
    assert got == [{"type": "keep", "n": 2}]  # declined: received as usual
    assert taker.offered == [(channel, "take"), (channel, "keep")]
    assert receiver.statistics().received == 2


async def test_nothing_is_offered_while_the_channel_has_messages_buffered(
    make_redis_layer: Any,
) -> None:
    """Four messages read in one go: the first is offered (and declined);
    the rest arrive behind it, so they are buffered, not offered, and all
    four are received in order."""
    taker = Taker()
    receiver = make_redis_layer(on_arrival=taker)
    sender = make_redis_layer()
    channel = await receiver.new_channel()
    messages = [
        {"type": "keep", "n": 0},
        {"type": "take", "n": 1},
        {"type": "keep", "n": 2},
        {"type": "take", "n": 3},
    ]
    for message in messages:
        await sender.send(channel, message)
    with anyio.fail_after(5):
        got = [await receiver.receive(channel) for _ in messages]
    assert got == messages
    assert taker.offered == [(channel, "keep")]
    assert taker.taken == []


async def test_an_expired_message_is_not_offered(make_redis_layer: Any) -> None:
    taker = Taker()
    receiver = make_redis_layer(on_arrival=taker, expiry=0.3)
    sender = make_redis_layer(expiry=0.3)
    channel = await receiver.new_channel()
    await sender.send(channel, {"type": "take", "n": 1})
    await anyio.sleep(0.5)
    await sender.send(channel, {"type": "keep", "n": 2})
    with anyio.fail_after(5):
        assert await receiver.receive(channel) == {"type": "keep", "n": 2}
    assert taker.taken == []
    assert receiver.statistics().expired >= 1


async def test_a_hook_that_raises_declines_and_the_stream_reads_on(
    make_redis_layer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the hook must not wedge the read every receive of the
    stream shares: the message is buffered as if declined, and logged."""

    def broken(channel: str, body: bytes) -> bool:
        raise RuntimeError("bug in the hook")

    receiver = make_redis_layer(on_arrival=broken)
    sender = make_redis_layer()
    first, second = await receiver.new_channel(), await receiver.new_channel()
    got: dict[str, dict[str, Any]] = {}
    with anyio.fail_after(5):  # a wedged read would hang the receives
        async with anyio.create_task_group() as tg:

            async def receive(channel: str) -> None:
                got[channel] = await receiver.receive(channel)

            tg.start_soon(receive, first)
            tg.start_soon(receive, second)
            await anyio.sleep(0.1)  # both wait on the stream's one read
            await sender.send(first, {"type": "one"})
            await sender.send(second, {"type": "two"})
    assert got == {first: {"type": "one"}, second: {"type": "two"}}
    assert "on_arrival failed" in caplog.text
