"""Frozen snapshots of a node's state, for ``RaftNode.status()``."""

from __future__ import annotations

from dataclasses import dataclass

from ._core._types import Index, NodeId, Role, Term


@dataclass(frozen=True, kw_only=True, slots=True)
class MemberStatus:
    """One member of the cluster, as this node sees it."""

    id: NodeId
    address: str | None
    voter: bool = True
    match_index: Index | None = None
    """On the leader: the last index known to be replicated on this member."""
    last_contact: float | None = None
    """On the leader: seconds since this member last answered (None: not yet)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeStatus:
    """A snapshot of one node's Raft state."""

    id: NodeId
    role: Role
    term: Term
    leader_id: NodeId | None
    commit_index: Index
    last_applied: Index
    last_log_index: Index
    members: tuple[MemberStatus, ...]
    rejected_connections: int = 0
    """Inbound connections closed because they sent bad input (see the transport's log)."""
    ignored_messages: int = 0
    """Well-formed messages dropped because they came from a node that is not a member."""
    snapshot_index: Index = 0
    """The last index the latest durable snapshot covers (0: none yet)."""
    storage_error: str | None = None
    """Set when the disk failed; the node then takes no further part until restarted."""
