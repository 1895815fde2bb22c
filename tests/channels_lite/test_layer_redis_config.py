"""How the Redis backend reaches Redis: host formats, sharding, AUTH, ACL users, TLS.

Why: a layer that works on a bare local Redis but not behind a password, an
ACL user or TLS is not deployable. Every form channels_redis accepts in
``hosts`` must work, several hosts must shard consistently (two processes
with the same list agree on where a key lives), and a wrong password must fail
loudly instead of looking like an outage. Redis backend only.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from channels_lite.exceptions import ChannelsLiteError
from tests._redis import RedisServer, TlsCerts

from ._support import assert_nothing_pending, recv, stream_keys

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only]

Factory = Callable[..., RedisServer]


@pytest.fixture(params=[False, True], ids=["pooled", "multiplexed"])
def make_redis_layer(request: pytest.FixtureRequest, make_redis_layer: Any) -> Any:
    """Each test twice: quick commands on the pool, and on the one shared
    connection the runtime's relay uses (``multiplex``), which opens its
    connection itself and must honour AUTH, ACL users and TLS the same."""

    def make(**kwargs: Any) -> Any:
        return make_redis_layer(multiplex=request.param, **kwargs)

    return make


async def _exercise(layer: Any) -> None:
    """send/receive on a normal and a process-specific channel, group_send, flush."""
    specific = await layer.new_channel()
    await layer.send("test.plain", {"type": "test.m", "b": b"\x01"})
    await layer.send(specific, {"type": "test.m", "b": b"\x02"})
    assert await recv(layer, "test.plain") == {"type": "test.m", "b": b"\x01"}
    assert await recv(layer, specific) == {"type": "test.m", "b": b"\x02"}
    await layer.group_add("test.room", "test.plain")
    await layer.group_add("test.room", specific)
    await layer.group_send("test.room", {"type": "test.group"})
    assert await recv(layer, "test.plain") == {"type": "test.group"}
    assert await recv(layer, specific) == {"type": "test.group"}
    await layer.group_discard("test.room", specific)
    await layer.flush()
    await assert_nothing_pending(layer, "test.plain")


@pytest.mark.parametrize(
    "form", ["url", "tuple", "list_pair", "dict", "dict_with_options", "dict_without_address"]
)
async def test_host_formats(
    redis_server: Any, redis_url: str, make_redis_layer: Any, form: str
) -> None:
    hosts = {
        "url": [redis_url],
        "tuple": [(redis_server.host, redis_server.port)],
        "list_pair": [[redis_server.host, redis_server.port]],  # JSON-shaped settings
        "dict": [{"address": redis_url}],
        "dict_with_options": [{"address": redis_url, "socket_connect_timeout": 5}],
        "dict_without_address": [{"host": redis_server.host, "port": redis_server.port}],
    }[form]
    configured = make_redis_layer(hosts=hosts)
    reference = make_redis_layer(hosts=[redis_url])
    await _exercise(configured)
    # Both talk to the same server: what one sends, the other receives.
    await configured.send("test.hosts", {"type": "test.there"})
    assert await recv(reference, "test.hosts") == {"type": "test.there"}
    await reference.send("test.hosts", {"type": "test.back"})
    assert await recv(configured, "test.hosts") == {"type": "test.back"}


async def test_unix_socket_host(
    redis_factory: Factory, make_redis_layer: Any, tmp_path: Path
) -> None:
    socket_path = tmp_path / "redis.sock"
    redis_factory(extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700"))
    await _exercise(make_redis_layer(hosts=[f"unix://{socket_path}"]))


async def test_two_hosts_shard_consistently(
    redis_url: str, private_redis: RedisServer, make_redis_layer: Any
) -> None:
    hosts = [redis_url, private_redis.url]
    sender, receiver = make_redis_layer(hosts=hosts), make_redis_layer(hosts=hosts)
    channels = [f"test.shard.{n}" for n in range(40)]
    specific = [await receiver.new_channel() for _ in range(3)]
    for channel in channels:
        await sender.send(channel, {"type": "test.direct", "to": channel})
    for channel in channels + specific:
        await sender.group_add("test.room", channel)
    await sender.group_send("test.room", {"type": "test.group"})

    for url in hosts:  # 40+ streams over two servers: both hold some
        client = aioredis.Redis.from_url(url)
        try:
            assert await stream_keys(client, "asgi"), f"no streams on {url}"
        finally:
            await client.aclose()

    for channel in channels:
        assert await recv(receiver, channel) == {"type": "test.direct", "to": channel}
        assert await recv(receiver, channel) == {"type": "test.group"}
    for channel in specific:
        assert await recv(receiver, channel) == {"type": "test.group"}
    await receiver.flush()
    for url in hosts:
        client = aioredis.Redis.from_url(url)
        try:
            assert await stream_keys(client, "asgi") == []
        finally:
            await client.aclose()


# ---------------------------------------------------------------------------
# Credentials and TLS


async def test_requirepass(redis_factory: Factory, make_redis_layer: Any) -> None:
    password = "s3cret/:@pw"
    server = redis_factory(requirepass=password)
    await _exercise(make_redis_layer(hosts=[server.url]))
    await _exercise(make_redis_layer(hosts=[{"address": server.url_for(), "password": password}]))


@pytest.mark.parametrize("operation", ["send", "group_send", "receive"])
async def test_wrong_password_fails_loudly(
    redis_factory: Factory, make_redis_layer: Any, operation: str
) -> None:
    server = redis_factory(requirepass="right")
    layer = make_redis_layer(hosts=[server.url_for(password="wrong")])
    call: Callable[[], Awaitable[Any]] = {
        "send": lambda: layer.send("test.auth", {"type": "test.m"}),
        "group_send": lambda: layer.group_send("test.auth", {"type": "test.m"}),
        # A receive must not wait forever as if Redis were merely down.
        "receive": lambda: layer.receive("test.auth"),
    }[operation]
    with (
        anyio.fail_after(10),
        pytest.raises((ChannelsLiteError, redis.exceptions.AuthenticationError)) as info,
    ):
        await call()
    assert "auth" in str(info.value).lower() or "password" in str(info.value).lower()


async def test_acl_user(redis_factory: Factory, make_redis_layer: Any) -> None:
    server = redis_factory(users={"alice": "wonderland"}, extra_args=("--user", "default", "off"))
    await _exercise(make_redis_layer(hosts=[server.url]))
    await _exercise(
        make_redis_layer(
            hosts=[{"address": server.url_for(), "username": "alice", "password": "wonderland"}]
        )
    )


async def test_acl_user_limited_to_the_layer_prefix(
    redis_factory: Factory, make_redis_layer: Any
) -> None:
    # The layer must touch no key outside its prefix: an ACL that allows only
    # "chat:*" is enough for every operation.
    server = redis_factory(extra_args=("--user", "carol", "on", ">pw", "~chat:*", "&*", "+@all"))
    layer = make_redis_layer(hosts=[server.url_for(username="carol", password="pw")], prefix="chat")
    await _exercise(layer)


async def test_tls(redis_factory: Factory, tls_certs: TlsCerts, make_redis_layer: Any) -> None:
    server = redis_factory(tls=True)
    assert server.url.startswith("rediss://")
    await _exercise(make_redis_layer(hosts=[server.url]))
    bare_url = server.url_for().split("?")[0]
    await _exercise(
        make_redis_layer(hosts=[{"address": bare_url, "ssl_ca_certs": str(tls_certs.ca)}])
    )


async def test_tls_verifies_the_server_certificate(
    redis_factory: Factory, make_redis_layer: Any
) -> None:
    server = redis_factory(tls=True)
    # Without the test CA the server's certificate is untrusted: refuse it.
    layer = make_redis_layer(hosts=[server.url_for().split("?")[0]])
    with (
        anyio.fail_after(10),
        pytest.raises((ChannelsLiteError, redis.exceptions.ConnectionError, ssl.SSLError)),
    ):
        await layer.send("test.tls", {"type": "test.m"})


async def test_a_burst_beyond_the_pool_waits_for_a_connection(
    redis_url: str, make_redis_layer: Any
) -> None:
    """500 connections joining a group at once (a worker's apps after a
    reconnect storm) all get in: commands beyond the pool's 100 connections
    wait for one, where redis-py's plain pool failed them ("Too many
    connections", which the runtime took for Redis being down)."""
    layer = make_redis_layer(hosts=[redis_url])
    names = [f"test.burst{i}" for i in range(500)]
    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(layer.group_add, "test.crowd", name)
    await layer.group_send("test.crowd", {"type": "test.all"})
    for name in names[:3] + names[-3:]:
        assert await recv(layer, name) == {"type": "test.all"}


