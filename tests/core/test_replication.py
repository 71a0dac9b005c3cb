"""The leader's side of log replication (§5.3): repair, probe vs. pipeline, batching."""

from __future__ import annotations

from typing import Any

import pytest

from tinyraft_trio._core._messages import AppendEntries, AppendEntriesResponse
from tinyraft_trio._core._progress import Progress, ReplicationState
from tinyraft_trio._core._state import RaftCore
from tinyraft_trio._core._types import Entry, EntryKind

from .helpers import (
    Cluster,
    acknowledge,
    drain_appends,
    elect,
    log_of,
    make_core,
    of_type,
    only_reply,
    replicate,
    terms_of,
    to,
)


def progress_of(leader: RaftCore, peer: str) -> Progress:
    progress = leader.progress(peer)
    assert progress is not None
    return progress


def repair_round_trips(leader: RaftCore, follower: RaftCore, limit: int = 200) -> int:
    """Ship AppendEntries from leader to follower and back until their logs agree."""
    round_trips = 0
    while follower.log.slice(1, 10**9) != leader.log.slice(1, 10**9):
        append = replicate(leader, follower.id)
        assert append is not None, "the leader stalled"
        answer = only_reply(follower, leader.id, append)
        leader.handle_message(follower.id, answer, 0.0)
        round_trips += 1
        assert round_trips < limit
    return round_trips


def replicating_leader(**overrides: Any) -> RaftCore:
    """A leader of a fresh 3-node cluster whose peer b is caught up and in REPLICATE."""
    leader = make_core("a", **overrides)
    elect(leader)
    [probe] = drain_appends(leader, "b")
    acknowledge(leader, "b", probe)
    assert progress_of(leader, "b").state is ReplicationState.REPLICATE
    assert leader.commit_index == 1
    [commit_news] = drain_appends(leader, "b")  # tells b that the no-op committed
    assert commit_news.entries == ()
    return leader


def propose_persisted(leader: RaftCore, count: int, size: int = 0) -> list[Entry]:
    entries = [leader.propose(bytes(size) or f"cmd{n}".encode()) for n in range(count)]
    leader.on_persisted(entries[-1].index, entries[-1].term)
    return entries


# ---------------------------------------------------------------------- repairing a follower


def test_conflict_hint_skips_a_whole_divergent_term_per_round_trip() -> None:
    """Reference: §5.3 (with the conflicting term and its first index in the rejection, the
    leader bypasses all conflicting entries of that term in one AppendEntries, not one by one)."""
    leader = make_core("a", term=3, log=log_of(1, 1, *[3] * 50))
    follower = make_core("b", term=3, log=log_of(1, 1, *[2] * 50))
    elect(leader)
    assert repair_round_trips(leader, follower) <= 3
    assert terms_of(follower) == [1, 1, *[3] * 50, 4]


def test_conflict_hint_uses_the_leaders_last_entry_of_the_conflicting_term() -> None:
    """Reference: §5.3 (when the leader also has entries of the follower's conflicting term,
    it resumes right after its last one)."""
    leader = make_core("a", term=4, log=log_of(1, 2, 2, 2, 4, 4))
    follower = make_core("b", term=2, log=log_of(1, *[2] * 40))
    elect(leader)  # term 5, no-op at 7
    [probe] = drain_appends(leader, "b")
    rejection = only_reply(follower, "a", probe)
    assert rejection == AppendEntriesResponse(
        term=5, success=False, reject_index=6, conflict_index=2, conflict_term=2
    )
    leader.handle_message("b", rejection, 0.0)
    # Entries 2..4 of term 2 are shared; the leader need not resend them.
    [retry] = drain_appends(leader, "b")
    assert (retry.prev_log_index, retry.prev_log_term) == (4, 2)
    leader.handle_message("b", only_reply(follower, "a", retry), 0.0)
    assert terms_of(follower) == [1, 2, 2, 2, 4, 4, 5]


def test_short_follower_log_is_caught_up_quickly() -> None:
    """Reference: §5.3 (a follower missing entries tells the leader where its log ends)."""
    leader = make_core("a", term=2, log=log_of(*[1] * 5, *[2] * 60))
    follower = make_core("b", term=2, log=log_of(*[1] * 5))
    elect(leader)
    assert repair_round_trips(leader, follower) <= 2


