"""Pre-vote (dissertation §9.6), leader stickiness (§4.2.3) and check-quorum (§6.2)."""

from __future__ import annotations

from tinyraft_trio._core._messages import (
    AppendEntriesResponse,
    RequestVote,
    RequestVoteResponse,
)
from tinyraft_trio._core._state import RaftCore
from tinyraft_trio._core._types import HardState, Role

from .helpers import (
    ELECTION_TIMEOUT,
    Cluster,
    append_entries,
    drain_appends,
    elect,
    log_of,
    make_core,
    only_reply,
    replicate,
    reply,
    sent,
    vote_request,
)

FIVE = ("a", "b", "c", "d", "e")


def pre_grant(term: int) -> RequestVoteResponse:
    return RequestVoteResponse(term=term, vote_granted=True, pre_vote=True)


def pre_refuse(term: int) -> RequestVoteResponse:
    return RequestVoteResponse(term=term, vote_granted=False, pre_vote=True)


# ---------------------------------------------------------------------- pre-vote


def test_pre_vote_asks_for_next_term_without_changing_own_state() -> None:
    """Reference: dissertation §9.6 (a pre-candidate asks whether it could win, and only
    increments its term if a majority says yes)."""
    node = make_core("a", term=3, voted_for="b", log=log_of(1, 3))
    node.election_timeout()
    ready = node.take_ready()
    assert node.role is Role.FOLLOWER
    assert (node.current_term, node.voted_for) == (3, "b")
    assert ready.hard_state is None
    requests = sent(ready, RequestVote)
    assert sorted(peer for peer, _ in requests) == ["b", "c"]
    for _, request in requests:
        assert request == RequestVote(
            term=4, candidate_id="a", last_log_index=2, last_log_term=3, pre_vote=True
        )


def test_granting_a_pre_vote_changes_nothing_on_the_voter() -> None:
    """Reference: dissertation §9.6 (pre-votes change no one's term or vote)."""
    voter = make_core("a", term=3, voted_for="c")
    voter.take_timer_reset()
    ready = reply(voter, "b", vote_request(term=4, candidate="b", pre_vote=True))
    assert sent(ready, RequestVoteResponse) == [("b", pre_grant(4))]
    assert ready.hard_state is None
    assert (voter.current_term, voter.voted_for, voter.role) == (3, "c", Role.FOLLOWER)
    assert voter.take_timer_reset() is False
    # Its real vote in term 4 is still free, for another candidate even.
    answer = only_reply(voter, "c", vote_request(term=4, candidate="c"))
    assert answer == RequestVoteResponse(term=4, vote_granted=True)


def test_pre_vote_refused_for_a_stale_log() -> None:
    """Reference: dissertation §9.6 (pre-votes apply the §5.4.1 up-to-date check)."""
    voter = make_core("a", term=3, log=log_of(1, 3))
    answer = only_reply(voter, "b", vote_request(term=4, candidate="b", last=(5, 1), pre_vote=True))
    assert answer == pre_refuse(3)
    assert voter.current_term == 3


def test_pre_vote_refused_when_not_for_a_newer_term() -> None:
    """Reference: dissertation §9.6 (a pre-vote is for a term the voter has not reached)."""
    voter = make_core("a", term=4)
    answer = only_reply(voter, "b", vote_request(term=4, candidate="b", pre_vote=True))
    assert answer == pre_refuse(4)


def test_winning_the_pre_vote_starts_the_real_election() -> None:
    """Reference: dissertation §9.6 (then it increments its term and runs a normal election)."""
    node = make_core("a", term=3)
    node.election_timeout()
    node.take_ready()
    node.handle_message("b", pre_grant(4), 0.0)
    assert node.role is Role.CANDIDATE
    assert (node.current_term, node.voted_for) == (4, "a")
    ready = node.take_ready()
    assert ready.hard_state == HardState(current_term=4, voted_for="a")
    requests = sent(ready, RequestVote)
    assert len(requests) == 2
    assert all(not r.pre_vote and r.term == 4 for _, r in requests)


