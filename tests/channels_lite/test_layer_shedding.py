"""Shedding: what a layer's buffer drops for a consumer that has fallen behind.

The protocol server's sockets are such consumers: a slow WebSocket client
stops its bridge from receiving, and what arrives for it waits in the
layer's buffer for its channel. The app's events there are bounded by flow
control and must all arrive; pushes from outside are bounded by nothing, so
the oldest of them go (``Shedding``). Redis backend: the in-memory layer has
no such buffer.
"""

from __future__ import annotations

from typing import Any

import pytest

from channels_lite import wire
from channels_lite.layer import Shedding

pytestmark = pytest.mark.anyio


def _is_push(body: bytes) -> bool:
    return bool(wire.decode_message(body)["type"] == "push")


async def _behind(make_redis_layer: Any, shedding: Shedding, messages: list[dict[str, Any]]) -> Any:
    """A consumer that received nothing while ``messages`` were sent, then
    one receive that takes them all into the buffer (one fetch)."""
    receiver = make_redis_layer(shedding=shedding)
    sender = make_redis_layer()
    channel = await receiver.new_channel()
    for message in messages:
        await sender.send(channel, message)
    return receiver, channel


async def test_the_oldest_sheddable_messages_go_beyond_max_messages(
    make_redis_layer: Any,
) -> None:
    shed: list[str] = []
    shedding = Shedding(max_messages=2, max_bytes=10**6, sheddable=_is_push, on_shed=shed.append)
    keep = [{"type": "keep", "n": n} for n in range(3)]
    pushes = [{"type": "push", "n": n} for n in range(5)]
    receiver, channel = await _behind(make_redis_layer, shedding, [*keep[:2], *pushes, keep[2]])

    got = [await receiver.receive(channel) for _ in range(5)]

    # What is never shed all arrives, in order, and does not count against
    # the bound; of the pushes, the newest two.
    assert got == [keep[0], keep[1], pushes[3], pushes[4], keep[2]]
    assert shed == [channel] * 3
    assert receiver.statistics().dropped == 3


async def test_the_oldest_sheddable_messages_go_beyond_max_bytes(make_redis_layer: Any) -> None:
    shed: list[str] = []
    shedding = Shedding(max_messages=1000, max_bytes=2500, sheddable=_is_push, on_shed=shed.append)
    pushes = [{"type": "push", "n": n, "pad": "x" * 1000} for n in range(5)]
    receiver, channel = await _behind(make_redis_layer, shedding, pushes)

    got = [(await receiver.receive(channel))["n"] for _ in range(2)]

    assert got == [3, 4]  # two of about 1 KB fit in 2,500 bytes
    assert len(shed) == receiver.statistics().dropped == 3


async def test_nothing_is_shed_for_a_consumer_that_keeps_up(make_redis_layer: Any) -> None:
    shed: list[str] = []
    shedding = Shedding(max_messages=2, max_bytes=10**6, sheddable=_is_push, on_shed=shed.append)
    receiver = make_redis_layer(shedding=shedding)
    sender = make_redis_layer()
    channel = await receiver.new_channel()
    for n in range(10):
        await sender.send(channel, {"type": "push", "n": n})
        assert (await receiver.receive(channel))["n"] == n
    assert shed == []
