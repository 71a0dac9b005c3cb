"""Majority arithmetic over a set of voters."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ._types import Index, NodeId


def majority(voter_count: int) -> int:
    """The smallest number of voters that forms a quorum."""
    return voter_count // 2 + 1


def committed_index(voters: Collection[NodeId], match_index: Mapping[NodeId, Index]) -> Index:
    """The highest index that a majority of ``voters`` hold, by their match indexes.

    Voters missing from ``match_index`` count as holding nothing.
    """
    if not voters:
        return 0
    matches = sorted((match_index.get(voter, 0) for voter in voters), reverse=True)
    return matches[majority(len(voters)) - 1]


class VoteOutcome:
    """The three states of an election tally."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def tally(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> str:
    """Whether ``votes`` (voter -> granted) already win or lose an election among ``voters``."""
    needed = majority(len(voters))
    granted = sum(1 for voter in voters if votes.get(voter) is True)
    refused = sum(1 for voter in voters if votes.get(voter) is False)
    if granted >= needed:
        return VoteOutcome.WON
    if refused > len(voters) - needed:
        return VoteOutcome.LOST
    return VoteOutcome.PENDING
