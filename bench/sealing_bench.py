"""What a keyring costs per message: sealing on write, checking on read.

    .venv/bin/python bench/sealing_bench.py                       # codec only, ~10 s
    .venv/bin/python bench/sealing_bench.py --redis-url redis://127.0.0.1:6379/0
                                                                 # also the layer, end to end

Codec: microseconds per channel message to make its entry fields (what
``send`` does before Redis) and to split them (what ``receive`` does after),
without a keyring, with ``sign`` and with ``encrypt``, for a small
WebSocket-sized message, 4 KiB and a 256 KiB relay chunk. Each figure is the
best of five timings, so background load inflates it less.

Layer (with ``--redis-url``; it flushes nothing but writes ``bench-seal:*``
keys and deletes them): one sender and one receiver stream N messages to a
process-specific channel, messages per second for each mode.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
import timeit

from channels_lite import wire
from channels_lite.layer import RedisStreamsChannelLayer
from channels_lite.sealing import Keyring

KEY = "bench:" + base64.b64encode(os.urandom(32)).decode()
STREAM = "asgi:ch:ps.0123456789ab!"
to = ("ps.0123456789ab!c1",)
SIZES = {"64 B": 64, "4 KiB": 4096, "256 KiB": 256 * 1024}


def per_call_us(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def codec() -> None:
    print(f"{'size':>8} {'mode':>8} {'write us':>10} {'read us':>10}")
    for label, size in SIZES.items():
        body = wire.encode_message({"type": "websocket.send", "bytes": os.urandom(size)})
        number = max(200, 200_000 // (1 + size // 256))
        for mode in ("none", "sign", "encrypt"):
            keyring = None if mode == "none" else Keyring(KEY, mode)

            def write(keyring: Keyring | None = keyring, body: bytes = body) -> dict[bytes, bytes]:
                fields = wire.channel_message_fields(to, body)
                return fields if keyring is None else keyring.seal(STREAM, fields)

            sealed = write()

            def read(
                keyring: Keyring | None = keyring, sealed: dict[bytes, bytes] = sealed
            ) -> object:
                fields = sealed if keyring is None else keyring.unseal(STREAM, sealed)
                return wire.split_channel_message(fields)

            print(
                f"{label:>8} {mode:>8} {per_call_us(write, number):>10.2f} "
                f"{per_call_us(read, number):>10.2f}"
            )


async def layer_rate(url: str, mode: str, count: int) -> float:
    keys = "" if mode == "none" else KEY
    options = {"hosts": [url], "prefix": "bench-seal", "capacity": count + 10}
    sender = RedisStreamsChannelLayer(**options, keys=keys, seal="sign" if keys == "" else mode)
    receiver = RedisStreamsChannelLayer(**options, keys=keys, seal="sign" if keys == "" else mode)
    channel = await receiver.new_channel()
    message = {"type": "websocket.send", "text": "x" * 100}
    start = time.perf_counter()

    async def produce() -> None:
        for _ in range(count):
            await sender.send(channel, message)

    async def consume() -> None:
        for _ in range(count):
            await receiver.receive(channel)

    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - start
    await receiver.flush()
    await sender.close()
    await receiver.close()
    return count / elapsed


async def layer(url: str, count: int) -> None:
    print(f"\nlayer stream of {count} messages to a process-specific channel")
    for mode in ("none", "sign", "encrypt", "none", "sign", "encrypt"):
        rate = await layer_rate(url, mode, count)
        print(f"{mode:>8}: {rate:,.0f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="also measure the layer end to end on this Redis")
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    codec()
    if args.redis_url:
        asyncio.run(layer(args.redis_url, args.messages))


if __name__ == "__main__":
    main()
