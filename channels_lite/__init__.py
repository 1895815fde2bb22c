"""channels-lite: a distributed ASGI runtime on Redis Streams.

This package holds what every process shares: the wire codec, the channel
layers, key naming and the exceptions, and the clients that other services
publish with (``Publisher``, ``AsyncPublisher``), and the registry of
background-task handlers (``TaskRegistry``).
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
from .tasks import TaskContext, TaskRegistry

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
    "TaskContext",
    "TaskRegistry",
    "WireError",
    "__version__",
]
