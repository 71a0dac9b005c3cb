"""The Storage protocol: what a node needs to survive a restart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .._core._types import Entry, HardState, Index, SnapshotMeta


@dataclass(frozen=True, kw_only=True, slots=True)
class PersistentState:
    """Everything a node recovers on start."""

    hard_state: HardState
    snapshot: SnapshotMeta | None
    """The latest durable snapshot's metadata (read its bytes with ``read_snapshot``)."""
    entries: tuple[Entry, ...]
    """The stored log, contiguous. Without a snapshot it starts at index 1; with one it
    starts at or before ``snapshot.index + 1`` (entries kept behind a snapshot let slow
    followers catch up without one)."""


class Storage(Protocol):
    """Durable (or, for tests, simulated) storage of one node's Raft state.

    A node calls these methods from one task at a time, never concurrently.

    A storage may also offer ``persist_now(*, hard_state, first_index, entries) -> bool``:
    ``persist``'s work done synchronously when it is quick (a small append to a fast disk),
    returning True once durable, or False, having written nothing, to have the node call
    ``persist``. The node then writes without waiting for a task switch. It uses
    ``persist_now`` only where the class that defines ``persist`` also defines it, so a
    subclass that changes ``persist`` alone is never bypassed.
    """

    async def load(self) -> PersistentState:
        """Read back what was persisted. Cancelling it leaves the storage unchanged."""
        ...

    async def persist(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        """Make a change durable before returning.

        Records ``hard_state`` if given; if ``first_index`` is given, drops every stored entry
        at or after it, then stores ``entries`` (which start at ``first_index``). If this is
        cancelled, any prefix of the change may have been made durable.
        """
        ...

    async def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably replace the stored snapshot with ``data``, atomically.

        ``meta.size`` equals ``len(data)``. Either the old or the new snapshot survives a crash.
        """
        ...

    async def read_snapshot(self, offset: int = 0, size: int | None = None) -> bytes:
        """Read ``size`` bytes (all, if None) of the stored snapshot from ``offset``."""
        ...

    async def compact(self, through_index: Index) -> None:
        """Allow entries up to ``through_index`` to be discarded (a snapshot covers them).

        Storage may keep some of them (say, until a whole segment is covered); it never
        discards an entry after ``through_index``.
        """
        ...

    async def close(self) -> None:
        """Release what the storage holds (files, locks). Safe to call more than once."""
        ...
