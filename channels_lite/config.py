"""Configuration shared by every process: where Redis is and how keys are named.

Each process has its own frozen ``Config`` dataclass (``protocol_server.config``,
``worker.config``) that starts with these fields; the CLI names its options
exactly like the fields and builds the dataclass with ``Config(**params)``, so
the list of settings exists once. ``PublisherConfig`` is the settings of the
publishing clients (``channels_lite.client``) and of ``channels-lite publish``,
``enqueue`` and ``dead-letters``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .exceptions import ConfigError
from .sealing import keyring_from_settings
from .wire import DEFAULT_MAX_SIZE

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
_PREFIX_RE: Final = re.compile(r"[\w.\-]+")
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


#: What a boolean setting accepts from the environment: the words click accepts
#: for a ``--flag/--no-flag`` option's variable, so both readers agree.
_TRUE: Final = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE: Final = frozenset({"0", "false", "f", "no", "n", "off"})


def parse_bool(raw: str) -> bool:
    """``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off`` (any case).

    Raises:
        ValueError: anything else (``bool("false")`` would be ``True``).
    """
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(raw)


def check_positive(name: str, value: float) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be positive, not {value!r}")


@dataclass(frozen=True)
class PublisherConfig:
    """Settings of a publisher: the Python clients and ``channels-lite publish``.

    The layer settings (``capacity``, ``expiry``, ...) must match the
    deployment's, since a writer enforces them: the same defaults as the
    channel layer's.

    Attributes:
        redis_url: the broker (a redis://, rediss:// or unix:// URL).
        prefix: prefix of every Redis key; must match the deployment's.
        capacity: undelivered messages a channel holds before a send is refused.
        expiry: seconds an undelivered channel message lives.
        group_expiry: seconds a group membership lives unless re-added.
        max_message_size: largest encoded message or task, bytes.
        task_maxlen: approximate bound of each task stream; beyond it the
            oldest tasks are trimmed.
        timeout: seconds a Publisher call or a CLI command may take before
            it fails (AsyncPublisher leaves timeouts to its caller).
        channel_capacity: glob or regex patterns to capacities; first match wins.
        keys: the deployment's shared keys, ``id:base64key[,id:base64key...]``:
            every entry is written sealed with the first and must be sealed with
            one of them to be read (others are refused as malformed). Prefer
            the environment variable to the option: a command line is public.
        seal: how entries are sealed with ``keys``: ``sign`` (HMAC-SHA256) or
            ``encrypt`` (AES-256-GCM, needs ``channels-lite[crypto]``).
    """

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = "asgi"
    capacity: int = 100
    expiry: float = 60.0
    group_expiry: float = 86400.0
    max_message_size: int = DEFAULT_MAX_SIZE
    task_maxlen: int = 100_000
    timeout: float = 10.0
    channel_capacity: Mapping[str | re.Pattern[str], int] | None = None
    keys: str = ""
    seal: str = "sign"

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(f"prefix must be a non-empty word, not {self.prefix!r}")
        for name in ("capacity", "max_message_size", "task_maxlen"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        for name in ("expiry", "group_expiry", "timeout"):
            check_positive(name, getattr(self, name))
        keyring_from_settings(self.keys, self.seal)  # refuse a bad keyring now

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> PublisherConfig:
        """Settings from ``CHANNELS_LITE_*`` variables (and ``REDIS_URL``), then ``overrides``.

        Each field is read from ``CHANNELS_LITE_<FIELD>`` (the CLI's names);
        ``redis_url`` also from ``REDIS_URL``. Overrides that are ``None``
        are ignored, so ``from_env(redis_url=maybe_url)`` falls back to the
        environment.

        Raises:
            ConfigError: a value of the wrong type, or one the config refuses.
        """
        env = os.environ if environ is None else environ
        params: dict[str, Any] = {}
        for fld in dataclasses.fields(cls):
            kind = type(fld.default)
            if kind not in (str, int, float):
                continue  # not expressible in one variable
            name = f"CHANNELS_LITE_{fld.name.upper()}"
            raw = env.get(name)
            if not raw and fld.name == "redis_url":
                name, raw = "REDIS_URL", env.get("REDIS_URL")
            if not raw:
                continue
            try:
                params[fld.name] = kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be {kind.__name__}, not {raw!r}") from None
        params.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**params)
        except TypeError as exc:  # an unknown keyword
            raise ConfigError(str(exc)) from None