def test_rejection_rewinds_only_as_far_as_the_hint_says() -> None:
    """Reference: §5.3 (next_index moves to the hint, and never below match_index + 1)."""
    leader = make_core("a", term=2, log=log_of(1, 1, 2, 2))
    elect(leader)  # term 3, no-op at 5
    [probe] = drain_appends(leader, "b")
    assert probe.prev_log_index == 4
    leader.handle_message(
        "b",
        AppendEntriesResponse(term=3, success=False, reject_index=4, conflict_index=3),
        0.0,
    )
    progress = progress_of(leader, "b")
    assert progress.state is ReplicationState.PROBE
    assert progress.next_index == 3
    [retry] = drain_appends(leader, "b")
    assert (retry.prev_log_index, retry.prev_log_term) == (2, 1)
    assert [e.index for e in retry.entries] == [3, 4, 5]


# ---------------------------------------------------------------------- probe and pipeline


def test_probe_state_has_at_most_one_append_outstanding() -> None:
    """Reference: §5.3 and etcd's probe state (until a follower's match point is known, send
    one AppendEntries and wait for its answer)."""
    leader = make_core("a", term=1, log=log_of(1, 1))
    elect(leader)
    assert progress_of(leader, "b").state is ReplicationState.PROBE
    first = replicate(leader, "b")
    assert first is not None
    propose_persisted(leader, 5)
    assert replicate(leader, "b") is None
    assert replicate(leader, "b") is None
    # The answer (here a rejection) permits the next probe.
    leader.handle_message(
        "b",
        AppendEntriesResponse(
            term=2, success=False, reject_index=first.prev_log_index, conflict_index=2
        ),
        0.0,
    )
    second = replicate(leader, "b")
    assert second is not None
    assert second.prev_log_index == 1
    assert replicate(leader, "b") is None


def test_successful_probe_switches_to_pipelined_replication() -> None:
    """Reference: §5.3 (once the match point is found, entries stream without waiting)."""
    leader = make_core("a", max_entries_per_append=1)
    elect(leader)
    [probe] = drain_appends(leader, "b")
    propose_persisted(leader, 3)
    acknowledge(leader, "b", probe)
    progress = progress_of(leader, "b")
    assert progress.state is ReplicationState.REPLICATE
    assert progress.match_index == 1
    appends = drain_appends(leader, "b")
    assert [[e.index for e in a.entries] for a in appends] == [[2], [3], [4]]
    assert [a.prev_log_index for a in appends] == [1, 2, 3]


def test_replicate_state_keeps_at_most_max_inflight_appends_outstanding() -> None:
    """Reference: §10.2 pipelining, bounded by a flow-control window."""
    leader = replicating_leader(max_inflight_appends=3, max_entries_per_append=1)
    propose_persisted(leader, 10)
    appends = drain_appends(leader, "b")
    assert [a.entries[0].index for a in appends] == [2, 3, 4]
    acknowledge(leader, "b", appends[0])
    more = drain_appends(leader, "b")
    assert [a.entries[0].index for a in more] == [5]
    acknowledge(leader, "b", more[0])  # cumulative: frees the whole window
    assert [a.entries[0].index for a in drain_appends(leader, "b")] == [6, 7, 8]


def test_batches_are_bounded_by_entry_count() -> None:
    """Reference: §10.2 batching (max_entries_per_append)."""
    leader = replicating_leader(max_entries_per_append=4)
    propose_persisted(leader, 10)
    appends = drain_appends(leader, "b")
    assert [[e.index for e in a.entries] for a in appends] == [
        [2, 3, 4, 5],
        [6, 7, 8, 9],
        [10, 11],
    ]


def test_batches_are_bounded_by_bytes_but_never_empty() -> None:
    """Reference: §10.2 batching (max_bytes_per_append; an oversized entry still goes alone)."""
    leader = replicating_leader(max_bytes_per_append=250)
    propose_persisted(leader, 5, size=100)  # 116 bytes each by the log's accounting
    appends = drain_appends(leader, "b")
    assert [len(a.entries) for a in appends] == [2, 2, 1]
    huge = leader.propose(bytes(10_000))
    [alone] = drain_appends(leader, "b")
    assert alone.entries == (huge,)


