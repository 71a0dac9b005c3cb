"""The leader's commit rule (§5.3, §5.4.2, Figure 8) and handing out committed entries."""

from __future__ import annotations

from tinyraft_trio._core._messages import AppendEntriesResponse, RequestVote, RequestVoteResponse
from tinyraft_trio._core._state import RaftCore
from tinyraft_trio._core._types import EntryKind, Role

from .helpers import (
    ELECTION_TIMEOUT,
    Cluster,
    Envelope,
    Match,
    drain_appends,
    elect,
    log_of,
    make_core,
    terms_of,
)


def ack(leader: RaftCore, peer: str, match_index: int) -> None:
    """``peer`` reports that it holds the leader's log up to ``match_index``."""
    leader.handle_message(
        peer,
        AppendEntriesResponse(term=leader.current_term, success=True, match_index=match_index),
        0.0,
    )


def leader_with_unpersisted_noop(voters: tuple[str, ...] = ("a", "b", "c")) -> RaftCore:
    """A fresh leader whose no-op (index 1) the driver has not yet reported durable."""
    leader = make_core("a", voters, pre_vote=False)
    leader.election_timeout()
    leader.take_ready()
    for peer in voters[1:]:
        leader.handle_message(peer, RequestVoteResponse(term=1, vote_granted=True), 0.0)
    assert leader.role is Role.LEADER
    assert leader.persisted_index == 0
    return leader


# ---------------------------------------------------------------------- counting replicas


def test_entry_of_current_term_commits_once_on_a_majority() -> None:
    """Reference: §5.3 (a log entry is committed once the leader that created it has
    replicated it on a majority of the servers)."""
    leader = make_core("a", ("a", "b", "c", "d", "e"))
    elect(leader)  # no-op at index 1, persisted
    entry = leader.propose(b"x")
    leader.on_persisted(entry.index, entry.term)
    ack(leader, "b", 2)
    assert leader.commit_index == 0  # 2 of 5
    ack(leader, "c", 2)
    assert leader.commit_index == 2  # 3 of 5, and everything before it
    assert [e.index for e in leader.take_committed()] == [1, 2]


def test_entries_of_previous_terms_are_not_committed_by_counting_replicas() -> None:
    """Reference: §5.4.2 (Raft never commits log entries from previous terms by counting
    replicas; only entries from the leader's current term are committed that way)."""
    leader = make_core("a", term=1, log=log_of(1, 1))
    elect(leader)
    assert leader.current_term == 2
    assert terms_of(leader) == [1, 1, 2]
    # Every server holds the old entries 1..2, the no-op of term 2 nowhere but the leader.
    ack(leader, "b", 2)
    ack(leader, "c", 2)
    assert leader.commit_index == 0
    assert leader.take_committed() == []
    # Once the no-op of term 2 is on a majority, it commits, and the old entries with it.
    ack(leader, "b", 3)
    assert leader.commit_index == 3
    assert [(e.index, e.term) for e in leader.take_committed()] == [(1, 1), (2, 1), (3, 2)]


def test_leader_counts_itself_only_for_persisted_entries() -> None:
    """Reference: dissertation §10.2.1 (the leader may write its log in parallel with
    replication, but it counts itself only for entries that are durable)."""
    leader = leader_with_unpersisted_noop()
    ack(leader, "b", 1)
    assert leader.commit_index == 0  # b alone is not a majority of three
    leader.on_persisted(1, 1)
    assert leader.commit_index == 1


def test_two_follower_acks_commit_without_the_leaders_own_copy() -> None:
    """Reference: dissertation §10.2.1 (a majority of followers suffices: the leader need not
    have finished its own write)."""
    leader = leader_with_unpersisted_noop()
    ack(leader, "b", 1)
    ack(leader, "c", 1)
    assert leader.commit_index == 1


