"""``channels-lite run``: a local deployment supervised in one command."""

from __future__ import annotations

from ._process import ChildFailed
from .broker import BrokerError, EmbeddedBroker, find_binary
from .config import RunConfig
from .supervisor import Supervisor, watch_supervisor

__all__ = [
    "BrokerError",
    "ChildFailed",
    "EmbeddedBroker",
    "RunConfig",
    "Supervisor",
    "find_binary",
    "watch_supervisor",
]
