"""Name rules of the Channels channel layer spec, and per-channel capacities.

Kept apart from the backends so both enforce exactly the same rules: an app
tested on the in-memory layer must not meet a different validator on Redis.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from ..exceptions import ConfigError, InvalidChannelName, InvalidMessage

#: The spec's limit: names are shorter than this.
MAX_NAME_LENGTH: Final = 100

#: Undelivered entries a runtime process's inbox stream may hold: it carries
#: every connection of the process, bounded in practice by each connection's
#: flow-control window, not by a channel's capacity.
RELAY_CAPACITY: Final = 1_000_000

#: A protocol server's connection channels (``ps.<server>.<loop>!<n>``, what
#: apps get as ``scope["reply_channel"]``): every layer holds sends to them
#: to the relay's bound, so a push to a socket is not refused (``full``) just
#: because its server's stream is busy with other connections' traffic.
SOCKET_CHANNELS: Final = "ps.*!*"

_CHANNEL_RE: Final = re.compile(r"^[a-zA-Z\d\-_.]+(![\d\w\-_.]*)?$", re.ASCII)
_GROUP_RE: Final = re.compile(r"^[a-zA-Z\d\-_.]+$", re.ASCII)
_RULES: Final = (
    "must be a str shorter than 100 characters containing only ASCII letters, "
    "digits, hyphens, underscores and periods"
)


def _valid_channel(name: str) -> bool:
    return len(name) < MAX_NAME_LENGTH and _CHANNEL_RE.match(name) is not None


#: Cached: a process checks the same names (group members, normal channels)
#: over and over. Bounded, and process-specific names (one per connection in
#: the runtime, each seen a few times) do not go through it: a cache of
#: 65,536 of them was 10 MiB of a protocol server's memory after ten minutes.
_channel_ok = functools.lru_cache(maxsize=16384)(_valid_channel)


def check_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannelName`."""
    if not isinstance(name, str) or not (
        _valid_channel(name) if "!" in name else _channel_ok(name)
    ):
        raise InvalidChannelName(
            f"channel name {name!r} {_RULES} (plus one '!' for process-specific channels)"
        )
    return name


def check_group(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise :class:`InvalidChannelName`."""
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not _GROUP_RE.match(name):
        raise InvalidChannelName(f"group name {name!r} {_RULES}")
    return name


def check_message(message: object) -> dict[str, Any]:
    """Return ``message`` if it is a dict with a str ``type``; else raise InvalidMessage."""
    if not isinstance(message, dict):
        raise InvalidMessage(f"message must be a dict, not {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise InvalidMessage("message must have a str 'type' key")
    return message


def non_local_name(channel: str) -> str:
    """The part of a process-specific name up to and including ``!``; else the name."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


class CapacityTable:
    """Capacity per channel: the first matching ``channel_capacity`` pattern, else the default.

    Patterns are fnmatch globs (as in channels_redis) or compiled regexes.
    Lookups are cached: the set of channel names a process sees is bounded in
    practice, and the cache is cleared when it grows past a bound anyway.
    """

    _CACHE_LIMIT: Final = 10_000

    def __init__(
        self, default: int, patterns: Mapping[str | re.Pattern[str], int] | None = None
    ) -> None:
        self.default = _positive_int(default, "capacity")
        self._patterns: list[tuple[re.Pattern[str], int]] = []
        for pattern, value in (patterns or {}).items():
            regex = pattern if isinstance(pattern, re.Pattern) else _compile_glob(pattern)
            self._patterns.append((regex, _positive_int(value, f"channel_capacity[{pattern!r}]")))
        self._cache: dict[str, int] = {}

    def __call__(self, channel: str) -> int:
        # A process-specific name (``prefix!local``) is looked up by its
        # non-local part: all of them share one stream, whose capacity is what
        # the broker enforces, and the local parts are new per connection (a
        # cache keyed by them would only fill; matching the patterns on each
        # send was a tenth of a broadcasting worker's time). The patterns are
        # matched on the first full name seen: a pattern that tells local
        # parts apart would give one stream two capacities anyway.
        bang = channel.find("!")
        key = channel if bang < 0 else channel[: bang + 1]
        try:
            return self._cache[key]
        except KeyError:
            pass
        value = next((cap for rx, cap in self._patterns if rx.match(channel)), self.default)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = value
        return value


def _compile_glob(pattern: object) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ConfigError(f"channel_capacity keys must be str globs or regexes, not {pattern!r}")
    return re.compile(fnmatch.translate(pattern))


def _positive_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, not {value!r}")
    return value