def test_rejected_pre_vote_leads_to_no_election() -> None:
    """Reference: dissertation §9.6 (without a majority of pre-votes, no term is used up)."""
    node = make_core("a", FIVE, term=3)
    node.election_timeout()
    node.take_ready()
    for voter in ("b", "c", "d"):
        node.handle_message(voter, pre_refuse(3), 0.0)
    # Late grants of the failed round must not start an election either.
    node.handle_message("e", pre_grant(4), 0.0)
    node.handle_message("b", pre_grant(4), 0.0)
    node.handle_message("c", pre_grant(4), 0.0)
    assert node.role is Role.FOLLOWER
    assert (node.current_term, node.voted_for) == (3, None)
    assert sent(node.take_ready(), RequestVote) == []


def test_pre_vote_grants_for_a_different_term_do_not_count() -> None:
    """Reference: dissertation §9.6 (only answers for the term asked about count)."""
    node = make_core("a", term=3)
    node.election_timeout()
    node.take_ready()
    node.handle_message("b", pre_grant(9), 0.0)
    node.handle_message("c", pre_grant(3), 0.0)
    assert (node.role, node.current_term) == (Role.FOLLOWER, 3)


def test_pre_vote_refusal_with_higher_term_updates_the_term() -> None:
    """Reference: §5.1 (a refusal carrying a newer term is still news of that term)."""
    node = make_core("a", term=3)
    node.election_timeout()
    node.take_ready()
    node.handle_message("b", pre_refuse(6), 0.0)
    assert (node.role, node.current_term, node.voted_for) == (Role.FOLLOWER, 6, None)


def test_partitioned_node_does_not_raise_its_term() -> None:
    """Reference: dissertation §9.6 (a node cut off from the cluster keeps timing out but
    cannot win a pre-vote, so it neither inflates its term nor disrupts the leader on return)."""
    cluster = Cluster()
    cluster.elect("a")
    cluster.stabilize(heartbeat=True)
    cluster.isolate("c")
    for _ in range(10):
        cluster.now += 2 * ELECTION_TIMEOUT
        cluster.timeout("c")
        cluster.stabilize(heartbeat=True)
    assert cluster["c"].current_term == 1
    cluster.heal()
    cluster.timeout("c")  # its next timeout, now reaching everyone
    cluster.stabilize(heartbeat=True)
    assert cluster.leaders_now() == ["a"]
    assert {cluster[n].current_term for n in cluster.ids} == {1}
    assert cluster["c"].leader_id == "a"


def test_without_pre_vote_a_partitioned_node_inflates_its_term() -> None:
    """Reference: dissertation §9.6 (the problem pre-vote solves; shows the test above bites)."""
    cluster = Cluster(pre_vote=False)
    cluster.elect("a")
    cluster.isolate("c")
    for _ in range(10):
        cluster.timeout("c")
    assert cluster["c"].current_term == 11


# ---------------------------------------------------------------------- leader stickiness


def test_follower_in_lease_ignores_higher_term_vote_request() -> None:
    """Reference: dissertation §4.2.3 (a server that heard from a leader within the election
    timeout neither updates its term nor grants its vote)."""
    follower = make_core("a", term=2)
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.0)
    follower.take_ready()
    for pre_vote in (False, True):
        follower.handle_message(
            "c", vote_request(term=3, candidate="c", pre_vote=pre_vote), 10.0 + 0.9
        )
        assert not follower.has_ready  # no answer, nothing to persist
        assert (follower.current_term, follower.voted_for, follower.leader_id) == (2, None, "b")


def test_follower_grants_once_the_election_timeout_has_passed() -> None:
    """Reference: dissertation §4.2.3 (the lease lasts one election timeout)."""
    follower = make_core("a", term=2)
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.0)
    follower.take_ready()
    answer = only_reply(follower, "c", vote_request(term=3, candidate="c"), 10.0 + ELECTION_TIMEOUT)
    assert answer == RequestVoteResponse(term=3, vote_granted=True)
    assert (follower.current_term, follower.voted_for) == (3, "c")


