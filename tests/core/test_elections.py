"""Leader election (§5.2), the new leader's no-op (§5.4.2, §8) and TimeoutNow (§3.10)."""

from __future__ import annotations

from tinyraft_trio._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from tinyraft_trio._core._types import EntryKind, Role

from .helpers import (
    Cluster,
    append_entries,
    drain_appends,
    elect,
    log_of,
    make_core,
    only_reply,
    replicate,
    sent,
    terms_of,
)

FIVE = ("a", "b", "c", "d", "e")


def grant(term: int) -> RequestVoteResponse:
    return RequestVoteResponse(term=term, vote_granted=True)


def refuse(term: int) -> RequestVoteResponse:
    return RequestVoteResponse(term=term, vote_granted=False)


def test_candidate_with_majority_of_three_becomes_leader() -> None:
    """Reference: §5.2 (a candidate wins if it receives votes from a majority)."""
    node = make_core("a", pre_vote=False)
    node.election_timeout()
    assert (node.role, node.current_term) == (Role.CANDIDATE, 1)
    node.handle_message("b", grant(1), 0.0)
    assert node.role is Role.LEADER
    assert node.leader_id == "a"
    assert node.current_term == 1


def test_candidate_needs_three_of_five() -> None:
    """Reference: §5.2 (a majority of the full cluster, counting each voter once)."""
    node = make_core("a", FIVE, pre_vote=False)
    node.election_timeout()
    node.handle_message("b", grant(1), 0.0)
    node.handle_message("b", grant(1), 0.0)  # a duplicate counts once
    assert (node.role, node.current_term) == (Role.CANDIDATE, 1)
    node.handle_message("x", grant(1), 0.0)  # not a voter
    assert (node.role, node.current_term) == (Role.CANDIDATE, 1)
    node.handle_message("c", refuse(1), 0.0)
    assert (node.role, node.current_term) == (Role.CANDIDATE, 1)
    node.handle_message("d", grant(1), 0.0)
    assert node.role is Role.LEADER


def test_split_vote_elects_nobody_and_a_later_timeout_retries() -> None:
    """Reference: §5.2 (split votes: time out and start a new election with a new term)."""
    cluster = Cluster(("a", "b", "c", "d"), pre_vote=False)
    cluster.timeout("a")
    cluster.timeout("b")
    # Each candidate's request reaches one voter first.
    cluster.deliver(lambda e: (e.sender, e.to) in {("a", "c"), ("b", "d")})
    cluster.stabilize()
    assert cluster.leaders_now() == []
    assert {cluster[n].current_term for n in cluster.ids} == {1}
    assert cluster["a"].role is not Role.LEADER
    assert cluster["b"].role is not Role.LEADER

    cluster.timeout("a")
    cluster.stabilize()
    assert cluster.leaders_now() == ["a"]
    assert cluster["a"].current_term == 2


def test_refusals_from_a_majority_end_the_candidacy() -> None:
    """Reference: §5.2 (a candidate that cannot win waits for the next timeout)."""
    node = make_core("a", pre_vote=False)
    node.election_timeout()
    node.handle_message("b", refuse(1), 0.0)
    node.handle_message("c", refuse(1), 0.0)
    assert node.role is Role.FOLLOWER
    assert node.current_term == 1
    node.handle_message("b", grant(1), 0.0)  # a late grant cannot revive it
    assert node.role is Role.FOLLOWER


def test_candidate_receiving_append_entries_of_its_term_becomes_follower() -> None:
    """Reference: §5.2 (if the leader's term is at least the candidate's current term, the
    candidate recognizes the leader as legitimate and returns to follower state)."""
    node = make_core("a", pre_vote=False)
    node.election_timeout()
    node.take_ready()
    answer = only_reply(node, "b", append_entries(term=1, leader="b"))
    assert node.role is Role.FOLLOWER
    assert node.leader_id == "b"
    assert node.current_term == 1
    assert node.voted_for == "a"  # the vote of term 1 stays cast
    assert answer == AppendEntriesResponse(term=1, success=True, match_index=0)
    node.handle_message("c", grant(1), 0.0)  # too late to win now
    assert node.role is Role.FOLLOWER


def test_single_node_cluster_elects_itself_on_timeout() -> None:
    """Reference: §5.2 (a majority of one is the node itself)."""
    node = make_core("a", ("a",))
    node.election_timeout()
    assert node.role is Role.LEADER
    assert node.current_term == 1
    ready = node.take_ready()
    assert ready.messages == ()
    assert ready.hard_state is not None
    assert ready.hard_state.current_term == 1
    assert ready.hard_state.voted_for == "a"
    [noop] = ready.entries
    assert (noop.index, noop.term, noop.kind) == (1, 1, EntryKind.NOOP)
    assert node.commit_index == 0  # not yet durable
    node.on_persisted(1, 1)
    assert node.commit_index == 1
    assert node.take_committed() == [noop]


def test_single_node_commits_proposals_once_persisted() -> None:
    """Reference: §5.3 (an entry is committed once stored on a majority: here, itself)."""
    node = make_core("a", ("a",))
    node.election_timeout()
    node.on_persisted(1, 1)
    entry = node.propose(b"x")
    assert node.commit_index == 1
    node.on_persisted(entry.index, entry.term)
    assert node.commit_index == 2


