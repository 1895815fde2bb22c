"""send_many: several messages in one broker call, in order, with capacity honoured."""

from __future__ import annotations

from typing import Any

import pytest

from channels_lite.exceptions import ChannelFull

from ._support import recv

pytestmark = pytest.mark.anyio


async def test_messages_arrive_in_order_across_channels(make_layer: Any) -> None:
    layer = make_layer()
    mine = await layer.new_channel()
    other = await layer.new_channel()
    await layer.send_many(
        [
            (mine, {"type": "m", "n": 1}),
            (other, {"type": "m", "n": 2}),
            (mine, {"type": "m", "n": 3}),
            ("plain.channel", {"type": "m", "n": 4}),
        ]
    )
    assert [(await recv(layer, mine))["n"], (await recv(layer, mine))["n"]] == [1, 3]
    assert (await recv(layer, other))["n"] == 2
    assert (await recv(layer, "plain.channel"))["n"] == 4
    assert layer.statistics().sent == 4


async def test_a_full_channel_is_reported_and_the_rest_is_sent(make_layer: Any) -> None:
    layer = make_layer(capacity=1)
    await layer.send("full.channel", {"type": "m"})
    with pytest.raises(ChannelFull, match=r"full\.channel"):
        await layer.send_many([("full.channel", {"type": "m"}), ("free.channel", {"type": "m"})])
    assert (await recv(layer, "free.channel"))["type"] == "m"


async def test_nothing_to_send_is_fine(make_layer: Any) -> None:
    layer = make_layer()
    await layer.send_many([])
    assert layer.statistics().sent == 0
