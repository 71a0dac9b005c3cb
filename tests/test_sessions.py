"""The session table (exactly-once commands, dissertation §6.3) against a plain model of it."""

from __future__ import annotations

import random
from collections.abc import Iterable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyraft_trio import _sessions
from tinyraft_trio._client import RaftClient
from tinyraft_trio._sessions import (
    KEPT_RESULTS,
    SessionTable,
    StaleSequenceError,
    encode_command,
)
from tinyraft_trio.testing import RecordingStateMachine


class _ModelTable:
    """What the table must do, the plainest way: every rule a pass over the results."""

    def __init__(self) -> None:
        self.results: dict[int, object] = {}
        self.first_outstanding = 0
        self.applied: list[bytes] = []

    def apply(self, sequence: int, first_outstanding: int, command: bytes) -> object:
        if first_outstanding:
            self.first_outstanding = max(self.first_outstanding, first_outstanding)
            for old in [s for s in self.results if s < self.first_outstanding]:
                del self.results[old]
        if sequence in self.results:
            return self.results[sequence]
        # A client that says what it waits for has all of that kept (up to a larger bound).
        kept = _sessions.MAX_KEPT_RESULTS if self.first_outstanding else KEPT_RESULTS
        if sequence < self.first_outstanding or (
            self.results and sequence < min(self.results) and len(self.results) >= kept
        ):
            return "stale"
        self.applied.append(command)
        self.results[sequence] = ("ok", len(self.applied))
        if len(self.results) > kept:
            del self.results[min(self.results)]
        return self.results[sequence]


def _apply(table: SessionTable, machine: RecordingStateMachine, seq: int, first: int) -> object:
    data = encode_command("c1", seq, first, 1000, f"cmd-{seq}".encode())
    try:
        outcome, _ = table.apply(data, machine)
    except StaleSequenceError:
        return "stale"
    return outcome


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, KEPT_RESULTS + 300), st.integers(0, KEPT_RESULTS + 300)),
        max_size=3 * KEPT_RESULTS,
    ),
    st.integers(0, 3 * KEPT_RESULTS),
)
def test_the_table_answers_and_forgets_as_the_model_does(
    commands: list[tuple[int, int]], restore_at: int
) -> None:
    """Out-of-order and repeated sequences, first_outstanding moving on (or not given), more
    results than are kept, and a snapshot restored midway: each answer, and what was applied,
    must be the model's."""
    table, machine, model = SessionTable(timeout_ms=10**9), RecordingStateMachine(), _ModelTable()
    with pytest.MonkeyPatch.context() as patch:
        # Small enough for the generated sequences to reach both bounds.
        patch.setattr(_sessions, "MAX_KEPT_RESULTS", KEPT_RESULTS + 150)
        _check_against_model(table, machine, model, commands, restore_at)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            # Mostly > 0: the client's next command, maybe past a few that come later.
            # Otherwise (<= 0): a late command, this far behind the newest: one skipped
            # before (sent through a follower, which forwards it), or a retry.
            st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(-60, 0)),
            st.one_of(st.none(), st.integers(0, 100), st.integers(0, KEPT_RESULTS + 300)),
        ),
        max_size=3 * KEPT_RESULTS,
    ),
    st.integers(0, 3 * KEPT_RESULTS),
)
def test_commands_mostly_in_order_with_some_late_answer_as_the_model_does(
    steps: list[tuple[int, int | None]], restore_at: int
) -> None:
    """The common arrival order, which the table keeps without a heap's comparisons, with
    late commands mixed in, which it must still forget oldest first: each answer, and what
    was applied, must be the model's. (``lag``: how far first_outstanding trails.)"""
    commands, newest = [], 0
    for step, lag in steps:
        newest += max(step, 0)
        sequence = max(1, newest + min(step, 0)) if step <= 0 else newest
        commands.append((sequence, 0 if lag is None else max(0, newest - lag)))
    table, machine, model = SessionTable(timeout_ms=10**9), RecordingStateMachine(), _ModelTable()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sessions, "MAX_KEPT_RESULTS", KEPT_RESULTS + 150)
        _check_against_model(table, machine, model, commands, restore_at)


def _check_against_model(
    table: SessionTable,
    machine: RecordingStateMachine,
    model: _ModelTable,
    commands: list[tuple[int, int]],
    restore_at: int,
) -> None:
    for position, (sequence, first_outstanding) in enumerate(commands):
        if position == restore_at:
            restored = SessionTable(timeout_ms=10**9)
            restored.restore(msgpack.unpackb(msgpack.packb(table.snapshot())))
            table = restored
        got = _apply(table, machine, sequence, first_outstanding)
        want = model.apply(sequence, first_outstanding, f"cmd-{sequence}".encode())
        assert got == want, (position, sequence, first_outstanding)
        # The same results kept, not only the same answers so far: one kept too long (or
        # forgotten too soon) would show only when its command came again.
        session = table._sessions.get("c1")
        assert set(session.results if session else ()) == set(model.results), position
    assert machine.commands == model.applied


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.integers(0, 400)),  # (client, time step in ms)
        max_size=120,
    ),
    st.integers(0, 120),
)
def test_sessions_expire_exactly_when_idle_past_the_timeout(
    commands: list[tuple[str, int]], restore_at: int
) -> None:
    """Five clients whose commands come at uneven log times (a timeout of 1,000 ms, steps of
    up to 400): after each command, the sessions kept must be exactly those seen within the
    timeout, as a pass over all of them finds, with a snapshot restored midway. The table
    skips that pass while nothing can have expired; this fails if it skips one it needed."""
    table, machine = SessionTable(timeout_ms=1000), RecordingStateMachine()
    last_seen: dict[str, int] = {}
    clock = 0
    for position, (client, step) in enumerate(commands):
        if position == restore_at:
            restored = SessionTable(timeout_ms=1000)
            restored.restore(msgpack.unpackb(msgpack.packb(table.snapshot())))
            table = restored
        clock += step
        last_seen = {c: seen for c, seen in last_seen.items() if seen >= clock - 1000}
        _, ran = table.apply(encode_command(client, 1, 0, clock, b"x"), machine)
        assert ran is (client not in last_seen)  # a forgotten session runs its command again
        last_seen[client] = clock
        assert sorted(row[0] for row in table.snapshot()[1]) == sorted(last_seen)


