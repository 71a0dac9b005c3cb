"""Terms (§5.1, Figure 2 "Rules for Servers"): newer terms win, stale terms are refused."""

from __future__ import annotations

from tinyraft_trio._core._messages import (
    AppendEntriesResponse,
    RequestVoteResponse,
)
from tinyraft_trio._core._types import HardState, Role

from .helpers import (
    append_entries,
    elect,
    log_of,
    make_core,
    only_reply,
    replicate,
    reply,
    sent,
    vote_request,
)


def test_leader_seeing_higher_term_in_append_entries_becomes_follower() -> None:
    """Reference: §5.1 (if RPC request or response contains term T > currentTerm: set
    currentTerm = T, convert to follower)."""
    leader = make_core("a", term=1)
    elect(leader)
    assert (leader.role, leader.current_term) == (Role.LEADER, 2)

    answer = only_reply(leader, "b", append_entries(term=5, leader="b"))

    assert leader.role is Role.FOLLOWER
    assert leader.current_term == 5
    assert leader.voted_for is None
    assert leader.leader_id == "b"
    assert answer == AppendEntriesResponse(term=5, success=True, match_index=0)


def test_leader_seeing_higher_term_in_append_response_steps_down() -> None:
    """Reference: §5.1 (a response with a higher term also makes the receiver a follower)."""
    leader = make_core("a", term=1)
    elect(leader)
    leader.handle_message("b", AppendEntriesResponse(term=7, success=False), 0.0)
    assert (leader.role, leader.current_term, leader.voted_for) == (Role.FOLLOWER, 7, None)
    assert leader.leader_id is None
    assert replicate(leader, "b") is None
    assert leader.take_ready().hard_state == HardState(current_term=7, voted_for=None)


def test_candidate_seeing_higher_term_in_vote_response_steps_down() -> None:
    """Reference: §5.1."""
    candidate = make_core("a", term=1, pre_vote=False)
    candidate.election_timeout()
    assert (candidate.role, candidate.current_term) == (Role.CANDIDATE, 2)
    candidate.handle_message("b", RequestVoteResponse(term=4, vote_granted=False), 0.0)
    assert (candidate.role, candidate.current_term, candidate.voted_for) == (
        Role.FOLLOWER,
        4,
        None,
    )
    # Late grants of the abandoned term change nothing.
    candidate.handle_message("c", RequestVoteResponse(term=2, vote_granted=True), 0.0)
    assert candidate.role is Role.FOLLOWER


def test_higher_term_vote_request_clears_voted_for() -> None:
    """Reference: §5.1 and Figure 2 (votedFor belongs to currentTerm; a new term starts
    with no vote cast), so a node that voted in term 2 can vote again in term 3."""
    voter = make_core("a", term=2, voted_for="c")

    answer = only_reply(voter, "b", vote_request(term=3, candidate="b"))

    assert answer == RequestVoteResponse(term=3, vote_granted=True)
    assert voter.hard_state == HardState(current_term=3, voted_for="b")


def test_higher_term_adopted_even_when_the_vote_is_refused() -> None:
    """Reference: §5.1 (the term is adopted first; the vote is judged afterwards, §5.4.1)."""
    voter = make_core("a", term=2, voted_for="c", log=log_of(1, 2))

    ready = reply(voter, "b", vote_request(term=3, candidate="b", last=(1, 1)))

    assert ready.hard_state == HardState(current_term=3, voted_for=None)
    assert sent(ready, RequestVoteResponse) == [
        ("b", RequestVoteResponse(term=3, vote_granted=False))
    ]


def test_append_entries_from_stale_term_is_rejected_with_current_term() -> None:
    """Reference: Figure 2, AppendEntries receiver rule 1 (reply false if term < currentTerm)."""
    follower = make_core("a", term=3, log=log_of(1, 1))

    ready = reply(
        follower, "b", append_entries(term=2, prev=(2, 1), entries=log_of(2, start=3), commit=2)
    )

    [(to, answer)] = sent(ready, AppendEntriesResponse)
    assert to == "b"
    assert answer.success is False
    assert answer.term == 3
    assert ready.first_index is None  # nothing appended
    assert follower.log.last_index == 2
    assert follower.commit_index == 0
    assert follower.leader_id is None
    assert follower.take_timer_reset() is False  # a deposed leader does not hold off elections


def test_stale_append_entries_does_not_demote_a_candidate() -> None:
    """Reference: §5.2 (only a leader of at least the candidate's term makes it step down)."""
    candidate = make_core("a", term=4, pre_vote=False)
    candidate.election_timeout()
    candidate.take_ready()
    answer = only_reply(candidate, "b", append_entries(term=3))
    assert candidate.role is Role.CANDIDATE
    assert answer.term == 5
    assert isinstance(answer, AppendEntriesResponse)
    assert answer.success is False


def test_vote_request_from_stale_term_is_refused() -> None:
    """Reference: Figure 2, RequestVote receiver rule 1 (reply false if term < currentTerm)."""
    voter = make_core("a", term=5)
    answer = only_reply(voter, "b", vote_request(term=4, candidate="b"))
    assert answer == RequestVoteResponse(term=5, vote_granted=False)
    assert voter.voted_for is None
    assert voter.current_term == 5


def test_votes_from_an_earlier_term_are_not_counted() -> None:
    """Reference: §5.2 (a candidate counts only votes for its current term)."""
    candidate = make_core("a", term=1, pre_vote=False)
    candidate.election_timeout()  # a candidate in term 2
    candidate.election_timeout()  # split vote: a candidate in term 3
    assert candidate.current_term == 3
    # Both peers' grants for term 2 arrive late: a majority, but of the wrong term.
    candidate.handle_message("b", RequestVoteResponse(term=2, vote_granted=True), 0.0)
    candidate.handle_message("c", RequestVoteResponse(term=2, vote_granted=True), 0.0)
    assert (candidate.role, candidate.current_term) == (Role.CANDIDATE, 3)
    candidate.handle_message("b", RequestVoteResponse(term=3, vote_granted=True), 0.0)
    assert candidate.role is Role.LEADER


def test_append_responses_from_an_earlier_term_are_ignored() -> None:
    """Reference: §5.1 (stale messages carry no information about the present term)."""
    leader = make_core("a", term=5, log=log_of(1, 1, 1))
    elect(leader)  # term 6, no-op at index 4
    leader.handle_message("b", AppendEntriesResponse(term=5, success=True, match_index=4), 0.0)
    leader.handle_message("c", AppendEntriesResponse(term=5, success=True, match_index=4), 0.0)
    progress = leader.progress("b")
    assert progress is not None
    assert progress.match_index == 0
    assert leader.commit_index == 0


def test_timer_resets_only_for_current_leader_or_granted_vote() -> None:
    """Reference: Figure 2, Followers (time out unless AppendEntries arrives from the current
    leader or a vote is granted)."""
    follower = make_core("a", term=3, voted_for="c")
    follower.take_timer_reset()

    reply(follower, "b", vote_request(term=3, candidate="b"))  # refused: voted for c
    assert follower.take_timer_reset() is False

    reply(follower, "c", vote_request(term=3, candidate="c"))  # granted again
    assert follower.take_timer_reset() is True

    reply(follower, "b", append_entries(term=2))  # a stale leader
    assert follower.take_timer_reset() is False

    reply(follower, "b", append_entries(term=3))  # the current leader
    assert follower.take_timer_reset() is True
