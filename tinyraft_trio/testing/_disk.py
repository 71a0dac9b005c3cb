"""SimulatedDisk: storage whose writes take time and are lost when the node crashes first.

Like the lazyfs tests etcd runs: what was not yet fsynced when a node crashes is gone, or
only partly there. A node must never have acknowledged any of it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import trio

from .._core._types import Entry, HardState, Index, SnapshotMeta
from .._storage import MemoryStorage


class SimulatedDisk(MemoryStorage):
    """MemoryStorage with a write-then-fsync delay, in virtual time, that a crash can cut.

    ``persist`` holds its change in a volatile buffer for a random delay (the fsync); if the
    node is cancelled (crashed) meanwhile, a random prefix of the change survives — possibly
    the truncation without the new entries, possibly the hard state without the log — and
    the rest is lost. Snapshots are written atomically: the old or the new one survives.

    ``persist_now`` plays a fast disk written on the event loop (as ``FileStorage`` writes
    small appends): it takes the change with probability ``inline_rate``, at once and whole,
    and otherwise declines, so the node's other path runs too.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        fsync_delay: tuple[float, float] = (0.0, 0.004),
        inline_rate: float = 0.5,
    ):
        super().__init__()
        self._rng = rng
        self._fsync_delay = fsync_delay
        self._inline_rate = inline_rate
        self.torn_writes = 0
        self.inline_writes = 0

    async def persist(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        try:
            await trio.sleep(self._rng.uniform(*self._fsync_delay))
        except trio.Cancelled:
            self._keep_a_prefix(hard_state, first_index, entries)
            raise
        await super().persist(hard_state=hard_state, first_index=first_index, entries=entries)

    def persist_now(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> bool:
        if self._rng.random() >= self._inline_rate:
            return False
        self.inline_writes += 1
        self._write(hard_state, first_index, entries)
        return True

    def _keep_a_prefix(
        self, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        self.torn_writes += 1
        if hard_state is not None and self._rng.random() < 0.5:
            self.hard_state = hard_state
        if first_index is None or self._rng.random() < 0.3:
            return
        kept = self._rng.randint(0, len(entries))
        self._write(None, first_index, entries[:kept])

    async def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        await trio.sleep(self._rng.uniform(*self._fsync_delay))
        await super().save_snapshot(meta, data)
