"""Real ``redis-server`` processes for the test suite.

Why this exists: the project never tests against fakeredis or mocks, because
the behaviour that matters (stream trimming, consumer groups, reconnects after
a crash, AUTH and TLS handshakes) is exactly what a fake gets subtly wrong. So
every test talks to a real server, and fault tests get a *private* one they may
kill and restart without disturbing anyone else.

Theory of operation
===================

* A :class:`RedisServer` owns one ``redis-server`` child process, started with
  persistence off (``--save "" --appendonly no``) in its own scratch directory,
  bound to 127.0.0.1 on a free port (the uvicorn ``_unused_port`` trick: bind
  port 0, read the port, close).
* ``redis-server`` has no readiness signal (no ``--daemonize`` pipe, no
  sd_notify here), so :meth:`RedisServer.start` polls ``PING`` with a bounded
  deadline. This is the one sanctioned readiness poll in the suite.
* The port is kept across :meth:`stop` / :meth:`start`, so clients created
  before a crash can reconnect to the "same" server afterwards (with an empty
  dataset: nothing is persisted).
* Every live process is also registered for an ``atexit`` sweep, so an
  interrupted run (Ctrl-C, a crash in a fixture) never leaves servers behind.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

__all__ = [
    "RedisServer",
    "RedisServerError",
    "TlsCerts",
    "find_redis_server",
    "server_version",
    "unused_port",
]

#: How long ``start()`` waits for the first successful PING.
START_TIMEOUT = 10.0
#: How long ``stop()`` waits after SIGTERM before it resorts to SIGKILL.
STOP_TIMEOUT = 5.0

_live: set[subprocess.Popen[bytes]] = set()


class RedisServerError(RuntimeError):
    """A test redis-server could not be started (the message includes its log)."""


@dataclass(frozen=True)
class TlsCerts:
    """Paths of a throwaway CA and a server certificate it signed."""

    ca: Path
    cert: Path
    key: Path


def find_redis_server() -> str | None:
    """Path of the ``redis-server`` binary, or ``None`` when it is not installed."""
    return shutil.which("redis-server")


@functools.cache
def server_version(binary: str) -> tuple[int, ...]:
    """``redis-server --version`` as a tuple, e.g. ``(7, 0, 15)``."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    match = re.search(r"v=(\d+(?:\.\d+)*)", out)
    if match is None:
        raise RedisServerError(f"cannot parse the version of {binary}: {out!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (uvicorn's ``_unused_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _reap_all() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=STOP_TIMEOUT)
        _live.discard(proc)


atexit.register(_reap_all)


class RedisServer:
    """One private ``redis-server`` process.

    Args:
        directory: scratch directory for the server's working dir and log.
        requirepass: password of the ``default`` user (``--requirepass``).
        users: ACL users to create, name to password; each gets every
            permission (``on >pw ~* &* +@all``). For narrower rules pass
            ``--user`` lines in ``extra_args``.
        tls: serve TLS only (``--port 0 --tls-port <port>``) with these
            certificates; clients need not present a certificate.
        extra_args: appended verbatim to the command line.
        binary: the ``redis-server`` to run (default: the one on PATH).

    ``url`` carries the credentials the harness itself uses: the
    ``requirepass`` password if given, else the first of ``users``, else none.
    Use :meth:`url_for` for any other identity.
    """

    def __init__(
        self,
        directory: Path,
        *,
        requirepass: str | None = None,
        users: Mapping[str, str] | None = None,
        tls: TlsCerts | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise RedisServerError("redis-server is not on PATH")
        self.binary = found
        self.directory = directory
        self.requirepass = requirepass
        self.users = dict(users or {})
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self.host = "127.0.0.1"
        self.port = unused_port()
        self.log_path = directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False

    # -- addressing ----------------------------------------------------------

    @property
    def url(self) -> str:
        """URL with the harness's own credentials (see the class docstring)."""
        if self.requirepass is not None:
            return self.url_for(password=self.requirepass)
        if self.users:
            name, password = next(iter(self.users.items()))
            return self.url_for(username=name, password=password)
        return self.url_for()

    def url_for(
        self, *, username: str | None = None, password: str | None = None, db: int = 0
    ) -> str:
        """A ``redis://`` (or ``rediss://`` with ``ssl_ca_certs``) URL for this server."""
        auth = ""
        if username is not None or password is not None:
            auth = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
        scheme = "rediss" if self.tls else "redis"
        url = f"{scheme}://{auth}{self.host}:{self.port}/{db}"
        if self.tls:
            url += f"?ssl_ca_certs={quote(str(self.tls.ca), safe='/')}"
        return url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The full ``redis-server`` command line."""
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.tls:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            args += ["--port", str(self.port)]
        if self.requirepass is not None:
            args += ["--requirepass", self.requirepass]
        # Pub/sub channel permissions (&) exist from 6.2; before that every user
        # could use every channel.
        channels = ["&*"] if server_version(self.binary) >= (6, 2) else []
        for name, password in self.users.items():
            args += ["--user", name, "on", f">{password}", "~*", *channels, "+@all"]
        return args + list(self.extra_args)

    # -- lifecycle -----------------------------------------------------------

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the process on ``self.port`` and return once it answers PING.

        Raises:
            RedisServerError: it exited or did not answer within ``timeout``.
        """
        if self.running:
            return
        first = not self._started
        for attempt in range(3):
            try:
                self._start_once(timeout)
            except RedisServerError:
                # The free port can be taken between unused_port() and bind().
                # On the first start only (later starts must keep the port),
                # pick another one and try again.
                if first and attempt < 2 and "Address already in use" in self._log_tail():
                    self.port = unused_port()
                    continue
                raise
            self._started = True
            return

    def _start_once(self, timeout: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()  # so the log tail in errors is this run's
        proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        self._proc = proc
        _live.add(proc)
        try:
            self._wait_ready(proc, timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        # redis-server has no readiness signal: poll PING until a deadline.
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if proc.poll() is not None:
                    raise RedisServerError(
                        f"redis-server exited with {proc.returncode}:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"redis-server on port {self.port} did not answer PING within "
                        f"{timeout} s:\n{self._log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the process (a crash, no shutdown work) and reap it."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the process (clean shutdown) and reap it; SIGKILL if it hangs."""
        self._end(signal.SIGTERM)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            _live.discard(proc)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url_for()} {state}>"
