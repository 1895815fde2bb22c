"""The layer with a keyring: it delivers only what a holder of a key wrote.

Why: group messages and replies travel as channel-layer entries; with
``keys`` set, a layer must refuse (count as ``malformed``, never deliver)
entries written without a key or with another one, on normal and
process-specific channels and through ``group_send``, while messages sealed
with a key of its keyring keep flowing. Redis backend, real server.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import redis.asyncio as aioredis

from channels_lite import sealing, wire

from ._support import recv, specific_stream_key

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only]

KEY_A = "a:" + base64.b64encode(b"A" * 32).decode()
KEY_B = "b:" + base64.b64encode(b"B" * 32).decode()


@pytest.mark.parametrize("mode", sealing.MODES)
@pytest.mark.parametrize("intruder", ["other_key", "no_key"])
async def test_refuses_entries_sealed_otherwise(
    make_redis_layer: Any, mode: str, intruder: str
) -> None:
    reader = make_redis_layer(keys=KEY_A, seal=mode)
    friend = make_redis_layer(keys=f"{KEY_A},{KEY_B}", seal=mode)  # mid-rotation: writes a
    stranger = make_redis_layer(keys=KEY_B if intruder == "other_key" else "", seal=mode)
    specific = await reader.new_channel()
    await reader.group_add("test.room", specific)
    await reader.group_add("test.room", "test.plain")

    for channel in ("test.plain", specific):
        await stranger.send(channel, {"type": "test.forged"})
        await friend.send(channel, {"type": "test.real"})
        assert await recv(reader, channel) == {"type": "test.real"}
    await stranger.group_send("test.room", {"type": "test.forged"})
    await friend.group_send("test.room", {"type": "test.group"})
    assert await recv(reader, specific) == {"type": "test.group"}
    assert await recv(reader, "test.plain") == {"type": "test.group"}

    stats = reader.statistics()
    assert stats.malformed == 4
    assert stats.received == 4


async def test_a_raw_entry_without_the_key_is_refused(
    make_redis_layer: Any, raw_redis: aioredis.Redis
) -> None:
    # What someone with Redis access but no key can write by hand.
    reader = make_redis_layer(keys=KEY_A)
    channel = await reader.new_channel()
    body = wire.encode_message({"type": "test.forged"})
    await raw_redis.xadd(
        specific_stream_key("asgi", channel), wire.channel_message_fields([channel], body)
    )
    await reader.send(channel, {"type": "test.real"})
    assert await recv(reader, channel) == {"type": "test.real"}
    assert reader.statistics().malformed == 1


async def test_signed_entries_stay_readable_without_a_keyring(make_redis_layer: Any) -> None:
    # Signing is an additive field: a reader not yet given the keys (the
    # first step of turning signing on) still reads what signed writers send.
    signer, plain = make_redis_layer(keys=KEY_A), make_redis_layer(keys="")
    await signer.send("test.plain", {"type": "test.m", "b": b"\x01"})
    assert await recv(plain, "test.plain") == {"type": "test.m", "b": b"\x01"}


async def test_keys_come_from_the_environment(
    make_redis_layer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Django CHANNEL_LAYERS backend in a worker gets the worker's keys
    # this way: the worker exports CHANNELS_LITE_KEYS to its app.
    monkeypatch.setenv("CHANNELS_LITE_KEYS", KEY_A)
    monkeypatch.setenv("CHANNELS_LITE_SEAL", "encrypt")
    from_env = make_redis_layer()
    assert from_env.keyring is not None
    assert from_env.keyring.mode == "encrypt"
    assert make_redis_layer(keys="").keyring is None
    explicit = make_redis_layer(keys=KEY_A, seal="sign")
    await from_env.send("test.env", {"type": "test.m"})
    assert await recv(explicit, "test.env") == {"type": "test.m"}