def test_a_result_that_cannot_be_sent_is_an_error_on_every_node() -> None:
    class Unsendable(RecordingStateMachine):
        def apply(self, command: bytes) -> object:
            super().apply(command)
            return object() if command == b"bad" else None

    table, machine = SessionTable(timeout_ms=1000), Unsendable()
    outcome, _ = table.apply(encode_command("c", 1, 0, 0, b"bad"), machine)
    assert outcome == ("error", ["TypeError", "the result cannot be sent: not msgpack-encodable"])
    assert table.apply(encode_command("c", 2, 0, 0, b"good"), machine)[0] == ("ok", None)


def test_thousands_of_results_are_forgotten_in_order_as_the_client_moves_on() -> None:
    table, machine = SessionTable(timeout_ms=10**9), RecordingStateMachine()
    for sequence in range(1, 5001):
        assert _apply(table, machine, sequence, max(1, sequence - 900)) == ("ok", sequence)
    assert _apply(table, machine, 4000, 4100) == "stale"  # forgotten: below first_outstanding
    assert _apply(table, machine, 4200, 4100) == ("ok", 4200)  # kept: answered, not re-applied
    assert len(machine.commands) == 5000


def test_late_commands_of_a_client_with_thousands_in_flight_are_applied_not_refused() -> None:
    """A client with 3,000 commands in flight, the first 500 of which reach the leader last
    (sent to a follower first, then redirected): each is applied once, none refused as
    stale, since the client says it still waits for them. Before, only the newest 1,024
    results were kept and those 500 failed with StaleSequenceError."""
    table, machine = SessionTable(timeout_ms=10**9), RecordingStateMachine()
    arrival = list(range(501, 3001)) + list(range(1, 501))
    answers = {sequence: _apply(table, machine, sequence, 1) for sequence in arrival}
    assert "stale" not in answers.values()
    assert sorted(machine.commands) == sorted(f"cmd-{s}".encode() for s in range(1, 3001))
    assert _apply(table, machine, 7, 1) == answers[7]  # a retry gets its first answer back


def test_a_client_past_the_larger_bound_has_its_late_commands_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_sessions, "MAX_KEPT_RESULTS", 2000)
    table, machine = SessionTable(timeout_ms=10**9), RecordingStateMachine()
    for sequence in range(501, 3001):
        _apply(table, machine, sequence, 1)
    assert _apply(table, machine, 1, 1) == "stale"  # older than the 2,000 kept: maybe applied
    assert len(machine.commands) == 2500


def test_a_restored_table_forgets_the_oldest_results_first() -> None:
    table, machine = SessionTable(timeout_ms=10**9), RecordingStateMachine()
    for sequence in [5, 3, 9, 1, 7, 2, 8, 4, 6, 10]:
        _apply(table, machine, sequence, 0)
    restored = SessionTable(timeout_ms=10**9)
    restored.restore(msgpack.unpackb(msgpack.packb(table.snapshot())))
    assert _apply(restored, machine, 11, 4) == ("ok", 11)  # forgets 1, 2 and 3
    assert _apply(restored, machine, 3, 0) == "stale"
    assert _apply(restored, machine, 4, 0) == ("ok", 8)  # kept: its first answer
    assert _apply(restored, machine, 9, 7) == ("ok", 3)  # forgets 4, 5 and 6
    assert [_apply(restored, machine, s, 0) for s in (6, 7)] == ["stale", ("ok", 5)]
    assert len(machine.commands) == 11


@pytest.mark.parametrize("finished_first", [[], [2, 3], [1], [1, 2, 3, 4]])
def test_the_client_numbers_the_lowest_command_still_running(finished_first: list[int]) -> None:
    client = _client_with_calls_running(range(1, 6))
    for sequence in finished_first:
        client._outstanding.discard(sequence)
    assert client._first_outstanding() == min(client._outstanding)


def test_a_long_call_at_the_front_does_not_keep_every_finished_number() -> None:
    client = _client_with_calls_running([1])
    for sequence in range(2, 10_000):
        client._outstanding.add(sequence)
        client._outstanding_order.append(sequence)
        assert client._first_outstanding() == 1
        client._outstanding.discard(sequence)
    assert len(client._outstanding_order) < 100


def _client_with_calls_running(sequences: Iterable[int]) -> RaftClient:
    client = RaftClient(
        None,  # type: ignore[arg-type]
        ["127.0.0.1:1"],
        client_id="c1",
        timeout=1.0,
        rng=random.Random(0),
    )
    for sequence in sequences:
        client._outstanding.add(sequence)
        client._outstanding_order.append(sequence)
    return client
