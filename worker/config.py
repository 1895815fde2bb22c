"""The worker's settings: one frozen dataclass, the CLI's single source."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from channels_lite.config import DEFAULT_REDIS_URL, check_positive
from channels_lite.exceptions import ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Settings of one worker process.

    Attributes:
        app: the ASGI app as ``module:attribute`` (dots allowed in the attribute).
        redis_url: the broker; must be the protocol servers' broker.
        prefix: prefix of every Redis key; must match the protocol servers'.
        concurrency: connections this worker runs at once; it takes no new
            connection while full, so a busy worker leaves work to the others.
        flow_window: body bytes in flight per connection before the app's
            ``send`` waits for the protocol server to write them.
        shutdown_timeout: seconds in-flight connections get to finish on SIGTERM.
        reclaim_idle: seconds after which a connection taken by a worker that
            never started it (it died) is taken over by another worker.
        heartbeat_interval: seconds between this worker's liveness beats.
        heartbeat_timeout: seconds of silence after which a process counts as
            gone: this worker's apps get a disconnect when their protocol
            server has been silent that long.
        lifespan: ``auto`` (run it if the app supports it), ``on`` or ``off``.
        worker_id: this process's id in Redis (random when empty).
        app_dir: directory put first on ``sys.path`` before importing ``app``.
    """

    app: str
    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = "asgi"
    concurrency: int = 100
    flow_window: int = 1 * MiB
    shutdown_timeout: float = 30.0
    reclaim_idle: float = 5.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    lifespan: str = "auto"
    worker_id: str = ""
    app_dir: str = "."

    def __post_init__(self) -> None:
        if ":" not in self.app:
            raise ConfigError(f"app must be 'module:attribute', not {self.app!r}")
        for name in ("concurrency", "flow_window", "reclaim_idle", "heartbeat_interval"):
            check_positive(name, getattr(self, name))
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must exceed heartbeat_interval")
        if self.shutdown_timeout < 0:
            raise ConfigError(f"shutdown_timeout must be >= 0, not {self.shutdown_timeout!r}")
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"lifespan must be auto, on or off, not {self.lifespan!r}")

    def load_app(self) -> Any:
        """Import and return the ASGI app.

        Raises:
            ConfigError: the module or attribute does not exist, or is not callable.
        """
        module_name, _, attrs = self.app.partition(":")
        if self.app_dir and self.app_dir not in sys.path:
            sys.path.insert(0, self.app_dir)
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise ConfigError(f"could not import module {module_name!r}") from exc
            raise
        for attr in attrs.split("."):
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise ConfigError(
                    f"attribute {attrs!r} not found in module {module_name!r}"
                ) from None
        if not callable(obj):
            raise ConfigError(f"{self.app!r} is not callable")
        return obj