def test_each_heartbeat_renews_the_lease() -> None:
    """Reference: dissertation §4.2.3 (measured from the latest contact)."""
    follower = make_core("a", term=2)
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.0)
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.8)
    follower.take_ready()
    follower.handle_message("c", vote_request(term=3, candidate="c"), 11.5)
    assert not follower.has_ready
    assert follower.current_term == 2


def test_a_follower_that_forgets_its_gone_leader_grants_at_once() -> None:
    """Reference: dissertation §4.2.3 (stickiness protects a live leader; one whose
    connection closed is most likely gone, and waiting out the lease only delays failover)."""
    follower = make_core("a", term=2)
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.0)
    follower.take_ready()
    assert not follower.forget_leader("c")  # not its leader: nothing changes
    assert follower.leader_id == "b"
    assert follower.forget_leader("b")
    assert follower.leader_id is None
    assert not follower.forget_leader("b")  # already forgotten
    answer = only_reply(follower, "c", vote_request(term=3, candidate="c", pre_vote=True), 10.1)
    assert answer == pre_grant(3)
    # Hearing from the leader again restores it, and its lease.
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.2)
    follower.take_ready()
    assert follower.leader_id == "b"
    follower.handle_message("c", vote_request(term=3, candidate="c", pre_vote=True), 10.3)
    assert not follower.has_ready


def test_only_a_follower_forgets_a_leader() -> None:
    leader = make_core("a")
    elect(leader)
    assert not leader.forget_leader("a")
    assert leader.role is Role.LEADER and leader.leader_id == "a"


def test_transfer_vote_request_bypasses_leader_stickiness() -> None:
    """Reference: dissertation §4.2.3 and §3.10 (a RequestVote flagged as a leadership
    transfer is processed even though a current leader is believed to exist)."""
    follower = make_core("a", term=2)
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.0)
    follower.take_ready()
    answer = only_reply(follower, "c", vote_request(term=3, candidate="c", transfer=True), 10.1)
    assert answer == RequestVoteResponse(term=3, vote_granted=True)
    assert (follower.current_term, follower.voted_for) == (3, "c")


def test_leader_ignores_higher_term_vote_requests() -> None:
    """Reference: dissertation §4.2.3 and §6.2 (with check-quorum a leader is always in lease)."""
    leader = make_core("a")
    elect(leader)
    for pre_vote in (False, True):
        leader.handle_message("c", vote_request(term=5, candidate="c", pre_vote=pre_vote), 100.0)
        assert leader.role is Role.LEADER
        assert leader.current_term == 1
        assert sent(leader.take_ready(), RequestVoteResponse) == []


def test_stickiness_is_off_without_check_quorum() -> None:
    """Reference: dissertation §4.2.3 (the lease rule comes with check-quorum)."""
    follower = make_core("a", term=2, check_quorum=False)
    follower.handle_message("b", append_entries(term=2, leader="b"), 10.0)
    follower.take_ready()
    answer = only_reply(follower, "c", vote_request(term=3, candidate="c"), 10.1)
    assert answer == RequestVoteResponse(term=3, vote_granted=True)


def test_disruptive_server_cannot_depose_a_live_leader() -> None:
    """Reference: dissertation §4.2.3 (a server removed or partitioned must not force
    elections while the leader keeps contact with the rest)."""
    cluster = Cluster(pre_vote=False)
    cluster.elect("a")
    cluster.stabilize(heartbeat=True)
    cluster.isolate("c")
    for _ in range(3):
        cluster.timeout("c")  # c's term rises to 4 behind the partition
    cluster.heal()
    cluster.stabilize()
    # c's RequestVote for term 4 reaches a and b, which ignore it.
    cluster.timeout("c")
    cluster.stabilize()
    assert cluster["a"].role is Role.LEADER
    assert cluster["a"].current_term == 1
    assert cluster["b"].current_term == 1


