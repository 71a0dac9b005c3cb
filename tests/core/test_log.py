"""RaftLog: lookups, bounded slices, truncation and the unstable suffix handed to storage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyraft_trio._core._log import RaftLog
from tinyraft_trio._core._types import Entry

from .helpers import log_of


def test_empty_log_has_the_zero_sentinel() -> None:
    """Reference: Figure 2 (log indexes start at 1; prevLogIndex 0 with term 0 always matches)."""
    log = RaftLog()
    assert (log.first_index, log.last_index, log.last_term) == (1, 0, 0)
    assert log.term_at(0) == 0
    assert log.term_at(1) is None


def test_term_at_inside_and_outside_the_log() -> None:
    """Reference: §5.3 (the consistency check looks up the term at prevLogIndex)."""
    log = RaftLog(log_of(1, 1, 2, 3))
    assert [log.term_at(index) for index in range(0, 6)] == [0, 1, 1, 2, 3, None]
    assert log.term_at(-1) is None
    assert log.last_index == 4
    assert log.last_term == 3
    assert log.entry(3) == Entry(term=2, index=3, data=b"3@2")
    with pytest.raises(IndexError):
        log.entry(5)
    with pytest.raises(IndexError):
        log.entry(0)


def test_entries_must_be_contiguous() -> None:
    """Reference: Figure 2 (a log is a gap-free sequence of entries)."""
    with pytest.raises(ValueError):
        RaftLog([Entry(term=1, index=1), Entry(term=1, index=3)])
    log = RaftLog(log_of(1, 1))
    with pytest.raises(ValueError):
        log.append([Entry(term=1, index=4)])
    with pytest.raises(ValueError):
        log.append([Entry(term=1, index=2)])
    # A run with a gap is refused as a whole: nothing of it is appended.
    with pytest.raises(ValueError):
        log.append([Entry(term=1, index=3), Entry(term=1, index=5)])
    assert log.last_index == 2


def test_slice_is_half_open_and_clamped() -> None:
    """Reference: §5.3 (the leader sends entries next_index .. last)."""
    log = RaftLog(log_of(1, 1, 2, 2, 3))
    assert [e.index for e in log.slice(2, 4)] == [2, 3]
    assert [e.index for e in log.slice(0, 100)] == [1, 2, 3, 4, 5]
    assert log.slice(6, 10) == []
    assert log.slice(3, 3) == []


def test_slice_bounded_by_bytes_always_includes_the_first_entry() -> None:
    """Reference: §10.2 batching (a byte bound must never stall replication)."""
    big = [Entry(term=1, index=i, data=b"x" * 100) for i in range(1, 6)]
    log = RaftLog(big)
    # Each entry counts len(data) + 16 = 116 bytes.
    assert [e.index for e in log.slice(1, 6, max_bytes=1)] == [1]
    assert [e.index for e in log.slice(1, 6, max_bytes=116)] == [1]
    assert [e.index for e in log.slice(1, 6, max_bytes=232)] == [1, 2]
    assert [e.index for e in log.slice(1, 6, max_bytes=347)] == [1, 2]
    assert [e.index for e in log.slice(2, 6, max_bytes=348)] == [2, 3, 4]
    assert [e.index for e in log.slice(1, 6, max_bytes=10_000)] == [1, 2, 3, 4, 5]


def test_truncate_from_drops_the_suffix_and_marks_it_for_rewrite() -> None:
    """Reference: §5.3 (delete the existing entry and all that follow it) and Ready ordering."""
    log = RaftLog(log_of(1, 1, 1, 1))
    assert not log.has_unstable
    log.truncate_from(3)
    assert log.last_index == 2
    assert log.has_unstable
    log.append(log_of(2, 2, start=3))
    first, entries = log.take_unstable()
    assert first == 3
    assert [(e.index, e.term) for e in entries] == [(3, 2), (4, 2)]
    assert not log.has_unstable
    assert log.take_unstable() == (5, [])


def test_take_unstable_rewinds_to_the_lowest_truncation() -> None:
    """Reference: §5.3 (storage must drop every entry at or after the first conflict)."""
    log = RaftLog(log_of(1, 1, 1, 1, 1))
    log.truncate_from(4)
    log.append(log_of(2, 2, 2, start=4))
    log.truncate_from(2)  # a second, lower conflict before the driver took the first one
    log.append(log_of(3, start=2))
    first, entries = log.take_unstable()
    assert first == 2
    assert [(e.index, e.term) for e in entries] == [(2, 3)]


def test_take_unstable_after_plain_appends() -> None:
    """Reference: §5.3 (new entries go to storage before they are acknowledged)."""
    log = RaftLog(log_of(1))
    log.append(log_of(1, 2, start=2))
    first, entries = log.take_unstable()
    assert first == 2
    assert [e.index for e in entries] == [2, 3]


def test_truncating_everything() -> None:
    """Reference: §5.3 (a follower may have to discard its whole log)."""
    log = RaftLog(log_of(1, 1))
    log.truncate_from(1)
    assert (log.last_index, log.last_term) == (0, 0)
    assert log.take_unstable() == (1, [])


@pytest.mark.parametrize(
    ("candidate_last", "expected"),
    [
        ((5, 3), True),  # same last term, same length
        ((6, 3), True),  # same last term, longer
        ((4, 3), False),  # same last term, shorter
        ((1, 4), True),  # higher last term wins even when much shorter
        ((100, 2), False),  # lower last term loses even when much longer
        ((0, 0), False),  # empty log against a non-empty one
    ],
)
def test_is_up_to_date_compares_last_term_then_length(
    candidate_last: tuple[int, int], expected: bool
) -> None:
    """Reference: §5.4.1 (compare the terms of the last entries, then the lengths)."""
    log = RaftLog(log_of(1, 2, 2, 3, 3))
    assert log.is_up_to_date(*candidate_last) is expected


def test_empty_log_accepts_any_candidate() -> None:
    """Reference: §5.4.1."""
    assert RaftLog().is_up_to_date(0, 0)


def test_last_index_of_term_and_first_index_of_term() -> None:
    """Reference: §5.3 (the conflict hint names a term and the first index holding it)."""
    log = RaftLog(log_of(1, 1, 3, 3, 3, 5))
    assert log.last_index_of_term(3, at_or_before=6) == 5
    assert log.last_index_of_term(3, at_or_before=4) == 4
    assert log.last_index_of_term(1, at_or_before=6) == 2
    assert log.last_index_of_term(2, at_or_before=6) is None
    assert log.last_index_of_term(4, at_or_before=6) is None
    assert log.first_index_of_term(5) == 3
    assert log.first_index_of_term(3) == 3
    assert log.first_index_of_term(2) == 1
    assert log.first_index_of_term(6) == 6


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(min_value=1, max_value=4)),
            st.tuples(st.just("truncate"), st.integers(min_value=1, max_value=30)),
            st.tuples(st.just("take"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_storage_following_take_unstable_mirrors_the_log(
    operations: list[tuple[str, int]],
) -> None:
    """Reference: §5.3 and Figure 2 (what storage holds after each handover is exactly the
    log: truncations are never lost, even several between two handovers)."""
    log = RaftLog(log_of(1, 1))
    disk = log.slice(1, 3)
    term = 1
    for operation, amount in operations:
        if operation == "append":
            term += 1
            log.append(log_of(*[term] * amount, start=log.last_index + 1))
        elif operation == "truncate" and amount <= log.last_index + 1:
            log.truncate_from(amount)
        elif operation == "take":
            first, entries = log.take_unstable()
            assert first <= len(disk) + 1
            disk = disk[: first - 1] + entries
            assert disk == log.slice(1, log.last_index + 1)
    first, entries = log.take_unstable()
    disk = disk[: first - 1] + entries
    assert disk == log.slice(1, log.last_index + 1)
