"""The leader's view of one follower's log (etcd/raft's Progress)."""

from __future__ import annotations

import enum
from collections import deque

from ._types import Index


class ReplicationState(enum.Enum):
    """How the leader currently sends entries to a follower."""

    PROBE = "probe"
    """The follower's match point is unknown: one AppendEntries at a time until one succeeds."""
    REPLICATE = "replicate"
    """The follower is in step: stream AppendEntries optimistically, within the window."""
    SNAPSHOT = "snapshot"
    """The follower needs entries the leader compacted away: send the snapshot, chunk by chunk."""


class Progress:
    """What the leader knows about one follower.

    Invariant: 0 <= match_index < next_index.
    Invariant: in REPLICATE, ``inflight`` holds the last index of each unacknowledged
    AppendEntries carrying entries, in increasing order; in PROBE it is empty.
    """

    __slots__ = (
        "chunk_sent",
        "commit_sent",
        "inflight",
        "last_contact",
        "match_index",
        "next_index",
        "probe_sent",
        "read_round",
        "snapshot_index",
        "snapshot_offset",
        "state",
    )

    def __init__(self, next_index: Index) -> None:
        self.match_index: Index = 0
        self.next_index: Index = next_index
        self.state = ReplicationState.PROBE
        self.probe_sent = False
        self.inflight: deque[Index] = deque()
        self.commit_sent: Index = 0
        self.last_contact: float | None = None
        self.read_round = 0
        """The highest read-confirmation round this follower answered (ReadIndex)."""
        # In SNAPSHOT: which snapshot is being sent, how many bytes the follower holds, and
        # whether a chunk is awaiting its answer (one chunk in flight at a time).
        self.snapshot_index: Index = 0
        self.snapshot_offset = 0
        self.chunk_sent = False

    def become_probe(self) -> None:
        self.state = ReplicationState.PROBE
        self.next_index = max(self.next_index, self.match_index + 1)
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: Index) -> None:
        self.state = ReplicationState.SNAPSHOT
        self.snapshot_index = snapshot_index
        self.snapshot_offset = 0
        self.chunk_sent = False
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ReplicationState.REPLICATE
        self.next_index = self.match_index + 1
        self.probe_sent = False
        self.inflight.clear()

    def acknowledge(self, index: Index) -> bool:
        """Record that the follower holds everything up to ``index``; True if that is news."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match_index:
            return False
        self.match_index = index
        self.next_index = max(self.next_index, index + 1)
        return True