# ---------------------------------------------------------------------- check-quorum


def elected_leader(voters: tuple[str, ...] = ("a", "b", "c")) -> RaftCore:
    leader = make_core("a", voters)
    elect(leader)
    return leader


def contact(leader: RaftCore, peer: str, now: float) -> None:
    """The follower answers the leader's AppendEntries at ``now``."""
    append = replicate(leader, peer, heartbeat=True)
    assert append is not None
    match = append.prev_log_index + len(append.entries)
    leader.handle_message(
        peer, AppendEntriesResponse(term=leader.current_term, success=True, match_index=match), now
    )


def test_leader_without_majority_contact_steps_down() -> None:
    """Reference: dissertation §6.2 (a leader steps down if an election timeout passes without
    a successful round of heartbeats to a majority)."""
    leader = elected_leader()
    assert leader.check_quorum(5.0) is False
    assert leader.role is Role.FOLLOWER
    assert leader.current_term == 1
    assert leader.leader_id is None
    assert replicate(leader, "b") is None


def test_leader_with_majority_contact_stays() -> None:
    """Reference: dissertation §6.2."""
    leader = elected_leader()
    contact(leader, "b", 5.0)
    assert leader.check_quorum(5.0 + 0.9) is True
    assert leader.role is Role.LEADER


def test_contact_older_than_an_election_timeout_does_not_count() -> None:
    """Reference: dissertation §6.2 (the window is one election timeout)."""
    leader = elected_leader()
    contact(leader, "b", 5.0)
    assert leader.check_quorum(5.0 + ELECTION_TIMEOUT) is False
    assert leader.role is Role.FOLLOWER


def test_check_quorum_needs_a_majority_of_five() -> None:
    """Reference: dissertation §6.2 (the leader plus two of four followers)."""
    leader = elected_leader(FIVE)
    contact(leader, "b", 5.0)
    assert leader.check_quorum(5.5) is False
    leader = elected_leader(FIVE)
    contact(leader, "b", 5.0)
    contact(leader, "c", 5.2)
    assert leader.check_quorum(5.5) is True


def test_a_rejection_still_counts_as_contact() -> None:
    """Reference: dissertation §6.2 (any answer of the current term shows the peer is there)."""
    leader = make_core("a", term=1, log=log_of(1, 1))
    elect(leader)
    [probe] = drain_appends(leader, "b")
    leader.handle_message(
        "b",
        AppendEntriesResponse(
            term=2, success=False, reject_index=probe.prev_log_index, conflict_index=1
        ),
        5.0,
    )
    assert leader.check_quorum(5.5) is True


def test_stepped_down_leader_no_longer_claims_a_lease() -> None:
    """Reference: dissertation §6.2 and §4.2.3 (after stepping down it votes normally)."""
    leader = elected_leader()
    leader.check_quorum(5.0)
    answer = only_reply(leader, "b", vote_request(term=2, candidate="b", last=(1, 1)), 5.0)
    assert answer == RequestVoteResponse(term=2, vote_granted=True)


def test_check_quorum_is_a_no_op_on_followers() -> None:
    """Reference: dissertation §6.2."""
    follower = make_core("a")
    assert follower.check_quorum(100.0) is False
    assert follower.role is Role.FOLLOWER
    assert not follower.has_ready


def test_isolated_leader_steps_down_and_majority_elects_another() -> None:
    """Reference: dissertation §6.2 (end to end in the mini cluster)."""
    cluster = Cluster()
    cluster.elect("a")
    cluster.stabilize(heartbeat=True)
    cluster.isolate("a")
    cluster.now += ELECTION_TIMEOUT
    assert cluster["a"].check_quorum(cluster.now) is False
    cluster.flush("a")
    cluster.elect("b")
    assert cluster["b"].current_term == 2
    assert cluster["a"].role is Role.FOLLOWER
