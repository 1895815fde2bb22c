"""The protocol server's settings: one frozen dataclass, the CLI's single source."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from channels_lite.config import DEFAULT_REDIS_URL, check_positive, parse_bind, parse_bool
from channels_lite.exceptions import ConfigError
from channels_lite.sealing import keyring_from_settings

MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Settings of one protocol-server process.

    Attributes:
        redis_url: the broker (``redis://``, ``rediss://``, ``unix://``).
        bind: ``HOST:PORT`` to listen on.
        prefix: prefix of every Redis key; must match the workers'.
        queue_timeout: seconds a new connection waits for a worker before 503.
        max_pending: connections offered to the workers and not yet taken; a
            new one beyond it gets 503 at once instead of joining the wait.
        max_body_size: largest request body, bytes; beyond it 413.
        ws_max_size: largest WebSocket message, bytes, in either direction.
        ws_max_queue: WebSocket messages from a client that the app has not
            yet received; one more closes the connection with 1013 (try
            again later) instead of buffering without end.
        ws_max_push_backlog: pushes (``websocket.push`` messages sent to a
            socket's ``reply_channel`` or to a group it joined) that may wait
            for one slow WebSocket client, and at most ``flow_window`` bytes
            of them; beyond either the oldest is dropped and counted, so a
            client that stops reading costs bounded memory.
        flow_window: body bytes in flight per connection and direction before
            the sender waits for the receiver to consume them.
        header_timeout: seconds a client has to send a request's line and
            headers (from connecting, or from the request's first byte);
            beyond it 408 and the connection is closed.
        max_header_size: largest request line plus headers, bytes; beyond it 431.
        shutdown_timeout: seconds in-flight requests get to finish on SIGTERM.
        heartbeat_interval: seconds between this server's liveness beats.
        heartbeat_timeout: seconds of silence after which a process counts as
            gone: a connection whose worker has been silent that long gets 502
            (response not started) or close 1011.
        http: uvicorn's HTTP implementation (``httptools`` or ``h11``).
        ws: uvicorn's WebSocket implementation (``websockets``, ``wsproto``, ...).
        ws_per_message_deflate: agree to permessage-deflate (RFC 7692) when a
            client offers it, as browsers do: less bandwidth for compressible
            messages, at the price of CPU to compress every frame per
            connection (a broadcast compresses the same message once per
            client) and a zlib state per connection. Clients that do not offer
            it are not affected either way.
        server_id: this process's id in Redis (random when empty).
        keys: the deployment's shared keys, ``id:base64key[,id:base64key...]``:
            every entry is written sealed with the first and must be sealed with
            one of them to be read (others are refused as malformed). Prefer
            the environment variable to the option: a command line is public.
        seal: how entries are sealed with ``keys``: ``sign`` (HMAC-SHA256) or
            ``encrypt`` (AES-256-GCM, needs ``channels-lite[crypto]``).
    """

    redis_url: str = DEFAULT_REDIS_URL
    bind: str = "127.0.0.1:8000"
    prefix: str = "asgi"
    queue_timeout: float = 10.0
    max_pending: int = 1000
    max_body_size: int = 128 * MiB
    ws_max_size: int = 1 * MiB
    ws_max_queue: int = 1000
    ws_max_push_backlog: int = 1000
    flow_window: int = 1 * MiB
    header_timeout: float = 10.0
    max_header_size: int = 64 * 1024
    shutdown_timeout: float = 30.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    http: str = "httptools"
    ws: str = "websockets-sansio"
    ws_per_message_deflate: bool = True
    server_id: str = ""
    keys: str = ""
    seal: str = "sign"
    host: str = field(init=False, repr=False)
    port: int = field(init=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Settings from ``CHANNELS_LITE_*`` variables, named as the CLI's options.

        ``--flow-window`` is ``CHANNELS_LITE_FLOW_WINDOW``, and so on for every
        field (``REDIS_URL`` too, as the CLI accepts it); unset ones keep
        their defaults. For an ASGI server other than ours that imports the
        gateway (``protocol_server.asgi``), where there is no command line.

        Raises:
            ConfigError: a value of the wrong type, or one ``Config`` refuses.
        """
        env = os.environ if environ is None else environ
        params: dict[str, Any] = {}
        for fld in dataclasses.fields(cls):
            if not fld.init:
                continue
            name = f"CHANNELS_LITE_{fld.name.upper()}"
            raw = env.get(name)
            if not raw and fld.name == "redis_url":
                name, raw = "REDIS_URL", env.get("REDIS_URL")
            if not raw:
                continue
            kind: type[Any] = type(fld.default)  # every field has a str/int/float/bool default
            try:
                params[fld.name] = parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be {kind.__name__}, not {raw!r}") from None
        return cls(**params)

    def __post_init__(self) -> None:
        host, port = parse_bind(self.bind)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        for name in (
            "queue_timeout",
            "max_pending",
            "max_body_size",
            "ws_max_size",
            "ws_max_queue",
            "ws_max_push_backlog",
            "flow_window",
            "header_timeout",
            "max_header_size",
            "heartbeat_interval",
        ):
            check_positive(name, getattr(self, name))
        if self.shutdown_timeout < 0:
            raise ConfigError(f"shutdown_timeout must be >= 0, not {self.shutdown_timeout!r}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must exceed heartbeat_interval")
        if self.server_id and not re.fullmatch(r"[A-Za-z0-9_\-]{1,40}", self.server_id):
            # It names the server's channels: ps.<server_id>.<...>!<...>
            raise ConfigError(
                f"server_id must be 1 to 40 ASCII letters, digits, '-' or '_', "
                f"not {self.server_id!r}"
            )
        keyring_from_settings(self.keys, self.seal)  # refuse a bad keyring now
