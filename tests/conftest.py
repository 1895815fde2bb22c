"""Shared fixtures: real Redis servers, TLS material, the anyio backend.

Why: every Redis-facing test runs against a real ``redis-server`` (never
fakeredis, never mocks), and a missing Redis must fail the run loudly instead
of skipping tests and reporting green. See ``docs/testing.md``.

Fixture API (other test modules rely on these names):

* ``redis_server`` (session): the shared server, an object with ``.url``,
  ``.host``, ``.port``. A private :class:`tests._redis.RedisServer` by default;
  ``REDIS_URL`` in the environment points the suite at an external server
  instead; with no ``redis-server`` binary, a testcontainers Redis container if
  that package and Docker are available.
* ``redis_url`` (function): ``FLUSHALL`` on ``redis_server``, then its URL.
* ``private_redis`` (function): a fresh server only this test uses, free to
  ``kill()`` / ``stop()`` / ``start()`` / ``restart()`` (same port).
* ``redis_factory`` (function): ``redis_factory(requirepass=..., users=...,
  tls=True, extra_args=...)`` starts more private servers.
* ``tls_certs`` (session): a throwaway CA and server certificate.
* ``anyio_backend`` (session): ``"asyncio"``. Async tests opt in with
  ``pytestmark = pytest.mark.anyio``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

import pytest
import redis

from tests._redis import RedisServer, RedisServerError, TlsCerts, find_redis_server

NO_REDIS_MESSAGE = (
    "No Redis for the test suite: `redis-server` is not on PATH, REDIS_URL is not set, "
    "and no Docker Redis could be started through testcontainers{detail}. "
    "Install Redis (e.g. `apt-get install redis-server` or `brew install redis`) "
    "or set REDIS_URL to a throwaway server. Tests never skip for lack of Redis."
)


class SharedRedis(Protocol):
    """What ``redis_server`` yields, whichever way the server was provided."""

    @property
    def url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...
    def restart(self) -> None: ...


@dataclass
class ExternalRedis:
    """A Redis server this suite did not start (``REDIS_URL`` or a container).

    It can be used but not crashed: fault tests need ``private_redis``.
    """

    url: str
    host: str
    port: int
    origin: str = "REDIS_URL"
    _cleanup: Callable[[], None] | None = field(default=None, repr=False)

    def _refuse(self, what: str) -> NoReturn:
        pytest.fail(
            f"cannot {what}() the shared Redis from {self.origin} ({self.url}): "
            "fault tests need a private server; use the `private_redis` or "
            "`redis_factory` fixture (requires `redis-server` on PATH).",
            pytrace=False,
        )

    def kill(self) -> None:
        self._refuse("kill")

    def stop(self) -> None:
        self._refuse("stop")

    def start(self) -> None:
        self._refuse("start")

    def restart(self) -> None:
        self._refuse("restart")


def _external_from_url(url: str) -> ExternalRedis:
    parts = urlsplit(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"REDIS_URL={url} is set but that Redis does not answer PING: {exc!r}", pytrace=False
        )
    finally:
        client.close()
    return ExternalRedis(url=url, host=parts.hostname or "localhost", port=parts.port or 6379)


def _container_redis() -> ExternalRedis:
    """A Redis container via testcontainers, or ``pytest.fail`` with the reason."""
    try:
        from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail(
            NO_REDIS_MESSAGE.format(detail=" (testcontainers is not installed)"), pytrace=False
        )
    container = RedisContainer("redis:7")
    try:
        container.start()
    except Exception as exc:  # Docker missing, daemon down, image pull failure...
        pytest.fail(NO_REDIS_MESSAGE.format(detail=f" (Docker failed: {exc!r})"), pytrace=False)
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(6379))
    except BaseException:
        container.stop()
        raise
    return ExternalRedis(
        url=f"redis://{host}:{port}/0",
        host=host,
        port=port,
        origin="a testcontainers Redis container",
        _cleanup=container.stop,
    )


def _require_binary() -> None:
    if find_redis_server() is None:
        pytest.fail(
            "this test needs a private `redis-server` (it starts, kills or configures "
            "its own), but `redis-server` is not on PATH. Install Redis "
            "(e.g. `apt-get install redis-server`). Tests never skip for lack of Redis.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRedis]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield _external_from_url(url)
        return
    if find_redis_server() is None:
        container = _container_redis()
        try:
            yield container
        finally:
            if container._cleanup is not None:
                container._cleanup()
        return
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"))
    try:
        server.start()
    except RedisServerError as exc:
        pytest.fail(f"could not start the shared redis-server: {exc}")
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: SharedRedis) -> str:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RedisServer]]:
    _require_binary()
    servers: list[RedisServer] = []

    def factory(*, tls: bool | TlsCerts = False, **options: Any) -> RedisServer:
        certs: TlsCerts | None = None
        if tls is True:
            # Resolved lazily so that suites without TLS never run openssl.
            certs = request.getfixturevalue("tls_certs")
        elif isinstance(tls, TlsCerts):
            certs = tls
        server = RedisServer(tmp_path_factory.mktemp("redis-private"), tls=certs, **options)
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def private_redis(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{result.stderr}")


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """A test CA and a server certificate for 127.0.0.1 / localhost, via the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-subj", "/CN=channels-lite test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.pem",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "san.ext",
        "-out", "server.pem",
        cwd=d,
    )  # fmt: skip
    return TlsCerts(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
