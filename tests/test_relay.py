"""The relay's pure helpers: batching, splitting and joining, payload sizes."""

from __future__ import annotations

from typing import Any

import pytest

from channels_lite import relay


def _body(n: int, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": b"x" * n, "more_body": more}


def test_a_claim_start_and_body_travel_as_one_batch() -> None:
    events = [
        {"type": relay.CLAIM, "channel": "wk.a!b", "worker": "w1"},
        {"type": "http.response.start", "status": 200, "headers": []},
        _body(13, more=False),
    ]
    (message,) = relay.batch(events)
    assert message == {"type": relay.BATCH, "events": events}
    assert relay.unbatch(message) == events


def test_a_single_event_is_not_wrapped() -> None:
    event = _body(10)
    assert relay.batch([event]) == [event]
    assert relay.unbatch(event) == [event]


def test_batches_hold_at_most_a_chunk_of_payload_and_keep_the_order() -> None:
    events = [_body(relay.CHUNK_SIZE // 2 + 1) for _ in range(5)] + [_body(1, more=False)]
    messages = relay.batch(events)
    assert len(messages) == 5  # no two half-chunk-plus bodies share a batch
    for message in messages:
        assert sum(relay.payload_size(e) for e in relay.unbatch(message)) <= relay.CHUNK_SIZE
    assert [e for m in messages for e in relay.unbatch(m)] == events


@pytest.mark.parametrize(
    "message",
    [
        {"type": relay.BATCH},
        {"type": relay.BATCH, "events": "nope"},
        {"type": relay.BATCH, "events": [1, None, {"no": "type"}, {"type": 5}]},
        {"type": relay.BATCH, "events": [{"type": relay.BATCH, "events": []}]},
    ],
)
def test_a_malformed_batch_yields_no_events(message: dict[str, Any]) -> None:
    assert relay.unbatch(message) == []


@pytest.mark.parametrize(
    ("event", "size"),
    [
        ({"type": "http.request", "body": b"abc"}, 3),
        ({"type": "websocket.receive", "text": "é"}, 2),
        ({"type": "websocket.receive", "bytes": b"", "text": "ab"}, 2),
        ({"type": relay.CREDIT, "bytes": 4096}, 0),  # a count, not a payload
        ({"type": "http.request", "body": 12}, 0),  # hostile: no crash
    ],
)
def test_payload_size_counts_bytes_and_text_only(event: dict[str, Any], size: int) -> None:
    assert relay.payload_size(event) == size


def test_split_and_join_round_trip_large_text_and_bytes() -> None:
    for event in (
        {"type": "websocket.send", "bytes": bytes(range(256)) * 4097},
        {"type": "websocket.send", "text": "ü" * (relay.CHUNK_SIZE // 2 + 7)},
    ):
        parts = relay.split_message(event)
        assert len(parts) > 1
        assert all(relay.payload_size(p) <= relay.CHUNK_SIZE for p in parts)
        joiner = relay.Joiner()
        results = [joiner.add(p) for p in parts]
        assert results[:-1] == [None] * (len(parts) - 1)
        assert results[-1] == event


@pytest.mark.parametrize(
    ("message", "granted"),
    [
        ({"type": relay.CREDIT, "bytes": 4096}, 4096),
        ({"type": relay.CREDIT}, 0),
        ({"type": relay.CREDIT, "bytes": "4096"}, 0),
        ({"type": relay.CREDIT, "bytes": -5}, 0),
        ({"type": relay.CREDIT, "bytes": True}, 0),
        ({"type": relay.CREDIT, "bytes": None}, 0),
    ],
)
def test_a_forged_credit_grants_nothing_and_raises_nothing(
    message: dict[str, Any], granted: int
) -> None:
    assert relay.count(message, "bytes") == granted


def test_is_push_recognises_pushes_and_only_pushes() -> None:
    from channels_lite.wire import encode_message

    assert relay.is_push(encode_message({"type": relay.PUSH, "text": "hi"}))
    assert relay.is_push(encode_message({"bytes": b"x" * 100, "type": relay.PUSH}))
    # An app's message that merely carries the type's bytes is not one.
    sneaky = encode_message({"type": "websocket.send", "text": "\xaewebsocket.push"})
    assert b"\xaewebsocket.push" in sneaky
    assert not relay.is_push(sneaky)
    assert not relay.is_push(encode_message({"type": "websocket.send", "text": "x" * 300_000}))
    assert not relay.is_push(b"\xaewebsocket.push not msgpack")
    # The documented limit: a push whose type follows 4 KiB of other fields
    # is not recognised (so never shed, the safe side).
    late = encode_message({"text": "x" * 5000, "type": relay.PUSH})
    assert not relay.is_push(late)
