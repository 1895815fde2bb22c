"""The protocol-server process: uvicorn terminating for the gateway app.

``Server(config).serve()`` owns the runtime: the listening socket (bound
before uvicorn starts, so readiness is "bound and connected to Redis", with
no polling), the uvicorn server, and graceful shutdown on ``stop()``.
Signals are the CLI's business, not uvicorn's: we keep uvicorn from
installing (and later re-raising) its own handlers, so SIGTERM ends in exit 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Iterator

import anyio
import anyio.abc
import uvicorn

from channels_lite.exceptions import ChannelsLiteError

from .config import Config
from .gateway import Gateway
from .http_protocols import uvicorn_http
from .ws_protocols import uvicorn_ws

logger = logging.getLogger(__name__)


class StartupError(ChannelsLiteError):
    """The protocol server could not start (Redis unreachable, port taken, ...)."""


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are handled by our process, which calls stop()


class Server:
    """One protocol-server process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.gateway = Gateway(config)
        self._uvicorn: _Uvicorn | None = None
        self._stop_requested = False

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, relay connections until ``stop()``, then drain and return.

        ``task_status.started`` receives the bound ``(host, port)`` once the
        socket listens and Redis is reachable.

        Raises:
            StartupError: the socket could not be bound or the gateway could
                not reach Redis.
        """
        config = self.config
        sock = _bind(config.host, config.port)
        uv_config = uvicorn.Config(
            self.gateway,
            http=uvicorn_http(
                config.http,
                header_timeout=config.header_timeout,
                max_header_size=config.max_header_size,
            ),
            # h11's own bound on an incomplete head (a 400) stays above ours (a 431).
            h11_max_incomplete_event_size=2 * config.max_header_size,
            ws=uvicorn_ws(config.ws),
            lifespan="on",
            log_config=None,
            ws_max_size=config.ws_max_size,
            ws_per_message_deflate=config.ws_per_message_deflate,
            timeout_graceful_shutdown=math.ceil(config.shutdown_timeout),
            proxy_headers=False,
            server_header=False,
        )
        self._uvicorn = server = _Uvicorn(uv_config)
        bound = sock.getsockname()[:2]
        async with anyio.create_task_group() as tg:
            finished = anyio.Event()

            async def run_uvicorn() -> None:
                try:
                    await server.serve(sockets=[sock])
                except SystemExit:
                    # uvicorn exits when the gateway's start-up fails; the
                    # StartupError below says so in one line.
                    pass
                finally:
                    finished.set()
                    sock.close()

            tg.start_soon(run_uvicorn)
            with anyio.CancelScope() as wait_scope:
                tg.start_soon(_cancel_when, finished, wait_scope)
                await self.gateway.ready.wait()
                wait_scope.cancel()
            if not self.gateway.ready.is_set():
                raise StartupError("the gateway could not start (is Redis reachable?)")
            if self._stop_requested:
                server.should_exit = True
            logger.info("protocol server %s listening on %s:%d", self.gateway.server_id, *bound)
            task_status.started(bound)

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (``shutdown_timeout``), return."""
        self._stop_requested = True
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets
    # whose proto says TCP, and without it Nagle holds small writes for 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):  # several protocol servers, one port (`run`)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock
