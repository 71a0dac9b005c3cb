"""The in-memory Raft log, and what part of it still has to reach the disk."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._types import Entry, Index, Term


class RaftLog:
    """A contiguous run of entries ``first_index .. last_index``.

    Entries before ``first_index`` have been compacted into a snapshot whose last entry is
    ``(snapshot_index, snapshot_term)``; index 0 with term 0 is the empty log's sentinel.

    The log also remembers the lowest index changed since the driver last took the unstable
    entries (``take_unstable``), so the driver knows exactly what to write, and in which order.
    """

    def __init__(
        self,
        entries: Sequence[Entry] = (),
        *,
        snapshot_index: Index = 0,
        snapshot_term: Term = 0,
    ) -> None:
        self._snapshot_index = snapshot_index
        self._snapshot_term = snapshot_term
        # Invariant: self._entries[i].index == snapshot_index + 1 + i.
        self._entries: list[Entry] = []
        for expected, entry in enumerate(entries, start=snapshot_index + 1):
            if entry.index != expected:
                raise ValueError(f"log entries are not contiguous at index {expected}")
            self._entries.append(entry)
        # Invariant: entries at or after _unstable_from are not yet handed to storage.
        self._unstable_from: Index = self.last_index + 1
        self._dirty = False

    @property
    def first_index(self) -> Index:
        return self._snapshot_index + 1

    @property
    def last_index(self) -> Index:
        return self._snapshot_index + len(self._entries)

    @property
    def last_term(self) -> Term:
        return self._entries[-1].term if self._entries else self._snapshot_term

    def term_at(self, index: Index) -> Term | None:
        """The term of the entry at ``index``, or None if the log does not hold it."""
        if index == self._snapshot_index:
            return self._snapshot_term
        offset = index - self._snapshot_index - 1
        if 0 <= offset < len(self._entries):
            return self._entries[offset].term
        return None

    def entry(self, index: Index) -> Entry:
        """The entry at ``index``; raises IndexError outside ``first_index..last_index``."""
        offset = index - self._snapshot_index - 1
        if not 0 <= offset < len(self._entries):
            raise IndexError(f"log index {index} outside {self.first_index}..{self.last_index}")
        return self._entries[offset]

    def slice(self, low: Index, high: Index, *, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``low .. high - 1`` (clamped to the log), at most ``max_bytes`` of data.

        The first entry is always included, however large, so replication never stalls.
        """
        start = max(low, self.first_index) - self._snapshot_index - 1
        stop = min(high, self.last_index + 1) - self._snapshot_index - 1
        if start >= stop:
            return []
        if max_bytes is None:
            return self._entries[start:stop]
        taken: list[Entry] = []
        size = 0
        for entry in self._entries[start:stop]:
            size += len(entry.data) + 16
            if taken and size > max_bytes:
                break
            taken.append(entry)
        return taken

    def last_index_of_term(self, term: Term, at_or_before: Index) -> Index | None:
        """The highest index <= ``at_or_before`` whose entry has ``term``, if any."""
        index = min(at_or_before, self.last_index)
        while index >= self.first_index:
            entry_term = self._entries[index - self._snapshot_index - 1].term
            if entry_term == term:
                return index
            if entry_term < term:
                return None
            index -= 1
        return None

    def first_index_of_term(self, index: Index) -> Index:
        """The first index of the run of entries sharing the term of the entry at ``index``."""
        term = self.term_at(index)
        while index - 1 >= self.first_index and self.term_at(index - 1) == term:
            index -= 1
        return index

    def is_up_to_date(self, last_log_index: Index, last_log_term: Term) -> bool:
        """Whether a log ending at (index, term) is at least as up to date as this one (§5.4.1)."""
        return last_log_term > self.last_term or (
            last_log_term == self.last_term and last_log_index >= self.last_index
        )

    def append(self, entries: Iterable[Entry]) -> None:
        """Append entries that must continue the log exactly (all of them, or none)."""
        entries = list(entries)
        expected = self.last_index + 1
        for entry in entries:
            if entry.index != expected:
                raise ValueError(f"entry {entry.index} does not follow {expected - 1}")
            expected += 1
        if entries:
            self._entries.extend(entries)
            self._dirty = True

    def truncate_from(self, index: Index) -> None:
        """Drop the entries at ``index`` and after (a conflicting suffix, §5.3)."""
        if index < self.first_index:
            raise ValueError(f"cannot truncate compacted index {index}")
        del self._entries[index - self._snapshot_index - 1 :]
        self._unstable_from = min(self._unstable_from, index)
        self._dirty = True

    def compact(self, through_index: Index) -> None:
        """Drop the entries up to ``through_index``: a durable snapshot covers them.

        Only entries already handed to storage may go (the caller ensures it).
        """
        if through_index <= self._snapshot_index:
            return
        if through_index > self.last_index or through_index >= self._unstable_from:
            raise ValueError(f"cannot compact through {through_index}: not yet stable")
        self._snapshot_term = self.entry(through_index).term
        del self._entries[: through_index - self._snapshot_index]
        self._snapshot_index = through_index

    def trailing_start(self, index: Index, max_entries: int, max_bytes: int) -> Index:
        """The lowest index down to which the entries ending at ``index`` stay within both
        ``max_entries`` and ``max_bytes`` of data (``index + 1`` if none fits).

        Bytes matter as much as entries: one batch entry can hold a thousand commands.
        """
        low = index + 1
        size = 0
        floor = max(self.first_index, index - max_entries + 1)
        while low > floor:
            size += len(self._entries[low - self._snapshot_index - 2].data)
            if size > max_bytes:
                break
            low -= 1
        return low

    def reset(self, snapshot_index: Index, snapshot_term: Term) -> None:
        """Discard the whole log: a snapshot that this log does not contain replaces it."""
        self._entries.clear()
        self._snapshot_index = snapshot_index
        self._snapshot_term = snapshot_term
        self._unstable_from = snapshot_index + 1
        self._dirty = True

    def take_unstable(self) -> tuple[Index, list[Entry]]:
        """Return (first index to rewrite, entries to write from it), marking them handed over.

        Storage must drop every stored entry at or after the first index before writing.
        """
        first = self._unstable_from
        entries = self.slice(first, self.last_index + 1)
        self._unstable_from = self.last_index + 1
        self._dirty = False
        return first, entries

    @property
    def handed_index(self) -> Index:
        """Entries up to here were handed to storage (by ``take_unstable``)."""
        return self._unstable_from - 1

    @property
    def has_unstable(self) -> bool:
        """Whether entries were appended or truncated since the last ``take_unstable``."""
        return self._dirty
