"""Plain values shared by the pure Raft core and the driver."""

from __future__ import annotations

import enum
from dataclasses import dataclass

NodeId = str
"""A node's identity: a short string chosen by the operator, stable across restarts."""

Term = int
Index = int


class Role(enum.Enum):
    """What a node currently does in its cluster (Raft §5.1)."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    """What a log entry carries; the number is its wire and disk encoding."""

    COMMAND = 0
    """A user command, handed to the state machine when committed."""
    NOOP = 1
    """Appended by each new leader so entries of earlier terms commit (§5.4.2, §8)."""
    CONFIG = 2
    """A cluster membership change."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One log entry. Entries are immutable; the log only ever appends or truncates."""

    term: Term
    index: Index
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""


@dataclass(frozen=True, kw_only=True, slots=True)
class HardState:
    """The state Raft must persist before answering any message (Figure 2, "Persistent state")."""

    current_term: Term = 0
    voted_for: NodeId | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Member:
    """One member of the cluster: where to reach it, and whether it votes."""

    id: NodeId
    address: str
    voter: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Membership:
    """The cluster's configuration: every member, sorted by id."""

    members: tuple[Member, ...] = ()

    @classmethod
    def of_voters(cls, addresses: dict[NodeId, str]) -> Membership:
        return cls(members=tuple(Member(id=i, address=addresses[i]) for i in sorted(addresses)))

    @property
    def voters(self) -> frozenset[NodeId]:
        return frozenset(member.id for member in self.members if member.voter)

    @property
    def ids(self) -> frozenset[NodeId]:
        return frozenset(member.id for member in self.members)

    def address_of(self, node_id: NodeId) -> str | None:
        for member in self.members:
            if member.id == node_id:
                return member.address
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotMeta:
    """What a snapshot covers: the state after applying every entry up to ``index``."""

    index: Index
    term: Term
    membership: Membership
    size: int = 0
    """The snapshot's length in bytes."""
