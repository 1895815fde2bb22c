"""Concurrent and cancelled receives, on both backends.

Why: a protocol server runs thousands of receives at once and cancels them
all the time (a client disconnects, a timeout fires). The layer is at most
once, but a *cancelled receive* must never be the reason a message is lost
or delivered twice.
"""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from channels_lite.exceptions import ChannelFull

from ._support import assert_nothing_pending, recv

pytestmark = pytest.mark.anyio

KINDS = ["normal", "specific"]


async def _channel(layer: Any, kind: str) -> str:
    return "test.cancel.normal" if kind == "normal" else await layer.new_channel()


async def test_concurrent_receivers_get_distinct_messages(make_layer: Any) -> None:
    layer = make_layer(capacity=1000)
    total = 200
    got: list[int] = []
    done = anyio.Event()

    async def receiver() -> None:
        while True:
            got.append((await layer.receive("test.shared"))["n"])
            if len(got) == total:
                done.set()

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(receiver)
        for n in range(total):
            await layer.send("test.shared", {"type": "test.m", "n": n})
        with anyio.fail_after(15):
            await done.wait()
        tg.cancel_scope.cancel()
    assert sorted(got) == list(range(total))
    await assert_nothing_pending(layer, "test.shared")


async def test_concurrent_process_specific_receivers_are_demultiplexed(layer: Any) -> None:
    channels = [await layer.new_channel() for _ in range(20)]
    results: dict[str, list[dict[str, Any]]] = {channel: [] for channel in channels}

    async def collect(channel: str) -> None:
        for _ in range(5):
            results[channel].append(await recv(layer, channel))

    async with anyio.create_task_group() as tg:
        for channel in channels:
            tg.start_soon(collect, channel)
        await anyio.wait_all_tasks_blocked()
        for n in range(5):
            for channel in channels:
                await layer.send(channel, {"type": "test.m", "to": channel, "n": n})
    for channel in channels:
        assert results[channel] == [{"type": "test.m", "to": channel, "n": n} for n in range(5)]


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_blocked_receive_loses_nothing(layer: Any, kind: str) -> None:
    channel = await _channel(layer, kind)
    with anyio.move_on_after(0.3) as scope:
        await layer.receive(channel)
    assert scope.cancelled_caught
    await layer.send(channel, {"type": "test.after.cancel"})
    assert await recv(layer, channel) == {"type": "test.after.cancel"}
    await assert_nothing_pending(layer, channel)


@pytest.mark.parametrize("kind", KINDS)
async def test_receive_cancelled_around_a_send_delivers_exactly_once(layer: Any, kind: str) -> None:
    # The cancel lands before, with, or just after the message reaches the
    # blocked receive: whichever way, the message is delivered exactly once.
    channel = await _channel(layer, kind)
    delays: list[float | None] = [None, 0, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01] * 2
    for n, delay in enumerate(delays):
        message = {"type": "test.race", "n": n}
        got: list[dict[str, Any]] = []
        scope = anyio.CancelScope()

        async def receiver(scope: anyio.CancelScope = scope, got: list[Any] = got) -> None:
            with scope:
                got.append(await layer.receive(channel))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await anyio.wait_all_tasks_blocked()
            if delay is None:
                scope.cancel()
            await layer.send(channel, message)
            if delay == 0:
                scope.cancel()  # same event-loop turn as the send returning
            elif delay is not None:
                await anyio.sleep(delay)  # positions the cancel inside the race window
                scope.cancel()
        if not got:
            got.append(await recv(layer, channel))
        assert got == [message], f"delay={delay}"
        await assert_nothing_pending(layer, channel)


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_receives_amid_a_buffered_batch(make_layer: Any, kind: str) -> None:
    layer = make_layer(receive_batch=100)
    channel = await _channel(layer, kind)
    total = 40
    for n in range(total):
        await layer.send(channel, {"type": "test.m", "n": n})
    got = [(await recv(layer, channel))["n"]]  # may pull a batch into a local buffer
    timeouts = itertools.cycle([0, 0.0001, 0.0005, 0.001, 0.003])
    for _ in range(400):
        if len(got) == total:
            break
        with anyio.move_on_after(next(timeouts)):
            got.append((await layer.receive(channel))["n"])
    assert got == list(range(total))
    await assert_nothing_pending(layer, channel)


