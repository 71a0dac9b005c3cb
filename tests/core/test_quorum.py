"""Quorum maths against naive reference implementations (DESIGN.md §7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tinyraft_trio._core._quorum import VoteOutcome, committed_index, majority, tally

NODES = [f"n{i}" for i in range(9)]

voter_sets = st.lists(st.sampled_from(NODES), min_size=1, max_size=9, unique=True)


def naive_majority(voter_count: int) -> int:
    """The smallest k with k > voter_count - k: more than half."""
    return next(k for k in range(voter_count + 2) if 2 * k > voter_count)


def naive_committed_index(voters: list[str], match: dict[str, int]) -> int:
    """The highest index i that at least a majority of voters hold."""
    holding = [match.get(voter, 0) for voter in voters]
    candidates = {0, *holding}
    return max(
        i
        for i in candidates
        if sum(1 for held in holding if held >= i) >= naive_majority(len(voters))
    )


def naive_tally(voters: list[str], votes: dict[str, bool]) -> str:
    granted = sum(1 for voter in voters if votes.get(voter) is True)
    undecided = sum(1 for voter in voters if voter not in votes)
    if 2 * granted > len(voters):
        return VoteOutcome.WON
    if 2 * (granted + undecided) <= len(voters):
        return VoteOutcome.LOST
    return VoteOutcome.PENDING


@given(st.integers(min_value=0, max_value=50))
def test_majority_is_more_than_half(voter_count: int) -> None:
    """Reference: §5.2 (a candidate wins with votes from a majority of the full cluster)."""
    assert majority(voter_count) == naive_majority(voter_count)


def test_majority_small_clusters() -> None:
    """Reference: §5.2."""
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


@given(
    voters=voter_sets,
    match=st.dictionaries(st.sampled_from(NODES), st.integers(min_value=0, max_value=20)),
)
def test_committed_index_matches_naive_reference(voters: list[str], match: dict[str, int]) -> None:
    """Reference: §5.3, §5.4.2 (an index is stored on a majority when a majority's match >= it).

    Match indexes of non-voters must not count.
    """
    assert committed_index(voters, match) == naive_committed_index(voters, match)


def test_committed_index_examples() -> None:
    """Reference: §5.3."""
    assert committed_index(["a", "b", "c"], {"a": 5, "b": 3, "c": 1}) == 3
    assert committed_index(["a", "b", "c"], {"a": 5}) == 0
    assert committed_index(["a", "b", "c", "d"], {"a": 5, "b": 5, "c": 4, "d": 1}) == 4
    # A non-voter holding everything makes no difference.
    assert committed_index(["a", "b", "c"], {"a": 5, "x": 9, "y": 9}) == 0


@given(
    voters=voter_sets,
    votes=st.dictionaries(st.sampled_from(NODES), st.booleans()),
)
def test_tally_matches_naive_reference(voters: list[str], votes: dict[str, bool]) -> None:
    """Reference: §5.2 (won with a majority of grants; lost once a majority is out of reach)."""
    assert tally(voters, votes) == naive_tally(voters, votes)


def test_tally_examples() -> None:
    """Reference: §5.2 (a split vote is not a win; refusals from non-voters do not count)."""
    three = ["a", "b", "c"]
    assert tally(three, {"a": True}) == VoteOutcome.PENDING
    assert tally(three, {"a": True, "b": True}) == VoteOutcome.WON
    assert tally(three, {"a": True, "b": False}) == VoteOutcome.PENDING
    assert tally(three, {"a": True, "b": False, "c": False}) == VoteOutcome.LOST
    four = ["a", "b", "c", "d"]
    assert tally(four, {"a": True, "b": True, "c": False, "d": False}) == VoteOutcome.LOST
    assert tally(three, {"a": True, "x": True, "y": True}) == VoteOutcome.PENDING
