"""Reading a process-specific stream by following it, instead of popping it.

A process-specific stream (``name!``) has one reader: the event loop that
owns the channels ``name!…``. So it need not be popped atomically: the reader
follows it with a blocking ``XREAD`` from the last id it has seen, which
returns the entries that woke it (one round trip, where a wait plus a pop took
two), and then deletes what it has read. The delete is written before any
receive that was waiting for those entries runs, so every command this
process sends afterwards (a send that checks the stream's capacity, say)
reaches Redis after it; but no receive waits for its reply. This module is
the bookkeeping of where to read from; it does no I/O.

Why the position falls back to the stream's start: once every delete has
landed the stream holds only unread entries, so reading from ``0-0`` is
exact, and it also finds entries of a stream that was deleted and recreated
meanwhile (a flush, an expired key, a restarted broker), whose ids may be
lower than the last one seen. While a delete is outstanding (or failed) the
last id is used, so nothing is read twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

START = b"0-0"


@dataclass(slots=True)
class TailPosition:
    """Where the next read of one stream starts, and what is left to delete."""

    after: bytes = START
    deleting: int = 0  # delete calls on their way
    undeleted: list[bytes] = field(default_factory=list)  # failed deletes, to retry

    def start(self) -> bytes:
        """The id to read after."""
        return self.after if (self.deleting or self.undeleted) else START

    def read(self, ids: list[bytes]) -> list[bytes]:
        """Entries ``ids`` were read; returns the ids to delete now, in one call."""
        self.after = ids[-1]
        batch, self.undeleted = self.undeleted + ids, []
        self.deleting += 1
        return batch

    def deleted(self, ids: list[bytes], *, ok: bool) -> None:
        """A delete of ``ids`` finished; failed ones go with the next delete."""
        self.deleting -= 1
        if not ok:
            self.undeleted[:0] = ids
