"""Small helpers shared by the channel layer tests.

Why: the layer suite asserts "nothing else arrived" many times. Waiting for a
timeout to prove absence is slow and flaky, so we lean on the spec's FIFO
guarantee instead: send a fresh marker and check it is the *next* message. If
anything had been queued before it, that would come first.
"""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import redis.asyncio as aioredis

#: Bound for any single receive in the suite: generous, but far below the
#: per-test timeout, so a lost message fails with a clear traceback.
RECEIVE_TIMEOUT = 5.0

_markers = itertools.count()


async def recv(layer: Any, channel: str, within: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
    """``layer.receive(channel)``, failing the test if nothing arrives ``within`` seconds."""
    with anyio.fail_after(within):
        message: dict[str, Any] = await layer.receive(channel)
    return message


async def assert_nothing_pending(layer: Any, channel: str) -> None:
    """Assert ``channel`` holds no undelivered message (FIFO makes this exact)."""
    marker = {"type": "test.marker", "n": next(_markers)}
    await layer.send(channel, marker)
    got = await recv(layer, channel)
    assert got == marker, f"{channel!r} still held {got!r}"


async def prefix_keys(client: aioredis.Redis, prefix: str) -> dict[str, str]:
    """Every key under ``prefix:`` on ``client``'s server, mapped to its Redis type."""
    found: dict[str, str] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await client.type(key)
        found[_text(key)] = _text(kind)
    return found


async def stream_keys(client: aioredis.Redis, prefix: str) -> list[str]:
    """Names of the stream keys under ``prefix:``."""
    return sorted(k for k, kind in (await prefix_keys(client, prefix)).items() if kind == "stream")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def specific_stream_key(prefix: str, channel: str) -> str:
    """The stream that the spec says holds every process-specific channel of one layer."""
    return f"{prefix}:ch:{channel.split('!', 1)[0]}!"


def channel_stream_key(prefix: str, channel: str) -> str:
    """The stream of a normal channel."""
    return f"{prefix}:ch:{channel}"
