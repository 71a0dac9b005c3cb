"""AppendEntries receiver rules (Figure 2, §5.3): consistency check, truncation, commit."""

from __future__ import annotations

import pytest

from tinyraft_trio._core._messages import AppendEntriesResponse
from tinyraft_trio._core._state import SafetyViolation
from tinyraft_trio._core._types import Entry

from .helpers import append_entries, elect, log_of, make_core, only_reply, reply, sent, terms_of


def test_reject_when_prev_index_is_missing() -> None:
    """Reference: Figure 2 AppendEntries rule 2 and §5.3 (reply false if the log doesn't contain
    an entry at prevLogIndex; the hint says where the log ends, conflict_term 0)."""
    follower = make_core("a", term=2, log=log_of(1, 1))
    answer = only_reply(
        follower, "b", append_entries(term=2, prev=(5, 2), entries=log_of(2, start=6), commit=6)
    )
    assert answer == AppendEntriesResponse(
        term=2, success=False, reject_index=5, conflict_index=3, conflict_term=0
    )
    assert terms_of(follower) == [1, 1]
    assert follower.commit_index == 0


def test_reject_when_prev_term_differs_with_first_index_of_that_term() -> None:
    """Reference: Figure 2 AppendEntries rule 2 and §5.3 (the conflict hint names the term of
    the conflicting entry and the first index the follower stores for that term)."""
    follower = make_core("a", term=3, log=log_of(1, 1, 2, 2, 2))
    answer = only_reply(follower, "b", append_entries(term=3, prev=(4, 3), commit=4))
    assert answer == AppendEntriesResponse(
        term=3, success=False, reject_index=4, conflict_index=3, conflict_term=2
    )
    assert terms_of(follower) == [1, 1, 2, 2, 2]  # a mismatch alone truncates nothing
    assert follower.commit_index == 0


def test_rejection_still_recognizes_the_leader() -> None:
    """Reference: §5.2 (an AppendEntries of the current term comes from the legitimate leader,
    even when its log check fails)."""
    follower = make_core("a", term=3)
    follower.take_timer_reset()
    reply(follower, "b", append_entries(term=3, prev=(4, 3)))
    assert follower.leader_id == "b"
    assert follower.take_timer_reset() is True


def test_accept_when_prev_matches_and_ack_only_with_the_entries_to_persist() -> None:
    """Reference: Figure 2 AppendEntries rules 2 and 4, §5.3 (append new entries; the success
    leaves in the same Ready that carries them to storage)."""
    follower = make_core("a", term=2, log=log_of(1, 1))
    new = log_of(2, 2, start=3)
    ready = reply(follower, "b", append_entries(term=2, prev=(2, 1), entries=new))
    assert ready.first_index == 3
    assert ready.entries == tuple(new)
    assert sent(ready, AppendEntriesResponse) == [
        ("b", AppendEntriesResponse(term=2, success=True, match_index=4))
    ]
    assert terms_of(follower) == [1, 1, 2, 2]


def test_heartbeat_that_matches_acknowledges_prev_index() -> None:
    """Reference: §5.3 (an empty AppendEntries still proves the prefix up to prevLogIndex)."""
    follower = make_core("a", term=2, log=log_of(1, 2, 2))
    answer = only_reply(follower, "b", append_entries(term=2, prev=(2, 2)))
    assert answer == AppendEntriesResponse(term=2, success=True, match_index=2)
    assert terms_of(follower) == [1, 2, 2]  # the unverified suffix is kept


def test_duplicate_append_entries_is_idempotent() -> None:
    """Reference: Figure 2 AppendEntries rule 4 (append any new entries not already in the log)."""
    follower = make_core("a", term=2, log=log_of(1))
    message = append_entries(term=2, prev=(1, 1), entries=log_of(2, 2, start=2))
    first = reply(follower, "b", message)
    second = reply(follower, "b", message)
    assert first.first_index == 2
    assert second.first_index is None
    assert second.entries == ()
    assert sent(second, AppendEntriesResponse)[0][1] == AppendEntriesResponse(
        term=2, success=True, match_index=3
    )
    assert terms_of(follower) == [1, 2, 2]