def test_new_leader_appends_noop_of_its_term() -> None:
    """Reference: §5.4.2 and §8 (each leader commits a blank no-op entry at the start of its
    term, so entries of earlier terms can commit)."""
    leader = make_core("a", term=4, log=log_of(1, 1, 3))
    ready = elect(leader)
    assert leader.current_term == 5
    assert terms_of(leader) == [1, 1, 3, 5]
    noop = leader.log.entry(4)
    assert noop.kind is EntryKind.NOOP
    assert noop.data == b""
    assert ready.first_index == 4
    assert ready.entries == (noop,)
    # The first AppendEntries probes after the old log and carries the no-op.
    [append] = drain_appends(leader, "b")
    assert (append.prev_log_index, append.prev_log_term) == (3, 3)
    assert append.entries == (noop,)


def test_leader_ignores_election_timeout() -> None:
    """Reference: §5.2 (only followers and candidates start elections)."""
    leader = make_core("a")
    elect(leader)
    leader.election_timeout()
    assert (leader.role, leader.current_term) == (Role.LEADER, 1)
    assert sent(leader.take_ready(), RequestVote) == []


def test_three_and_five_node_clusters_elect_and_commit() -> None:
    """Reference: §5.2, §5.3 (end to end: elect, replicate the no-op, commit everywhere)."""
    for ids in (("a", "b", "c"), FIVE):
        cluster = Cluster(ids)
        cluster.elect("b")
        cluster.stabilize(heartbeat=True)
        for node in ids:
            core = cluster[node]
            assert core.current_term == 1
            assert core.leader_id == "b"
            assert core.commit_index == 1
            assert [e.kind for e in cluster.applied[node]] == [EntryKind.NOOP]


def test_timeout_now_makes_follower_campaign_at_once_with_transfer() -> None:
    """Reference: dissertation §3.10 (on TimeoutNow the target starts an election at once,
    skipping pre-vote, flagged so that followers waive leader stickiness)."""
    follower = make_core("b", term=3)  # pre-vote on by default
    follower.handle_message("a", append_entries(term=3, leader="a"), 10.0)
    follower.take_ready()
    follower.handle_message("a", TimeoutNow(term=3, leader_id="a"), 10.1)
    assert follower.role is Role.CANDIDATE
    assert follower.current_term == 4
    assert follower.voted_for == "b"
    requests = sent(follower.take_ready(), RequestVote)
    assert sorted(t for t, _ in requests) == ["a", "c"]
    for _, request in requests:
        assert request.term == 4
        assert request.transfer is True
        assert request.pre_vote is False


def test_timeout_now_of_another_term_is_ignored() -> None:
    """Reference: dissertation §3.10 (only the current leader may hand over)."""
    follower = make_core("b", term=3)
    follower.handle_message("a", TimeoutNow(term=2, leader_id="a"), 0.0)
    assert (follower.role, follower.current_term) == (Role.FOLLOWER, 3)
    assert not follower.has_ready


def test_leadership_transfer_end_to_end() -> None:
    """Reference: dissertation §3.10 (the target wins although every follower heard from the
    leader within the election timeout; the old leader steps down on the higher term)."""
    cluster = Cluster()
    cluster.elect("a")
    cluster.stabilize(heartbeat=True)
    # Without the transfer flag b's campaign goes nowhere: a leads, c heard from a recently.
    cluster.timeout("b")
    cluster.stabilize()
    assert cluster.leaders_now() == ["a"]
    assert cluster["b"].current_term == 1

    cluster.send("a", "b", TimeoutNow(term=1, leader_id="a"))
    cluster.deliver()
    cluster.stabilize()
    assert cluster.leaders_now() == ["b"]
    assert cluster["b"].current_term == 2
    assert cluster["a"].role is Role.FOLLOWER
    assert cluster["a"].leader_id == "b"
    assert cluster["c"].leader_id == "b"


def test_transfer_vote_request_reaches_past_stickiness_but_not_past_the_log_check() -> None:
    """Reference: dissertation §3.10 and §5.4.1 (transfer does not waive log up-to-dateness)."""
    follower = make_core("c", term=3, log=log_of(1, 3))
    follower.handle_message("a", append_entries(term=3, leader="a", prev=(2, 3)), 10.0)
    follower.take_ready()
    stale = RequestVote(term=4, candidate_id="b", last_log_index=1, last_log_term=1, transfer=True)
    answer = only_reply(follower, "b", stale, 10.1)
    assert answer == RequestVoteResponse(term=4, vote_granted=False)


def test_append_entries_from_the_replaced_leader_after_transfer_are_refused() -> None:
    """Reference: §5.1 (after the transfer the old leader's term is stale)."""
    cluster = Cluster()
    cluster.elect("a")
    cluster.stabilize(heartbeat=True)
    old = replicate(cluster["a"], "c", heartbeat=True)
    assert isinstance(old, AppendEntries)
    cluster.send("a", "b", TimeoutNow(term=1, leader_id="a"))
    cluster.stabilize()
    answer = only_reply(cluster["c"], "a", old)
    assert isinstance(answer, AppendEntriesResponse)
    assert (answer.success, answer.term) == (False, 2)
