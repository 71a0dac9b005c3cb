"""MemoryStorage: keeps a node's state in memory, for nodes that need no durability."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from .._core._types import Entry, HardState, Index, SnapshotMeta
from ._base import PersistentState


class MemoryStorage:
    """Storage in this process's memory.

    A node using it loses everything when its process exits. In simulation, keep the same
    MemoryStorage across a node's "crash" and restart: it then plays the part of the disk,
    holding exactly what the node persisted.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        # Invariant: entries are contiguous; entries[0].index == self.first_index.
        self.entries: list[Entry] = []
        self.first_index: Index = 1
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_data = b""

    async def load(self) -> PersistentState:
        """Return what was persisted so far."""
        await trio.lowlevel.checkpoint()
        return PersistentState(
            hard_state=self.hard_state, snapshot=self.snapshot, entries=tuple(self.entries)
        )

    async def persist(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        """Apply the change at once (memory is "durable" for as long as this object lives).

        A cancellation point but not a schedule point: the node's ready loop sends right
        after persisting, and yielding here would only delay that by a scheduler round.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._write(hard_state, first_index, entries)

    def persist_now(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> bool:
        """``persist``, synchronously; always possible in memory, so always True."""
        self._write(hard_state, first_index, entries)
        return True

    def _write(
        self, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        if hard_state is not None:
            self.hard_state = hard_state
        if first_index is None:
            return
        if first_index < self.first_index:
            self.entries.clear()
            self.first_index = first_index
        del self.entries[first_index - self.first_index :]
        if not self.entries:
            self.first_index = first_index
        elif self.first_index + len(self.entries) != first_index:
            last = self.first_index + len(self.entries) - 1
            raise ValueError(f"gap in the log: writing from {first_index} after {last}")
        self.entries.extend(entries)

    async def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.snapshot, self.snapshot_data = meta, bytes(data)

    async def read_snapshot(self, offset: int = 0, size: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        end = len(self.snapshot_data) if size is None else offset + size
        return self.snapshot_data[offset:end]

    async def compact(self, through_index: Index) -> None:
        await trio.lowlevel.checkpoint()
        drop = min(max(0, through_index - self.first_index + 1), len(self.entries))
        del self.entries[:drop]
        self.first_index += drop

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
