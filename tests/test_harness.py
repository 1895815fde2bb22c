"""Tests of the test harness itself (``tests/conftest.py``, ``tests/_redis.py``).

Why: fault-injection tests elsewhere trust that a private server really dies,
really comes back on the same port, and that AUTH, ACL and TLS servers really
enforce what they claim. If the harness lied, those tests would pass for the
wrong reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

from tests._redis import RedisServer, TlsCerts, unused_port

pytestmark = pytest.mark.anyio


async def _get_allowing_one_reconnect(client: aioredis.Redis, key: str) -> bytes | str | None:
    try:
        return await client.get(key)
    except ConnectionError:
        return await client.get(key)


async def test_shared_server_is_flushed(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("leftover", "x")  # the next test must not see this
    finally:
        await client.aclose()


async def test_shared_server_is_flushed_again(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
    finally:
        await client.aclose()


async def test_kill_and_restart_on_same_port(private_redis: RedisServer) -> None:
    url, port, old_pid = private_redis.url, private_redis.port, private_redis.pid
    client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.set("k", "v")
        private_redis.kill()
        assert not private_redis.running
        with pytest.raises(ConnectionError):
            await client.get("k")
        private_redis.start()
        assert private_redis.port == port
        assert private_redis.url == url
        assert private_redis.pid != old_pid
        # The same client object reconnects; nothing was persisted.
        assert await client.get("k") is None
        assert await client.ping()
    finally:
        await client.aclose()


async def test_stop_and_restart(private_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(private_redis.url, socket_timeout=2)
    try:
        await client.set("k", "v")
        private_redis.restart()
        assert private_redis.running
        # A from_url() client has no retries (redis-py 8: Retry(NoBackoff(), 0)),
        # so the pooled connection's first use after the restart may fail once;
        # the next command reconnects.
        assert await _get_allowing_one_reconnect(client, "k") is None
        private_redis.stop()
        private_redis.stop()  # idempotent
        assert not private_redis.running
    finally:
        await client.aclose()


def test_private_servers_are_distinct(
    private_redis: RedisServer, redis_factory: Callable[..., RedisServer], redis_url: str
) -> None:
    other = redis_factory()
    assert other.port != private_redis.port
    assert other.url != redis_url != private_redis.url


def test_factory_servers_stop_at_teardown(redis_factory: Callable[..., RedisServer]) -> None:
    # Teardown is checked indirectly: every server is reaped by the factory,
    # and _redis's atexit sweep would catch one that escaped. Here: kill() is
    # idempotent and start() after kill() works.
    server = redis_factory()
    server.kill()
    server.kill()
    server.start()
    assert server.running


async def test_requirepass(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(requirepass="s3cret/:@pw")
    assert ":s3cret%2F%3A%40pw@" in server.url  # credentials are URL-quoted
    good = aioredis.Redis.from_url(server.url)
    anonymous = aioredis.Redis.from_url(server.url_for())
    wrong = aioredis.Redis.from_url(server.url_for(password="nope"))
    try:
        assert await good.ping()
        with pytest.raises(AuthenticationError):  # NOAUTH
            await anonymous.ping()
        with pytest.raises(AuthenticationError):  # WRONGPASS
            await wrong.ping()
    finally:
        for client in (good, anonymous, wrong):
            await client.aclose()


async def test_acl_user(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(
        users={"alice": "wonderland"},
        # Only alice may log in: the default user is switched off.
        extra_args=("--user", "default", "off"),
    )
    assert server.url.startswith("redis://alice:wonderland@")
    alice = aioredis.Redis.from_url(server.url)
    wrong = aioredis.Redis.from_url(server.url_for(username="alice", password="nope"))
    anonymous = aioredis.Redis.from_url(server.url_for())
    try:
        assert await alice.acl_whoami() == "alice"
        await alice.xadd("s", {"f": "v"})
        with pytest.raises(AuthenticationError):
            await wrong.ping()
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.ping()
    finally:
        for client in (alice, wrong, anonymous):
            await client.aclose()


async def test_tls(redis_factory: Callable[..., RedisServer], tls_certs: TlsCerts) -> None:
    server = redis_factory(tls=True)
    assert server.url.startswith("rediss://127.0.0.1:")
    assert "ssl_ca_certs=" in server.url
    secure = aioredis.Redis.from_url(server.url)
    plain = aioredis.Redis.from_url(
        server.url_for().replace("rediss://", "redis://").split("?")[0],
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    try:
        assert await secure.set("k", "v")
        assert await secure.get("k") == b"v"
        with pytest.raises(ConnectionError):
            await plain.ping()
    finally:
        await secure.aclose()
        await plain.aclose()


def test_tls_server_rejects_untrusted_client(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(tls=True)
    # Without the test CA (system trust store only), verification must fail.
    client = redis.Redis.from_url(
        server.url_for().split("?")[0], socket_timeout=2, socket_connect_timeout=2
    )
    try:
        with pytest.raises(ConnectionError, match="certificate verify failed"):
            client.ping()
    finally:
        client.close()


def test_tls_certs_cover_localhost(tls_certs: TlsCerts) -> None:
    for path in (tls_certs.ca, tls_certs.cert, tls_certs.key):
        assert path.is_file()
    text = tls_certs.cert.read_text()
    assert text.startswith("-----BEGIN CERTIFICATE-----")


def test_unused_port_is_bindable() -> None:
    import socket

    port = unused_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------
# How the shared fixture is provided: REDIS_URL, and a loud failure without Redis.
# These run a small inner pytest session in a subprocess, with the real fixtures.

_REPO = Path(__file__).resolve().parent.parent

_INNER_TEST = """
import pytest
import redis

def test_uses_shared(redis_server, redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
    finally:
        client.close()
    print("SHARED", type(redis_server).__name__, redis_server.url)

def test_cannot_kill(redis_server):
    redis_server.kill()
"""


def _run_inner(
    tmp_path: Path, env: dict[str, str], *, conftest_prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        conftest_prelude + "from tests.conftest import *  # noqa: F403\n"
    )
    (tmp_path / "test_inner.py").write_text(_INNER_TEST)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(_REPO)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_redis_url_env_overrides_shared_server(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = _run_inner(tmp_path, {**env, "REDIS_URL": redis_url})
    out = result.stdout + result.stderr
    assert f"SHARED ExternalRedis {redis_url}" in out, out
    assert "fault tests need a private server" in out, out
    assert "1 passed" in out, out
    assert "1 failed" in out, out


def test_missing_redis_fails_loudly_never_skips(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    inner = tmp_path / "inner"
    inner.mkdir()
    # No redis-server on PATH, and testcontainers made unimportable (a None
    # entry in sys.modules makes `import` raise ImportError) so that a Docker
    # on this machine cannot rescue the inner run.
    result = _run_inner(
        inner,
        {**env, "PATH": str(empty_bin)},
        conftest_prelude="import sys\nsys.modules['testcontainers'] = None\n",
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "No Redis for the test suite" in out, out
    assert "skipped" not in out, out
