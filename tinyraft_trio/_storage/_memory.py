"""MemoryStorage: keeps a node's state in memory, for nodes that need no durability."""

from __future__ import annotations

from collections.abc import Sequence

from .._core._types import Entry, HardState, Index
from ._base import PersistentState


class MemoryStorage:
    """Storage in this process's memory.

    A node using it loses everything when its process exits. In simulation, keep the same
    MemoryStorage across a node's "crash" and restart: it then plays the part of the disk,
    holding exactly what the node persisted.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []
        self.persist_calls = 0

    async def load(self) -> PersistentState:
        """Return what was persisted so far."""
        return PersistentState(hard_state=self.hard_state, entries=tuple(self.entries))

    async def persist(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        """Apply the change at once (memory is "durable" for as long as this object lives)."""
        self.persist_calls += 1
        if hard_state is not None:
            self.hard_state = hard_state
        if first_index is not None:
            del self.entries[first_index - 1 :]
            if len(self.entries) != first_index - 1:
                raise ValueError(
                    f"gap in the log: writing from {first_index} after {len(self.entries)}"
                )
            self.entries.extend(entries)
