"""Configuration shared by every process: where Redis is and how keys are named.

Each process has its own frozen ``Config`` dataclass (``protocol_server.config``,
``worker.config``) that starts with these fields; the CLI names its options
exactly like the fields and builds the dataclass with ``Config(**params)``, so
the list of settings exists once.
"""

from __future__ import annotations

import os
import re
from typing import Final

from .exceptions import ConfigError

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
_BIND_RE: Final = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[^:\[\]]*):(?P<port>\d{1,5})$")


def redis_url_from_env(default: str = DEFAULT_REDIS_URL) -> str:
    """``CHANNELS_LITE_REDIS_URL``, else ``REDIS_URL``, else ``default``."""
    return os.environ.get("CHANNELS_LITE_REDIS_URL") or os.environ.get("REDIS_URL") or default


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into a host and a port.

    Raises:
        ConfigError: not of that form, or the port is out of range.
    """
    match = _BIND_RE.match(bind)
    if match is None:
        raise ConfigError(f"bind must be HOST:PORT, not {bind!r}")
    port = int(match["port"])
    if port > 65535:
        raise ConfigError(f"port {port} is out of range")
    host = match["host"].strip("[]") or "0.0.0.0"
    return host, port


def check_positive(name: str, value: float) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be positive, not {value!r}")
