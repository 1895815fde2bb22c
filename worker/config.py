"""The worker's settings: one frozen dataclass, the CLI's single source."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from channels_lite.config import DEFAULT_REDIS_URL, check_positive
from channels_lite.exceptions import ConfigError
from channels_lite.sealing import keyring_from_settings
from channels_lite.tasks import TaskRegistry

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
        tasks: a task registry as ``module:attribute``
            (``channels_lite.tasks.TaskRegistry``); the worker consumes the
            task channels it declares. Empty: no background tasks.
        task_concurrency: tasks this worker runs at once, apart from its
            connections; it takes no new task while full.
        task_max_attempts: runs a task gets before it goes to the dead letters.
        task_retry_backoff: seconds before the first retry of a failed task;
            each later retry waits twice as long as the one before.
        task_retry_backoff_max: the longest wait before a retry, seconds.
        keys: the deployment's shared keys, ``id:base64key[,id:base64key...]``:
            every entry is written sealed with the first and must be sealed with
            one of them to be read (others are refused as malformed). Prefer
            the environment variable to the option: a command line is public.
        seal: how entries are sealed with ``keys``: ``sign`` (HMAC-SHA256) or
            ``encrypt`` (AES-256-GCM, needs ``channels-lite[crypto]``).
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
    tasks: str = ""
    task_concurrency: int = 10
    task_max_attempts: int = 5
    task_retry_backoff: float = 1.0
    task_retry_backoff_max: float = 60.0
    keys: str = ""
    seal: str = "sign"

    def __post_init__(self) -> None:
        if ":" not in self.app:
            raise ConfigError(f"app must be 'module:attribute', not {self.app!r}")
        for name in (
            "concurrency",
            "flow_window",
            "reclaim_idle",
            "heartbeat_interval",
            "task_concurrency",
            "task_max_attempts",
            "task_retry_backoff_max",
        ):
            check_positive(name, getattr(self, name))
        if self.tasks and ":" not in self.tasks:
            raise ConfigError(f"tasks must be 'module:attribute', not {self.tasks!r}")
        if self.task_retry_backoff < 0:
            raise ConfigError(f"task_retry_backoff must be >= 0, not {self.task_retry_backoff!r}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must exceed heartbeat_interval")
        if self.shutdown_timeout < 0:
            raise ConfigError(f"shutdown_timeout must be >= 0, not {self.shutdown_timeout!r}")
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"lifespan must be auto, on or off, not {self.lifespan!r}")
        keyring_from_settings(self.keys, self.seal)  # refuse a bad keyring now

    def load_app(self) -> Any:
        """Import and return the ASGI app.

        Raises:
            ConfigError: the module or attribute does not exist, or is not callable.
        """
        obj = self._import(self.app)
        if not callable(obj):
            raise ConfigError(f"{self.app!r} is not callable")
        return obj

    def load_tasks(self) -> TaskRegistry | None:
        """Import and return the task registry (``None`` when ``tasks`` is empty).

        Raises:
            ConfigError: the module or attribute does not exist, or is not a
                ``TaskRegistry``.
        """
        if not self.tasks:
            return None
        obj = self._import(self.tasks)
        if not isinstance(obj, TaskRegistry):
            raise ConfigError(f"{self.tasks!r} is not a channels_lite.tasks.TaskRegistry")
        return obj

    def _import(self, spec: str) -> Any:
        module_name, _, attrs = spec.partition(":")
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
        return obj
