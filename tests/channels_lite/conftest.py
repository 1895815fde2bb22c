"""Fixtures for the channel layer suite: one behavioural suite, two backends.

Why: the in-memory layer promises exactly the Redis layer's semantics, so the
same tests run against both (``backend`` is parametrized, uvicorn's
``http_protocol_cls`` pattern). Tests that need Redis itself (raw keys,
restarts, AUTH/ACL/TLS, sharding) are marked ``redis_only`` and build layers
with ``make_redis_layer``.

* ``make_layer(**kwargs)``: a layer of the current backend (the Redis one on
  the flushed shared server unless ``hosts`` is given); every layer built is
  closed at teardown.
* ``layer``: ``make_layer()`` with the defaults.
* ``make_redis_layer(**kwargs)``: always the Redis backend.
* ``raw_redis``: a plain ``redis.asyncio`` client on the shared server, to
  inspect what the layer wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from channels_lite.layer import InMemoryChannelLayer, RedisStreamsChannelLayer

BACKENDS = ("redis", "memory")

LayerFactory = Callable[..., Any]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "redis_only: the test inspects or manipulates Redis itself (raw keys, restarts, "
        "AUTH/ACL/TLS, sharding), so it runs against the Redis backend only",
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def layer_hosts(backend: str, request: pytest.FixtureRequest) -> list[str] | None:
    # Resolved lazily so that in-memory tests never touch Redis.
    if backend == "redis":
        return [request.getfixturevalue("redis_url")]
    return None


async def _close_all(layers: list[Any]) -> None:
    with anyio.fail_after(10):
        for layer in layers:
            await layer.close()


@pytest.fixture
async def make_layer(backend: str, layer_hosts: list[str] | None) -> AsyncIterator[LayerFactory]:
    built: list[Any] = []

    def make(**kwargs: Any) -> Any:
        if backend == "redis":
            kwargs.setdefault("hosts", layer_hosts)
            layer: Any = RedisStreamsChannelLayer(**kwargs)
        else:
            layer = InMemoryChannelLayer(**kwargs)
        built.append(layer)
        return layer

    yield make
    await _close_all(built)


@pytest.fixture
async def layer(make_layer: LayerFactory) -> Any:
    return make_layer()


@pytest.fixture
async def make_redis_layer(redis_url: str) -> AsyncIterator[LayerFactory]:
    built: list[Any] = []

    def make(**kwargs: Any) -> RedisStreamsChannelLayer:
        kwargs.setdefault("hosts", [redis_url])
        layer = RedisStreamsChannelLayer(**kwargs)
        built.append(layer)
        return layer

    yield make
    await _close_all(built)


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