def test_stale_append_entries_does_not_truncate_matching_suffix() -> None:
    """Reference: Figure 2 AppendEntries rule 3 (delete only if an existing entry *conflicts*):
    a delayed or reordered AppendEntries whose entries already match must not drop the
    entries after them, which the follower may already have acknowledged."""
    follower = make_core("a", term=2, log=log_of(1, 2, 2, 2, 2, 2))
    late = append_entries(term=2, prev=(1, 1), entries=log_of(2, 2, start=2))
    ready = reply(follower, "b", late)
    assert terms_of(follower) == [1, 2, 2, 2, 2, 2]
    assert ready.first_index is None
    assert ready.entries == ()
    assert sent(ready, AppendEntriesResponse)[0][1] == AppendEntriesResponse(
        term=2, success=True, match_index=3
    )


def test_conflicting_suffix_is_truncated_from_the_first_conflict() -> None:
    """Reference: Figure 2 AppendEntries rule 3 (if an existing entry conflicts with a new one,
    delete the existing entry and all that follow it); Ready.first_index tells storage where."""
    follower = make_core("a", term=3, log=log_of(1, 1, 2, 2, 2))
    incoming = [Entry(term=2, index=3, data=b"3@2"), Entry(term=3, index=4, data=b"new")]
    ready = reply(follower, "b", append_entries(term=3, prev=(2, 1), entries=incoming))
    assert terms_of(follower) == [1, 1, 2, 3]  # index 3 matched and stayed; 4 and 5 went
    assert follower.log.entry(4).data == b"new"
    assert ready.first_index == 4
    assert ready.entries == (incoming[1],)
    assert sent(ready, AppendEntriesResponse)[0][1] == AppendEntriesResponse(
        term=3, success=True, match_index=4
    )


def test_truncation_rewinds_persisted_index() -> None:
    """Reference: §10.2.1 (what was durable at a truncated index is no longer this log)."""
    follower = make_core("a", term=3, log=log_of(1, 2, 2))
    assert follower.persisted_index == 3
    reply(follower, "b", append_entries(term=3, prev=(1, 1), entries=log_of(3, start=2)))
    assert follower.persisted_index == 1
    follower.on_persisted(3, 2)  # a report about the old entry 3 is ignored
    assert follower.persisted_index == 1
    follower.on_persisted(2, 3)
    assert follower.persisted_index == 2


def test_follower_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    """Reference: Figure 2 AppendEntries rule 5 (commitIndex = min(leaderCommit, index of last
    new entry)): entries past what this message verified may still be overwritten."""
    follower = make_core("a", term=2, log=log_of(1, 1, 1, 1, 1))
    reply(follower, "b", append_entries(term=2, prev=(2, 1), commit=4))
    assert follower.commit_index == 2
    reply(follower, "b", append_entries(term=2, prev=(2, 1), entries=log_of(2, start=3), commit=4))
    assert follower.commit_index == 3
    assert terms_of(follower) == [1, 1, 2]


def test_follower_commit_follows_leader_commit_when_below_the_match() -> None:
    """Reference: Figure 2 AppendEntries rule 5."""
    follower = make_core("a", term=2)
    reply(follower, "b", append_entries(term=2, entries=log_of(2, 2, 2, 2), commit=2))
    assert follower.commit_index == 2
    assert [e.index for e in follower.take_committed()] == [1, 2]


def test_follower_commit_never_decreases() -> None:
    """Reference: Figure 2 (commitIndex increases monotonically) under reordered messages."""
    follower = make_core("a", term=2)
    reply(follower, "b", append_entries(term=2, entries=log_of(2, 2, 2, 2), commit=3))
    assert follower.commit_index == 3
    reply(follower, "b", append_entries(term=2, prev=(4, 2), commit=1))  # old commit
    assert follower.commit_index == 3
    reply(follower, "b", append_entries(term=2, prev=(1, 2), commit=4))  # old, short prefix
    assert follower.commit_index == 3
    assert [e.index for e in follower.take_committed()] == [1, 2, 3]


def test_leader_receiving_append_entries_of_its_own_term_is_a_safety_violation() -> None:
    """Reference: §5.2 Election Safety (at most one leader per term): it can only be a bug."""
    leader = make_core("a")
    elect(leader)
    with pytest.raises(SafetyViolation):
        leader.handle_message("b", append_entries(term=1, leader="b"), 0.0)


def test_overwriting_a_committed_entry_is_a_safety_violation() -> None:
    """Reference: §5.4 Leader Completeness (a committed entry is never replaced)."""
    follower = make_core("a", term=2)
    reply(follower, "b", append_entries(term=2, entries=log_of(2, 2), commit=2))
    with pytest.raises(SafetyViolation):
        follower.handle_message("c", append_entries(term=3, entries=log_of(3, 3), leader="c"), 0.0)