async def test_max_connections_and_pool_timeout_are_host_options(
    redis_url: str, make_redis_layer: Any
) -> None:
    """A host dict sets each pool's size and how long a command waits for a
    connection; past that wait it fails as an outage, not forever."""
    layer = make_redis_layer(
        hosts=[{"address": redis_url, "max_connections": 1, "pool_timeout": 0.3}]
    )
    await layer.group_add("test.room", "test.small")  # the pool's one connection
    async with anyio.create_task_group() as tg:
        # Something holds that connection for a second (a slow command).
        hold = layer._client_for("test.room").execute_command
        tg.start_soon(hold, "BLPOP", "test.never", 1)
        await anyio.sleep(0.2)
        started = anyio.current_time()
        with pytest.raises(ChannelsLiteError, match=r"(?i)no connection available"):
            await layer.group_add("test.room", "test.small")
        assert 0.25 < anyio.current_time() - started < 0.9
    # Once it is free, commands go through.
    await layer.group_add("test.room", "test.small")
    bad = make_redis_layer(hosts=[{"address": redis_url, "pool_timeout": "soon"}])
    with pytest.raises(ChannelsLiteError, match="invalid Redis host"):
        await bad.send("test.small", {"type": "test.never"})


async def test_idle_receives_do_not_hold_the_connections_other_commands_need(
    redis_url: str, make_redis_layer: Any
) -> None:
    """Blocking reads have a pool of their own: with 150 receives idle in
    XREAD BLOCK (more than a pool's 100 connections), a send, a group
    change and a receive of a waiting message still go at once, rather
    than wait (up to 5 s) for a blocking read to end."""
    layer = make_redis_layer(hosts=[redis_url])
    sender = make_redis_layer(hosts=[redis_url])
    await sender.send("test.waiting", {"type": "test.here"})
    async with anyio.create_task_group() as tg:
        for i in range(150):
            tg.start_soon(layer.receive, f"test.idle{i}")
        await anyio.sleep(0.5)  # all of them parked in Redis
        with anyio.fail_after(2):
            await layer.group_add("test.room", "test.waiting")
            await layer.send("test.other", {"type": "test.sent"})
            assert await layer.receive("test.waiting") == {"type": "test.here"}
        tg.cancel_scope.cancel()
