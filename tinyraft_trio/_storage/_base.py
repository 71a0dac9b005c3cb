"""The Storage protocol: what a node needs to survive a restart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .._core._types import Entry, HardState, Index


@dataclass(frozen=True, kw_only=True, slots=True)
class PersistentState:
    """Everything a node recovers on start."""

    hard_state: HardState
    entries: tuple[Entry, ...]
    """The log, from index 1, contiguous."""


class Storage(Protocol):
    """Durable (or, for tests, simulated) storage of one node's Raft state."""

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