def commit_one_via_b(leader: RaftCore) -> None:
    """Propose an entry on ``leader`` and have follower "b" acknowledge it: it commits."""
    entry = leader.propose(b"x")
    leader.on_persisted(entry.index, entry.term)
    [append] = drain_appends(leader, "b")
    acknowledge(leader, "b", append)
    assert leader.commit_index == entry.index


def test_heartbeat_with_nothing_new_is_an_empty_append_entries() -> None:
    """Reference: §5.2 (heartbeats are AppendEntries RPCs that carry no log entries)."""
    leader = replicating_leader()
    heartbeat = replicate(leader, "b", heartbeat=True)
    assert heartbeat == AppendEntries(
        term=1,
        leader_id="a",
        prev_log_index=1,
        prev_log_term=1,
        entries=(),
        leader_commit=leader.commit_index,
    )
    # In probe state too, to a peer that never answered.
    probe_heartbeat = replicate(leader, "c", heartbeat=True)
    assert probe_heartbeat is not None
    assert probe_heartbeat.prev_log_index == 0


def test_commit_advance_is_sent_even_without_new_entries() -> None:
    """Reference: §5.3 (the leader includes leaderCommit in future AppendEntries so followers
    learn of commits)."""
    leader = replicating_leader()
    assert replicate(leader, "b") is None
    commit_one_via_b(leader)
    [news] = drain_appends(leader, "b")
    assert news.entries == ()
    assert news.leader_commit == 2
    assert replicate(leader, "b") is None


def test_commit_news_alone_can_be_withheld_to_ride_on_the_next_entries() -> None:
    """The driver may hold back a commit-only AppendEntries (``commit=False``); the news
    then rides on the next entries. Entries and heartbeats are never held back."""
    leader = replicating_leader()
    commit_one_via_b(leader)
    assert leader.commit_behind("b")
    assert leader.replicate("b", commit=False) is None
    heartbeat = leader.replicate("b", heartbeat=True, commit=False)
    assert isinstance(heartbeat, AppendEntries) and heartbeat.leader_commit == 2
    assert not leader.commit_behind("b")

    second = leader.propose(b"y")
    leader.on_persisted(second.index, second.term)
    [append] = drain_appends(leader, "b")
    acknowledge(leader, "b", append)
    third = leader.propose(b"z")
    assert leader.commit_behind("b")
    carrying = leader.replicate("b", commit=False)
    assert isinstance(carrying, AppendEntries)
    assert carrying.entries == (third,) and carrying.leader_commit == 3
    assert not leader.commit_behind("b")


def test_a_probing_follower_is_never_commit_behind() -> None:
    """In PROBE nothing but the outstanding probe may go out, so there is no news to hold."""
    leader = replicating_leader()
    commit_one_via_b(leader)
    assert not leader.commit_behind("c")  # "c" never answered: still probing


def test_stale_rejection_in_replicate_state_is_ignored() -> None:
    """Reference: §5.3 (a rejection for a point already known to match is out of date)."""
    leader = replicating_leader(max_entries_per_append=1)
    propose_persisted(leader, 4)
    appends = drain_appends(leader, "b")
    for append in appends[:3]:
        acknowledge(leader, "b", append)
    progress = progress_of(leader, "b")
    assert progress.match_index == 4
    next_index = progress.next_index
    leader.handle_message(
        "b",
        AppendEntriesResponse(term=1, success=False, reject_index=2, conflict_index=2),
        0.0,
    )
    assert progress.state is ReplicationState.REPLICATE
    assert progress.next_index == next_index
    assert progress.match_index == 4


