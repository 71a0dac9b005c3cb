"""Which configuration is in force: the latest one in the log, committed or not (§4.1)."""

from __future__ import annotations

from collections.abc import Iterable

from ._types import Entry, EntryKind, Index, Membership


class ConfigurationHistory:
    """The base configuration (initial, or from a snapshot) and each CONFIG entry in the log.

    A server uses the latest configuration in its log, whether or not it is committed
    (dissertation §4.1), so a truncated CONFIG entry must give way to the one before it.

    Invariant: ``_entries`` holds (index, membership) of the CONFIG entries after
    ``_base_index``, in increasing index order.
    """

    def __init__(self, base: Membership, base_index: Index = 0) -> None:
        self._base = base
        self._base_index = base_index
        self._entries: list[tuple[Index, Membership]] = []
        # Asked for every message a node receives: kept until the history changes.
        self._known_ids: frozenset[str] | None = None

    @property
    def latest(self) -> Membership:
        return self._entries[-1][1] if self._entries else self._base

    @property
    def latest_index(self) -> Index:
        """The index of the entry that set the latest configuration (the base's, if none)."""
        return self._entries[-1][0] if self._entries else self._base_index

    @property
    def known_ids(self) -> frozenset[str]:
        """Every node named by any configuration this log holds, committed or not."""
        if self._known_ids is None:
            ids = set(self._base.ids)
            for _, membership in self._entries:
                ids |= membership.ids
            self._known_ids = frozenset(ids)
        return self._known_ids

    def at(self, index: Index) -> Membership:
        """The configuration in force once entries up to ``index`` are applied."""
        current = self._base
        for entry_index, membership in self._entries:
            if entry_index > index:
                break
            current = membership
        return current

    def appended(self, entries: Iterable[Entry]) -> bool:
        """Record the CONFIG entries among newly appended ``entries``; True if any."""
        changed = False
        config = EntryKind.CONFIG  # looked up once: an enum member lookup is slow on 3.11
        for entry in entries:
            if entry.kind is config:
                self._entries.append((entry.index, Membership.from_bytes(entry.data)))
                self._known_ids = None
                changed = True
        return changed

    def truncated(self, from_index: Index) -> bool:
        """Forget configurations of entries at ``from_index`` and after; True if any."""
        kept = [item for item in self._entries if item[0] < from_index]
        changed = len(kept) != len(self._entries)
        self._entries = kept
        self._known_ids = None
        return changed

    def compacted(self, through_index: Index) -> None:
        """Fold configurations up to ``through_index`` into the base (a snapshot covers them)."""
        while self._entries and self._entries[0][0] <= through_index:
            self._base_index, self._base = self._entries.pop(0)
            self._known_ids = None

    def reset(self, base: Membership, base_index: Index) -> None:
        """Start over from a snapshot's configuration (the log was discarded)."""
        self._base, self._base_index, self._entries = base, base_index, []
        self._known_ids = None
