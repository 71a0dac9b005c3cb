"""Frozen snapshots of a node's state, for ``RaftNode.status()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    def summary(self) -> dict[str, Any]:
        """The fields every status view shows (the RPC, the HTTP API), as plain data."""
        return {
            "id": self.id,
            "role": self.role.value,
            "term": self.term,
            "leader_id": self.leader_id,
            "commit_index": self.commit_index,
            "last_applied": self.last_applied,
            "last_log_index": self.last_log_index,
            "snapshot_index": self.snapshot_index,
            "storage_error": self.storage_error,
            "members": [
                {"id": member.id, "address": member.address, "voter": member.voter}
                for member in self.members
            ],
        }