def test_stale_rejection_in_probe_state_is_ignored() -> None:
    """Reference: §5.3 (only the answer to the outstanding probe moves next_index)."""
    leader = make_core("a", term=1, log=log_of(1, 1, 1, 1))
    elect(leader)
    [probe] = drain_appends(leader, "b")
    assert probe.prev_log_index == 4
    leader.handle_message(
        "b",
        AppendEntriesResponse(term=2, success=False, reject_index=2, conflict_index=1),
        0.0,
    )
    progress = progress_of(leader, "b")
    assert progress.next_index == 5
    assert replicate(leader, "b") is None  # the real probe is still outstanding


def test_stale_success_does_not_move_match_index_back() -> None:
    """Reference: Figure 2 (matchIndex increases monotonically)."""
    leader = replicating_leader(max_entries_per_append=1)
    propose_persisted(leader, 2)
    first, second = drain_appends(leader, "b")
    acknowledge(leader, "b", second)
    acknowledge(leader, "b", first)  # arrives late
    assert progress_of(leader, "b").match_index == 3


def test_fresh_rejection_in_replicate_state_falls_back_to_probe() -> None:
    """Reference: §5.3 (lost appends: a rejection beyond the match point restarts probing)."""
    leader = replicating_leader(max_entries_per_append=1)
    propose_persisted(leader, 3)
    appends = drain_appends(leader, "b")
    leader.handle_message(
        "b",
        AppendEntriesResponse(
            term=1, success=False, reject_index=appends[2].prev_log_index, conflict_index=2
        ),
        0.0,
    )
    progress = progress_of(leader, "b")
    assert progress.state is ReplicationState.PROBE
    assert progress.next_index == 2
    assert [e.index for e in drain_appends(leader, "b")[0].entries] == [2]


def test_lost_appends_are_recovered_end_to_end() -> None:
    """Reference: §5.3 (the leader retries until every follower's log matches)."""
    cluster = Cluster(max_entries_per_append=2)
    cluster.elect("a")
    cluster.stabilize(heartbeat=True)
    for n in range(5):
        cluster.propose("a", f"cmd{n}".encode())
    cluster.replicate("a")
    cluster.drop(to("b"))  # everything for b is lost
    cluster.deliver()
    cluster.propose("a", b"last")
    cluster.stabilize(heartbeat=True)
    cluster.stabilize(heartbeat=True)
    assert terms_of(cluster["b"]) == terms_of(cluster["a"])
    assert [e.data for e in cluster.applied["b"][1:]] == [
        *[f"cmd{n}".encode() for n in range(5)],
        b"last",
    ]
    cluster.check_log_matching()


def test_reordered_and_duplicated_appends_converge() -> None:
    """Reference: §5.3 (the protocol tolerates reordering and duplication by the network)."""
    cluster = Cluster(max_entries_per_append=1, max_inflight_appends=8)
    cluster.elect("a")
    cluster.stabilize(heartbeat=True)
    for n in range(6):
        cluster.propose("a", f"cmd{n}".encode())
    cluster.replicate("a")
    appends = [e for e in cluster.queue if isinstance(e.message, AppendEntries)]
    cluster.queue = list(reversed(appends)) + appends[:3]
    cluster.deliver()
    cluster.stabilize(heartbeat=True)
    cluster.stabilize(heartbeat=True)
    for node in ("b", "c"):
        assert terms_of(cluster[node]) == terms_of(cluster["a"])
        assert cluster[node].commit_index == 7
    assert cluster.deliver(of_type(AppendEntriesResponse)) == 0
    cluster.check_log_matching()


def test_propose_many_appends_entries_of_the_current_term_in_order() -> None:
    """Reference: §5.3 (the leader appends each command to its log as a new entry)."""
    leader = replicating_leader()
    entries = leader.propose_many([(b"x", EntryKind.COMMAND), (b"y", EntryKind.SESSION)])
    assert [(e.index, e.term, e.kind, e.data) for e in entries] == [
        (2, leader.current_term, EntryKind.COMMAND, b"x"),
        (3, leader.current_term, EntryKind.SESSION, b"y"),
    ]
    assert leader.log.slice(2, 4) == entries
    assert leader.propose(b"z").index == 4
    assert leader.propose_many([]) == []
    follower = make_core("b")
    with pytest.raises(RuntimeError):
        follower.propose_many([(b"x", EntryKind.COMMAND)])
