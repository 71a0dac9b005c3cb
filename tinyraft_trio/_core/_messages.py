"""The messages Raft nodes exchange (Figure 2, dissertation §3.10, §4.2.3 and §9.6).

Messages are frozen values. The sender's id is not part of a message: the transport knows
which peer a message came from (its connection's handshake named it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._types import Entry, Index, Membership, NodeId, Term


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestVote:
    """Sent by candidates to gather votes (§5.2), or by pre-candidates to probe (§9.6).

    A pre-vote carries the term the candidate *would* campaign in and changes no one's state.
    ``transfer`` marks a campaign started by TimeoutNow (leadership transfer, §3.10), which
    followers honour even though they heard from a leader recently.
    """

    term: Term
    candidate_id: NodeId
    last_log_index: Index
    last_log_term: Term
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestVoteResponse:
    """A vote, or its refusal. A granted pre-vote echoes the term it was asked for."""

    term: Term
    vote_granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class AppendEntries:
    """Replicates log entries (§5.3); with no entries it is a heartbeat (§5.2)."""

    term: Term
    leader_id: NodeId
    prev_log_index: Index
    prev_log_term: Term
    entries: tuple[Entry, ...]
    leader_commit: Index
    context: int = 0
    """Echoed by the answer: numbers the leader's read-confirmation rounds (ReadIndex, §6.4)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AppendEntriesResponse:
    """The follower's answer to AppendEntries.

    On success ``match_index`` is the last index the follower now shares with the leader (and
    has persisted). On failure ``reject_index`` is the ``prev_log_index`` that did not match,
    so the leader can discard stale rejections; ``conflict_index`` and ``conflict_term`` are the
    hint of §5.3 ("the term of the conflicting entry and the first index it stores for that
    term"), letting the leader skip a whole term per round trip. ``conflict_term`` is 0 when the
    follower's log is simply too short.
    """

    term: Term
    success: bool
    match_index: Index = 0
    reject_index: Index = 0
    conflict_index: Index = 0
    conflict_term: Term = 0
    context: int = 0
    """The ``context`` of the AppendEntries this answers."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TimeoutNow:
    """Tells a caught-up follower to start an election at once (leadership transfer, §3.10)."""

    term: Term
    leader_id: NodeId


@dataclass(frozen=True, kw_only=True, slots=True)
class InstallSnapshot:
    """One chunk of the leader's snapshot, for a follower whose next entry was compacted away.

    Chunks are sent one at a time from ``offset``; ``done`` marks the last (Figure 13).
    """

    term: Term
    leader_id: NodeId
    last_included_index: Index
    last_included_term: Term
    membership: Membership
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class InstallSnapshotResponse:
    """The follower's answer to one chunk.

    ``next_offset`` is how many bytes of that snapshot the follower holds (the leader resumes
    from there); ``done`` means the follower now has everything up to ``last_included_index``.
    """

    term: Term
    last_included_index: Index
    next_offset: int
    done: bool


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | TimeoutNow
    | InstallSnapshot
    | InstallSnapshotResponse
)
"""Every message the core consumes or produces."""