def test_persistence_report_for_a_different_term_is_ignored() -> None:
    """Reference: dissertation §10.2.1 (a write of entries since replaced proves nothing)."""
    leader = leader_with_unpersisted_noop()
    leader.on_persisted(1, 7)
    assert leader.persisted_index == 0
    ack(leader, "b", 1)
    assert leader.commit_index == 0


def test_appends_may_leave_before_the_leaders_own_write() -> None:
    """Reference: dissertation §10.2.1 (replicate() does not wait for on_persisted)."""
    leader = leader_with_unpersisted_noop()
    [append] = drain_appends(leader, "b")
    assert [e.kind for e in append.entries] == [EntryKind.NOOP]


def test_commit_index_never_decreases_on_the_leader() -> None:
    """Reference: Figure 2 (commitIndex increases monotonically)."""
    leader = make_core("a")
    elect(leader)
    ack(leader, "b", 1)
    assert leader.commit_index == 1
    leader.handle_message(
        "b", AppendEntriesResponse(term=1, success=True, match_index=0), 0.0
    )  # a stale answer
    progress = leader.progress("b")
    assert progress is not None
    assert progress.match_index == 1
    assert leader.commit_index == 1


# ---------------------------------------------------------------------- take_committed


def test_take_committed_hands_out_each_entry_exactly_once_in_order() -> None:
    """Reference: Figure 2 (lastApplied: apply log[lastApplied] in log order, once)."""
    leader = make_core("a")
    elect(leader)
    for n in range(5):
        entry = leader.propose(f"cmd{n}".encode())
        leader.on_persisted(entry.index, entry.term)
    handed_out = []
    ack(leader, "b", 3)
    handed_out += leader.take_committed()
    assert leader.take_committed() == []
    ack(leader, "b", 6)
    handed_out += leader.take_committed(limit=2)
    handed_out += leader.take_committed(limit=2)
    handed_out += leader.take_committed()
    assert leader.take_committed() == []
    assert [e.index for e in handed_out] == [1, 2, 3, 4, 5, 6]
    assert [e.data for e in handed_out[1:]] == [f"cmd{n}".encode() for n in range(5)]
    assert leader.applied_index == 6


# ---------------------------------------------------------------------- Figure 8


FIGURE_8 = ("s1", "s2", "s3", "s4", "s5")


def is_vote(envelope: Envelope) -> bool:
    return isinstance(envelope.message, (RequestVote, RequestVoteResponse))


def between(x: str, y: str) -> Match:
    return lambda envelope: {envelope.sender, envelope.to} == {x, y}


def win_election(cluster: Cluster, node: str) -> None:
    """Time ``node`` out until it wins, delivering only vote traffic (no replication)."""
    for _ in range(3):
        cluster.now += 2 * ELECTION_TIMEOUT
        cluster.timeout(node)
        while cluster.deliver(is_vote):
            pass
        if cluster[node].role is Role.LEADER:
            return
    raise AssertionError(f"{node} was not elected")


def exchange(cluster: Cluster, leader: str, peer: str, *, rounds: int) -> None:
    """Run ``rounds`` AppendEntries round trips between ``leader`` and ``peer`` only."""
    for _ in range(rounds):
        cluster.replicate(leader, peers=[peer])
        cluster.deliver(between(leader, peer))  # the request
        cluster.deliver(between(leader, peer))  # the answer


