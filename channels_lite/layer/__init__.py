"""Channel layers implementing the Django Channels channel layer spec.

``RedisStreamsChannelLayer`` is the production backend and a drop-in
``CHANNEL_LAYERS`` backend for Channels; ``InMemoryChannelLayer`` has the same
semantics in one process. See ``_base`` for the rules both follow.
"""

from __future__ import annotations

from ._base import BaseChannelLayer
from ._inbox import OnArrival, Shedding
from ._stats import LayerStatistics
from .memory import InMemoryChannelLayer
from .redis import RedisStreamsChannelLayer

__all__ = [
    "BaseChannelLayer",
    "InMemoryChannelLayer",
    "LayerStatistics",
    "OnArrival",
    "RedisStreamsChannelLayer",
    "Shedding",
]
