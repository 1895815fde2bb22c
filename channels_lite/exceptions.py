"""One exception hierarchy for everything channels-lite raises on purpose.

Every error that the library raises deliberately derives from
:class:`ChannelsLiteError`, so callers can catch "anything from us" in one
clause. Where a Python built-in already names the category (a bad name is a
``TypeError``, a malformed entry is a ``ValueError``), the class derives from it
too, so code written against Django Channels' in-memory layer, which raises the
built-ins, keeps working.

``ChannelFull`` additionally derives from ``channels.exceptions.ChannelFull``
when Django Channels is importable, so ``except channels.exceptions.ChannelFull``
in an existing consumer catches ours. Channels is never a dependency: without it
the base is plain ``Exception``.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ChannelFull",
    "ChannelsLiteError",
    "ConfigError",
    "InvalidChannelName",
    "InvalidMessage",
    "WireError",
]


class ChannelsLiteError(Exception):
    """Root of every exception channels-lite raises deliberately."""


class WireError(ChannelsLiteError, ValueError):
    """An entry or value cannot be encoded to, or decoded from, the wire format.

    Raised for anything malformed: not msgpack, an unknown version, wrong field
    types, or a size over the configured limit. The message says which.
    """


class ConfigError(ChannelsLiteError, ValueError):
    """A configuration value is invalid (bad URL, negative limit, ...)."""


class InvalidChannelName(ChannelsLiteError, TypeError):
    """A channel or group name does not follow the channel layer spec."""


class InvalidMessage(ChannelsLiteError, TypeError):
    """A message is not a dict with a ``str`` ``type`` key."""


class BrokerError(ChannelsLiteError):
    """Redis refused or failed an operation (bad credentials, missing ACL rights, ...)."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """Redis could not be reached, or dropped the connection, during an operation."""


def _channel_full_bases() -> tuple[type[Exception], ...]:
    try:
        from channels.exceptions import ChannelFull as _ChannelsFull
    except ImportError:  # Channels is optional
        return (ChannelsLiteError,)
    # Channels' class derives from Exception only, so the MRO is consistent.
    return (ChannelsLiteError, _ChannelsFull)


# Built with type() so the optional base is chosen at import time without
# confusing static type checkers: statically it is a ChannelsLiteError.
ChannelFull: type[ChannelsLiteError] = type(
    "ChannelFull",
    _channel_full_bases(),
    {
        "__doc__": "The destination channel is at capacity; the message was not sent.",
        "__module__": __name__,
    },
)
