"""channels-lite: a distributed ASGI runtime on Redis Streams.

This package holds what every process shares: the wire codec, the channel
layers, key naming and the exceptions.
"""

from __future__ import annotations

from .exceptions import (
    BrokerError,
    BrokerUnavailable,
    ChannelFull,
    ChannelsLiteError,
    ConfigError,
    InvalidChannelName,
    InvalidMessage,
    WireError,
)
from .layer import InMemoryChannelLayer, LayerStatistics, RedisStreamsChannelLayer

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ChannelFull",
    "ChannelsLiteError",
    "ConfigError",
    "InMemoryChannelLayer",
    "InvalidChannelName",
    "InvalidMessage",
    "LayerStatistics",
    "RedisStreamsChannelLayer",
    "WireError",
    "__version__",
]
