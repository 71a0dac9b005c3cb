"""Snapshots in the pure core: compaction, InstallSnapshot, and recovery (§7, Figure 13)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyraft_trio._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
)
from tinyraft_trio._core._state import RaftCore, SnapshotNeeded
from tinyraft_trio._core._types import Entry, HardState, Member, Membership, SnapshotMeta

from .helpers import elect, log_of, make_core, settings

MEMBERS = Membership(members=tuple(Member(id=i, address=f"{i}:1") for i in ("a", "b", "c")))


def snapshot_message(
    *, index: int = 10, term: int = 2, offset: int = 0, data: bytes = b"", done: bool = True
) -> InstallSnapshot:
    return InstallSnapshot(
        term=3,
        leader_id="b",
        last_included_index=index,
        last_included_term=term,
        membership=MEMBERS,
        offset=offset,
        data=data,
        done=done,
    )


def responses(core: RaftCore) -> list[InstallSnapshotResponse]:
    return [m for _, m in core.take_ready().messages if isinstance(m, InstallSnapshotResponse)]


def test_follower_assembles_chunks_and_installs_only_when_complete() -> None:
    """Reference: Figure 13 (InstallSnapshot RPC, receiver steps 2-5)."""
    core = make_core("a", log=log_of(1, 1))
    core.handle_message("b", snapshot_message(data=b"abc", done=False), 0.0)
    assert responses(core)[0].next_offset == 3
    assert core.take_restore() is None  # nothing installed from a partial snapshot
    core.handle_message("b", snapshot_message(offset=3, data=b"def", done=True), 0.0)
    ready = core.take_ready()
    assert ready.snapshot is not None and ready.snapshot[1] == b"abcdef"
    answer = next(m for _, m in ready.messages if isinstance(m, InstallSnapshotResponse))
    assert answer.done and answer.next_offset == 6
    restore = core.take_restore()
    assert restore is not None and restore[0].index == 10
    assert core.commit_index == core.applied_index == 10


def test_chunk_at_the_wrong_offset_asks_the_leader_to_resume() -> None:
    """Reference: Figure 13 step 3: a chunk must continue what the follower holds."""
    core = make_core("a")
    core.handle_message("b", snapshot_message(data=b"abc", done=False), 0.0)
    core.take_ready()
    core.handle_message("b", snapshot_message(offset=6, data=b"ghi", done=True), 0.0)
    (answer,) = responses(core)
    assert not answer.done and answer.next_offset == 3
    assert core.take_restore() is None


def test_snapshot_that_the_log_contains_keeps_the_entries_after_it() -> None:
    """Reference: Figure 13 step 6: retain log entries following the snapshot's last entry."""
    core = make_core("a", log=log_of(1, 1, 2, 2, 2))
    core.take_ready()
    core.handle_message("b", snapshot_message(index=3, term=2, data=b"s"), 0.0)
    assert core.log.last_index == 5
    assert core.log.term_at(5) == 2
    assert core.commit_index == 3


def test_snapshot_that_conflicts_with_the_log_discards_it() -> None:
    """Reference: Figure 13 step 7: otherwise discard the entire log."""
    core = make_core("a", log=log_of(1, 1, 1, 1, 1, 1))
    core.handle_message("b", snapshot_message(index=4, term=2, data=b"s"), 0.0)
    assert core.log.last_index == 4
    assert core.log.first_index == 5
    assert core.log.term_at(4) == 2
    ready = core.take_ready()
    assert ready.first_index == 5 and ready.entries == ()  # storage drops the stale suffix
    assert ready.compact_through == 4


def test_snapshot_older_than_the_commit_index_is_acknowledged_without_installing() -> None:
    core = make_core("a", log=log_of(1, 1, 1))
    core.handle_message(
        "b",
        AppendEntries(
            term=3, leader_id="b", prev_log_index=3, prev_log_term=1, entries=(), leader_commit=3
        ),
        0.0,
    )
    core.take_ready()
    core.handle_message("b", snapshot_message(index=2, term=1, data=b"x"), 0.0)
    (answer,) = responses(core)
    assert answer.done
    assert core.take_restore() is None


