"""The StateMachine protocol: what users bring to be replicated."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class StateMachine(Protocol):
    """A deterministic state machine whose commands Raft replicates.

    Every node applies the same commands in the same order, so ``apply`` must depend only on
    the state and the command: no clocks, randomness, or I/O whose result differs by node.
    """

    def apply(self, command: bytes) -> object:
        """Apply one committed command and return its result.

        The result, or the exception raised, goes back to the caller that proposed the
        command (on the node it proposed on). Raising does not stop the node: the command
        counts as applied, so raise only where every node raises alike.
        """
        ...

    def snapshot(self) -> bytes:
        """Return the whole state as bytes (used to compact the log)."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with one produced by ``snapshot``."""
        ...
