"""A tour of the channel layer: point-to-point, groups and capacity, in one process.

Runs on the in-memory layer (no Redis needed) unless ``REDIS_URL`` is set, in
which case the very same code runs on the Redis Streams layer. Three "chat
clients" (process-specific channels, as Channels consumers get) join a group;
one message is broadcast to all of them; then a direct message goes to one;
finally a full channel shows ``ChannelFull``.

    python examples/layer_demo.py
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/layer_demo.py
"""

from __future__ import annotations

import asyncio
import os

from channels_lite import ChannelFull, InMemoryChannelLayer, RedisStreamsChannelLayer
from channels_lite.layer import BaseChannelLayer


def make_layer() -> BaseChannelLayer:
    url = os.environ.get("REDIS_URL")
    if url:
        print(f"layer: RedisStreamsChannelLayer on {url}")
        return RedisStreamsChannelLayer(hosts=[url], prefix="demo", capacity=3)
    print("layer: InMemoryChannelLayer (set REDIS_URL to use Redis)")
    return InMemoryChannelLayer(prefix="demo", capacity=3)


async def client(layer: BaseChannelLayer, name: str, channel: str, expect: int) -> None:
    for _ in range(expect):
        message = await layer.receive(channel)
        print(f"  {name} got {message['type']}: {message['text']!r}")


async def main() -> None:
    layer = make_layer()
    names = ["alice", "bob", "carol"]
    channels = {name: await layer.new_channel() for name in names}
    for channel in channels.values():
        await layer.group_add("chat", channel)

    print("broadcast to group 'chat' (one entry per process stream, three deliveries):")
    await layer.group_send("chat", {"type": "chat.message", "text": "hello, everyone"})
    await asyncio.gather(*(client(layer, n, c, 1) for n, c in channels.items()))

    print("direct message to bob:")
    await layer.send(channels["bob"], {"type": "chat.direct", "text": "psst, bob"})
    await client(layer, "bob", channels["bob"], 1)

    print("capacity is 3: the fourth undelivered message is refused")
    try:
        for i in range(4):
            await layer.send("demo.queue", {"type": "job", "text": f"job {i}"})
    except ChannelFull as exc:
        print(f"  ChannelFull: {exc}")

    print(f"statistics: {layer.statistics()}")
    await layer.flush()
    await layer.close()


if __name__ == "__main__":
    asyncio.run(main())