@pytest.mark.parametrize("kind", KINDS)
async def test_receiver_cancelled_midway_among_concurrent_receivers(
    make_layer: Any, kind: str
) -> None:
    layer = make_layer(capacity=1000)
    channel = await _channel(layer, kind)
    total = 120
    got: list[int] = []
    half, done = anyio.Event(), anyio.Event()

    async def receiver() -> None:
        while True:
            got.append((await layer.receive(channel))["n"])
            if len(got) >= total // 2:
                half.set()
            if len(got) == total:
                done.set()
            await anyio.lowlevel.checkpoint()  # let the other receivers run

    for n in range(20):  # some are waiting before anyone receives
        await layer.send(channel, {"type": "test.m", "n": n})
    async with anyio.create_task_group() as tg:
        victim = anyio.CancelScope()

        async def cancellable_receiver() -> None:
            with victim:
                await receiver()

        tg.start_soon(receiver)
        tg.start_soon(cancellable_receiver)
        tg.start_soon(receiver)
        for n in range(20, total):
            await layer.send(channel, {"type": "test.m", "n": n})
            if n == total // 2:
                with anyio.fail_after(10):
                    await half.wait()
                victim.cancel()
        with anyio.fail_after(10):
            await done.wait()
        tg.cancel_scope.cancel()
    assert sorted(got) == list(range(total))
    await assert_nothing_pending(layer, channel)


async def test_concurrent_sends_respect_capacity(make_layer: Any) -> None:
    # Sends started in one event-loop turn may share a round trip; each still
    # gets its own outcome, and exactly `capacity` of them fit.
    layer = make_layer(capacity=10)
    outcomes: list[str] = []

    async def sender(n: int) -> None:
        try:
            await layer.send("test.burst", {"type": "test.m", "n": n})
        except ChannelFull:
            outcomes.append("full")
        else:
            outcomes.append("sent")

    async with anyio.create_task_group() as tg:
        for n in range(15):
            tg.start_soon(sender, n)
    assert sorted(outcomes) == ["full"] * 5 + ["sent"] * 10
    got = [(await recv(layer, "test.burst"))["n"] for _ in range(10)]
    assert len(set(got)) == 10
    await assert_nothing_pending(layer, "test.burst")
    stats = layer.statistics()
    assert (stats.sent, stats.full) == (10 + 1, 5)  # + the marker


async def test_cancelled_sender_does_not_disturb_the_others(layer: Any) -> None:
    victim = anyio.CancelScope()

    async def sender(n: int) -> None:
        if n == 7:
            with victim:
                await layer.send("test.batch", {"type": "test.m", "n": n})
        else:
            await layer.send("test.batch", {"type": "test.m", "n": n})

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(sender, n)
        victim.cancel()
    got: set[int] = set()
    expected = set(range(20)) - {7}
    with anyio.fail_after(10):
        while not expected <= got:
            n = (await layer.receive("test.batch"))["n"]
            assert n not in got, f"message {n} delivered twice"
            got.add(n)
    # The cancelled send may or may not have happened, but at most once.
    if 7 not in got:
        marker = {"type": "test.marker"}
        await layer.send("test.batch", marker)
        second = await recv(layer, "test.batch")
        assert second in ({"type": "test.m", "n": 7}, marker)
        if second != marker:
            await assert_nothing_pending(layer, "test.batch")
    else:
        await assert_nothing_pending(layer, "test.batch")


async def test_local_buffer_overflow_is_counted(make_layer: Any) -> None:
    # Process-specific channels share one stream. While any receive of the
    # process is running, the stream is drained into per-channel buffers; a
    # channel whose consumer lags overflows its buffer. As in channels_redis,
    # the buffer keeps at most `capacity` messages: the others are dropped,
    # and counted (at most once delivery, but no silent loss).
    layer = make_layer(capacity=3)
    slow, busy = await layer.new_channel(), await layer.new_channel()
    got: list[dict[str, Any]] = []

    async def busy_receiver() -> None:
        got.append(await recv(layer, busy, within=20))

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy_receiver)
        await anyio.wait_all_tasks_blocked()
        for n in range(6):
            await layer.send(slow, {"type": "test.m", "n": n})
            await anyio.wait_all_tasks_blocked()  # the busy receive drains the stream
        await layer.send(busy, {"type": "test.done"})
    assert got == [{"type": "test.done"}]
    kept = [(await recv(layer, slow))["n"] for _ in range(3)]
    await assert_nothing_pending(layer, slow)
    assert kept == sorted(kept)
    assert layer.statistics().dropped == 3