def figure_8_through_c() -> tuple[Cluster, bytes]:
    """Figure 8 (a)-(c) with no-ops: returns the cluster and the data of the old entry."""
    # One entry per AppendEntries, so the leader can place exactly the entries the figure shows.
    cluster = Cluster(FIGURE_8, max_entries_per_append=1)

    # (a) s1 leads term 1; its no-op commits everywhere; it replicates entry 2 only to s2.
    cluster.elect("s1")
    cluster.stabilize(heartbeat=True)
    old = cluster.propose("s1", b"X")
    assert (old.index, old.term) == (2, 1)
    cluster.replicate("s1")
    cluster.deliver(between("s1", "s2"))
    cluster.deliver(between("s1", "s2"))
    cluster.drop()
    assert terms_of(cluster["s2"]) == [1, 1]
    assert terms_of(cluster["s3"]) == [1]

    # (b) s1 crashes; s5 is elected in term 2 by s3, s4 and itself, appends its no-op at
    # index 2, and crashes before replicating it.
    cluster.crash("s1")
    win_election(cluster, "s5")
    assert cluster["s5"].current_term == 2
    assert terms_of(cluster["s5"]) == [1, 2]
    cluster.crash("s5")

    # (c) s1 restarts and is elected in term 3 (by s2, s3, s4); it brings s3 up to index 2
    # and s2 up to its no-op at index 3. Index 2 (term 1) is now on s1, s2, s3: a majority.
    cluster.restart("s1")
    win_election(cluster, "s1")
    assert cluster["s1"].current_term == 3
    assert terms_of(cluster["s1"]) == [1, 1, 3]
    exchange(cluster, "s1", "s3", rounds=2)
    exchange(cluster, "s1", "s2", rounds=2)
    assert cluster.queue == []
    assert terms_of(cluster["s3"]) == [1, 1]
    assert terms_of(cluster["s2"]) == [1, 1, 3]
    return cluster, old.data


def test_figure_8_entry_on_a_majority_from_an_old_term_is_not_committed() -> None:
    """Reference: §5.4.2 and Figure 8 (c)-(d): an old-term entry stored on a majority can
    still be overwritten by a future leader, so the leader must not count it committed."""
    cluster, old_data = figure_8_through_c()
    s1 = cluster["s1"]
    s2_progress, s3_progress = s1.progress("s2"), s1.progress("s3")
    assert s2_progress is not None
    assert s3_progress is not None
    assert (s2_progress.match_index, s3_progress.match_index) == (3, 2)
    assert s1.persisted_index == 3
    assert s1.commit_index < 2  # index 2 is on 3 of 5, but it is of term 1
    assert all(e.data != old_data for e in cluster.committed.values())

    # (d) s1 crashes; s5 restarts and wins term 4 with s3's and s4's votes (its last term 2
    # beats their 1), then overwrites index 2 everywhere it reaches.
    cluster.crash("s1")
    cluster.restart("s5")
    win_election(cluster, "s5")
    assert cluster["s5"].current_term == 4
    cluster.stabilize()
    for node in ("s2", "s3", "s4", "s5"):
        assert terms_of(cluster[node]) == [1, 2, 4], node
        assert cluster[node].commit_index == 3
    assert [cluster.committed[i].term for i in (1, 2, 3)] == [1, 2, 4]
    assert cluster.committed[3].kind is EntryKind.NOOP

    # s1 comes back and its copy of the old entry is replaced too.
    cluster.restart("s1")
    cluster.stabilize(heartbeat=True)
    assert terms_of(cluster["s1"]) == [1, 2, 4]
    assert all(e.data != old_data for e in cluster.applied["s1"])
    cluster.check_log_matching()


def test_figure_8_entry_commits_with_the_current_terms_entry() -> None:
    """Reference: §5.4.2 and Figure 8 (e): once the leader's own-term entry is on a majority,
    the older entry before it commits too, and s5 can no longer be elected."""
    cluster, old_data = figure_8_through_c()
    exchange(cluster, "s1", "s3", rounds=1)  # the no-op of term 3 reaches s3
    assert cluster["s1"].commit_index == 3
    assert cluster.committed[2].data == old_data
    assert cluster.committed[2].term == 1

    cluster.crash("s1")
    cluster.restart("s5")
    for _ in range(3):
        cluster.now += 2 * ELECTION_TIMEOUT
        cluster.timeout("s5")
        while cluster.deliver(is_vote):
            pass
    assert cluster["s5"].role is not Role.LEADER  # s2 and s3 hold a newer last term
    cluster.timeout("s2")
    cluster.stabilize(heartbeat=True)
    assert cluster.leaders_now() == ["s2"]
    for node in cluster.up():
        assert cluster[node].log.entry(2).data == old_data
