"""The gateway as an importable ASGI app, for ASGI servers other than ours.

``channels-lite protocol-server`` runs the gateway under uvicorn and owns
the process (signals, drain). Any other ASGI 3 server can host it instead:
import ``protocol_server.asgi:app`` (or call ``create_app()``). Its settings
come from the same ``CHANNELS_LITE_*`` variables as the CLI's options
(:meth:`~protocol_server.config.Config.from_env`); the server's own options
decide where to listen, TLS, HTTP/2 and graceful shutdown, so ``bind``,
``http``, ``ws`` and ``shutdown_timeout`` do not apply. For example, HTTP/2
(and HTTP/1.1, and WebSocket over HTTP/1.1) with hypercorn::

    CHANNELS_LITE_REDIS_URL=redis://redis:6379/0 \\
        hypercorn --bind 0.0.0.0:8443 --certfile cert.pem --keyfile key.pem \\
        --insecure-bind 0.0.0.0:8000 protocol_server.asgi:app

Browsers speak HTTP/2 only over TLS (ALPN ``h2``); on the cleartext bind,
hypercorn takes h2c with prior knowledge or an ``Upgrade: h2c``. Each
hypercorn worker process (``--workers N``) is a protocol server with its
own id; leave ``CHANNELS_LITE_SERVER_ID`` unset then. Use the asyncio or
uvloop worker class (the Redis client is asyncio's), not trio.

Extensions that cross to the workers' apps are those the hosting server
advertises and that mean something in another process: under hypercorn,
``http.response.trailers`` (HTTP/2; the client must send ``te: trailers``)
and ``websocket.http.response``; under uvicorn only the latter.

Logging: our loggers (``protocol_server``, ``channels_lite``) propagate to
the root logger and this module configures nothing; warnings and errors
reach stderr regardless, and hypercorn's ``--log-config`` sets the rest.
"""

from __future__ import annotations

from .config import Config
from .gateway import Gateway

__all__ = ["app", "create_app"]


def create_app(config: Config | None = None) -> Gateway:
    """A gateway with ``config``, by default :meth:`Config.from_env`.

    Raises:
        ConfigError: a ``CHANNELS_LITE_*`` variable has a bad value.
    """
    return Gateway(config if config is not None else Config.from_env())


app = create_app()
