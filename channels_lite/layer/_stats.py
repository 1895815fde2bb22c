"""Counters every channel layer keeps, and the snapshot ``statistics()`` returns.

Delivery on the layer is at most once (the Channels spec), so the promise we
can make is that every message that is *not* delivered is counted: refused at
send (``full``), skipped in a ``group_send`` (``dropped``), aged out
(``expired``), or unreadable (``malformed``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    """Mutable counters; only the layer that owns them writes them."""

    sent: int = 0
    received: int = 0
    group_sends: int = 0
    dropped: int = 0
    expired: int = 0
    full: int = 0
    malformed: int = 0

    def snapshot(self) -> LayerStatistics:
        return LayerStatistics(
            sent=self.sent,
            received=self.received,
            group_sends=self.group_sends,
            dropped=self.dropped,
            expired=self.expired,
            full=self.full,
            malformed=self.malformed,
        )


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """A point-in-time copy of a layer's counters (this process only).

    Attributes:
        sent: messages accepted by ``send`` plus group deliveries written.
        received: messages returned by ``receive``.
        group_sends: calls to ``group_send``.
        dropped: group members skipped because their channel was at capacity,
            plus messages evicted from a full local buffer.
        expired: messages removed unread because they outlived ``expiry``.
        full: ``ChannelFull`` raised by ``send``.
        malformed: entries that could not be decoded and were skipped.
    """

    sent: int
    received: int
    group_sends: int
    dropped: int
    expired: int
    full: int
    malformed: int
