"""channels-lite: a distributed ASGI runtime on Redis Streams.

This package holds what every process shares: the wire codec, the channel
layers, key naming and the exceptions, and the clients that other services
publish with (``Publisher``, ``AsyncPublisher``).
"""

from __future__ import annotations

from .client import AsyncPublisher, Publisher
from .config import PublisherConfig
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
    "AsyncPublisher",
    "BrokerError",
    "BrokerUnavailable",
    "ChannelFull",
    "ChannelsLiteError",
    "ConfigError",
    "InMemoryChannelLayer",
    "InvalidChannelName",
    "InvalidMessage",
    "LayerStatistics",
    "Publisher",
    "PublisherConfig",
    "RedisStreamsChannelLayer",
    "WireError",
    "__version__",
]