def test_leader_sends_the_snapshot_to_a_follower_behind_its_compaction_point() -> None:
    """Reference: §7: the leader sends a snapshot when the next entry was discarded."""
    core = make_core("a", log=log_of(1, 1, 1, 1, 1, 1, 1, 1), trailing_entries=0)
    core.persisted_index = core.log.last_index
    elect(core)
    core.on_persisted(core.log.last_index, core.current_term)
    core.commit_index = core.applied_index = 8
    meta = SnapshotMeta(index=8, term=1, membership=MEMBERS, size=5)
    assert core.on_snapshot_saved(meta) == 8
    probe = core.replicate("b")
    assert isinstance(probe, AppendEntries) and probe.prev_log_index == 8
    # The follower's log is empty: its rejection points before the compaction point.
    core.handle_message(
        "b",
        AppendEntriesResponse(
            term=core.current_term, success=False, reject_index=8, conflict_index=1
        ),
        0.0,
    )
    request = core.replicate("b")
    assert isinstance(request, SnapshotNeeded)
    assert (request.offset, request.meta) == (0, meta)
    chunk = core.snapshot_chunk("b", meta, 0, b"12345")
    assert chunk is not None and chunk.done and chunk.last_included_index == 8
    assert core.replicate("b") is None  # one chunk in flight at a time
    core.handle_message(
        "b",
        InstallSnapshotResponse(
            term=core.current_term, last_included_index=8, next_offset=5, done=True
        ),
        0.0,
    )
    progress = core.progress("b")
    assert progress is not None and progress.match_index == 8
    following = core.replicate("b")
    assert isinstance(following, AppendEntries) and following.prev_log_index == 8


def test_compaction_keeps_trailing_entries() -> None:
    core = make_core("a", log=log_of(*[1] * 20), trailing_entries=5)
    core.commit_index = core.applied_index = 20
    meta = core.snapshot_meta_at(20)
    assert core.on_snapshot_saved(meta) == 15
    assert core.log.first_index == 16
    assert core.on_snapshot_saved(meta) is None  # not newer: nothing to do


def test_compaction_keeps_at_most_trailing_bytes_of_entries() -> None:
    """One batch entry can hold a thousand commands: counting entries alone let a node keep
    a thousand such entries (a GiB of 1 KiB commands) behind every snapshot."""
    log = [Entry(term=1, index=index, data=bytes(100)) for index in range(1, 21)]
    core = make_core("a", log=log, trailing_entries=10, trailing_bytes=350)
    core.commit_index = core.applied_index = 20
    assert core.on_snapshot_saved(core.snapshot_meta_at(20)) == 17  # 3 entries of 100 bytes
    assert core.log.first_index == 18

    core = make_core("a", log=log, trailing_entries=2, trailing_bytes=10_000)
    core.commit_index = core.applied_index = 20
    assert core.on_snapshot_saved(core.snapshot_meta_at(20)) == 18  # the count binds first

    core = make_core("a", log=log, trailing_entries=10, trailing_bytes=99)
    core.commit_index = core.applied_index = 20
    assert core.on_snapshot_saved(core.snapshot_meta_at(20)) == 20  # not even one fits


@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=30),
    snapshot_at=st.integers(1, 30),
    keep_entries=st.integers(0, 40),
    keep_bytes=st.integers(0, 400),
)
def test_trailing_entries_kept_are_the_longest_suffix_within_both_limits(
    sizes: list[int], snapshot_at: int, keep_entries: int, keep_bytes: int
) -> None:
    log = [Entry(term=1, index=i, data=bytes(size)) for i, size in enumerate(sizes, start=1)]
    snapshot_at = min(snapshot_at, len(log))
    core = make_core("a", log=log, trailing_entries=keep_entries, trailing_bytes=keep_bytes)
    core.commit_index = core.applied_index = snapshot_at
    through = core.on_snapshot_saved(core.snapshot_meta_at(snapshot_at))
    first_kept = (through if through is not None else 0) + 1
    kept = sizes[first_kept - 1 : snapshot_at]
    assert len(kept) <= keep_entries and sum(kept) <= keep_bytes
    if first_kept > 1:  # one more entry would break a limit
        more = sizes[first_kept - 2 : snapshot_at]
        assert len(more) > keep_entries or sum(more) > keep_bytes


def test_recovery_keeps_entries_behind_the_snapshot_only_if_they_match_it() -> None:
    entries = log_of(1, 1, 1, 2, 2, 2)
    meta = SnapshotMeta(index=4, term=2, membership=MEMBERS)
    core = RaftCore(
        node_id="a",
        settings=settings(),
        hard_state=HardState(current_term=2),
        snapshot=meta,
        entries=entries,
    )
    assert core.log.last_index == 6 and core.commit_index == 4
    stale = SnapshotMeta(index=4, term=3, membership=MEMBERS)
    core = RaftCore(node_id="a", settings=settings(), snapshot=stale, entries=entries)
    assert core.log.last_index == 4 and core.log.first_index == 5  # the stale log is ignored
    with pytest.raises(ValueError, match="entries missing"):
        RaftCore(node_id="a", settings=settings(), snapshot=meta, entries=log_of(2, start=7))
