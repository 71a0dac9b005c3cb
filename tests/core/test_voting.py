"""RequestVote receiver rules (Figure 2): one vote per term, persisted, for up-to-date logs."""

from __future__ import annotations

import pytest

from tinyraft_trio._core._messages import RequestVote, RequestVoteResponse
from tinyraft_trio._core._types import HardState, Role

from .helpers import log_of, make_core, only_reply, reply, sent, vote_request


def test_at_most_one_vote_per_term() -> None:
    """Reference: §5.2 (each server votes for at most one candidate in a given term)."""
    voter = make_core("a", term=1)
    first = only_reply(voter, "b", vote_request(term=2, candidate="b"))
    second = only_reply(voter, "c", vote_request(term=2, candidate="c"))
    assert first == RequestVoteResponse(term=2, vote_granted=True)
    assert second == RequestVoteResponse(term=2, vote_granted=False)
    assert voter.voted_for == "b"


def test_vote_may_be_granted_again_to_the_same_candidate() -> None:
    """Reference: Figure 2 RequestVote rule 2 (grant if votedFor is null or candidateId);
    a retransmitted request must not turn a grant into a refusal."""
    voter = make_core("a", term=1)
    only_reply(voter, "b", vote_request(term=2, candidate="b"))
    again = only_reply(voter, "b", vote_request(term=2, candidate="b"))
    assert again == RequestVoteResponse(term=2, vote_granted=True)
    assert voter.voted_for == "b"


def test_vote_is_persisted_in_the_same_ready_as_the_grant() -> None:
    """Reference: Figure 2 ("updated on stable storage before responding to RPCs")."""
    voter = make_core("a", term=1)
    ready = reply(voter, "b", vote_request(term=2, candidate="b"))
    assert ready.hard_state == HardState(current_term=2, voted_for="b")
    assert sent(ready, RequestVoteResponse) == [
        ("b", RequestVoteResponse(term=2, vote_granted=True))
    ]
    # Nothing left over: the grant cannot leave in an earlier Ready than the vote.
    assert not voter.has_ready


def test_vote_in_the_current_term_is_persisted_with_the_grant() -> None:
    """Reference: Figure 2 (votedFor changes without a term change must be persisted too)."""
    voter = make_core("a", term=2)
    ready = reply(voter, "b", vote_request(term=2, candidate="b"))
    assert ready.hard_state == HardState(current_term=2, voted_for="b")
    assert sent(ready, RequestVoteResponse)[0][1].vote_granted


def test_vote_loaded_from_storage_is_respected_after_restart() -> None:
    """Reference: Figure 2 (votedFor is persistent state): a node that voted for b before a
    crash must not vote for anyone else in that term after restarting."""
    restarted = make_core("a", term=2, voted_for="b")
    refused = only_reply(restarted, "c", vote_request(term=2, candidate="c"))
    assert refused == RequestVoteResponse(term=2, vote_granted=False)
    granted = only_reply(restarted, "b", vote_request(term=2, candidate="b"))
    assert granted == RequestVoteResponse(term=2, vote_granted=True)


def test_restarted_node_campaigns_only_in_a_later_term() -> None:
    """Reference: Figure 2 and §5.2 (having voted for b in term 2, it cannot also vote for
    itself in term 2: its own campaign starts term 3)."""
    restarted = make_core("a", term=2, voted_for="b", pre_vote=False)
    restarted.election_timeout()
    ready = restarted.take_ready()
    assert ready.hard_state == HardState(current_term=3, voted_for="a")
    assert {request.term for _, request in sent(ready, RequestVote)} == {3}


def test_no_vote_loaded_from_storage_means_free_to_vote() -> None:
    """Reference: Figure 2."""
    restarted = make_core("a", term=2, voted_for=None)
    assert only_reply(restarted, "c", vote_request(term=2, candidate="c")) == RequestVoteResponse(
        term=2, vote_granted=True
    )


def test_candidate_votes_for_itself_and_persists_it_with_its_requests() -> None:
    """Reference: §5.2 (increment currentTerm, vote for self, send RequestVote RPCs)."""
    node = make_core("a", term=4, log=log_of(1, 4), pre_vote=False)
    node.election_timeout()
    ready = node.take_ready()
    assert node.role is Role.CANDIDATE
    assert ready.hard_state == HardState(current_term=5, voted_for="a")
    requests = sent(ready, RequestVote)
    assert sorted(to for to, _ in requests) == ["b", "c"]
    for _, request in requests:
        assert request == RequestVote(
            term=5, candidate_id="a", last_log_index=2, last_log_term=4, pre_vote=False
        )
    # Having voted for itself, it refuses anyone else in its term.
    answer = only_reply(node, "b", vote_request(term=5, candidate="b", last=(2, 4)))
    assert answer == RequestVoteResponse(term=5, vote_granted=False)


# The voter's log ends at index 3 with term 2: terms [1, 2, 2].
@pytest.mark.parametrize(
    ("candidate_last", "granted"),
    [
        ((10, 1), False),  # longer, but its last term is older
        ((1, 3), True),  # shorter, but its last term is newer
        ((2, 2), False),  # same last term, shorter
        ((3, 2), True),  # same last term, same length
        ((4, 2), True),  # same last term, longer
        ((0, 0), False),  # empty
    ],
)
def test_vote_refused_unless_candidate_log_is_up_to_date(
    candidate_last: tuple[int, int], granted: bool
) -> None:
    """Reference: §5.4.1 (compare last terms; if equal, the longer log is more up to date)."""
    voter = make_core("a", term=5, log=log_of(1, 2, 2))
    answer = only_reply(voter, "b", vote_request(term=5, candidate="b", last=candidate_last))
    assert answer == RequestVoteResponse(term=5, vote_granted=granted)
    assert voter.voted_for == ("b" if granted else None)


def test_refusing_a_stale_log_keeps_the_vote_free_for_another_candidate() -> None:
    """Reference: §5.4.1 (a refused request does not use up the vote)."""
    voter = make_core("a", term=5, log=log_of(1, 2, 2))
    only_reply(voter, "b", vote_request(term=5, candidate="b", last=(2, 2)))
    answer = only_reply(voter, "c", vote_request(term=5, candidate="c", last=(3, 2)))
    assert answer == RequestVoteResponse(term=5, vote_granted=True)
    assert voter.voted_for == "c"
