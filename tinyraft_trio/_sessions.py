"""Client sessions: each client command applied once, however often it is retried (§6.3).

A client numbers its commands. The replicated session table keeps, per client, the results
of its recent commands, so a command that arrives again (the client retried after losing an
answer) gets its first result back instead of being applied twice. The table is part of the
replicated state: every node builds the same one from the log, and snapshots carry it.
Sessions idle for longer than the session timeout, measured in log time (the leader's clock,
written into each entry, so every node agrees), are forgotten.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Any

import msgpack

from ._state_machine import StateMachine
from ._wire import bin_header, packb

KEPT_RESULTS = 1024
"""Results kept per client when it does not say which it still waits for."""

MAX_KEPT_RESULTS = 65536
"""Results kept per client that says which it still waits for (``first_outstanding``): all
of those, up to this many. Fewer would refuse as stale the late arrivals of a client with
more commands in flight (a command redirected from a follower comes after thousands sent
straight to the leader); a client with more than this in flight may see that happen."""

Outcome = tuple[str, Any]
"""("ok", result) or ("error", [exception type name, message]): what a command produced."""


_unpackb = msgpack.unpackb
_OK_NONE: Outcome = ("ok", None)
"""The outcome of a command that answered nothing: one shared tuple, not one per command."""


class StaleSequenceError(Exception):
    """A command whose result was already forgotten: the client retried far too late."""


@dataclass(slots=True)
class _Session:
    last_seen_ms: int
    results: dict[int, Outcome] = field(default_factory=dict)
    first_outstanding: int = 0
    order: deque[int] = field(default_factory=deque)
    """The sequences in ``results`` that came in increasing order, oldest first: a client
    numbers its commands as it sends them, so nearly all of them."""
    late: list[int] = field(default_factory=list)
    """The others (each below the newest of ``order`` when it came), as a heap. The oldest
    result is the older of the two fronts: found, and forgotten, without a pass over a
    client's thousand results, nor a heap's comparisons for every command it sends.
    Invariant: ``order`` and ``late`` hold together exactly ``results``' keys."""

    def oldest(self) -> int:
        """The lowest sequence with a result kept (there is one)."""
        order, late = self.order, self.late
        if late and (not order or late[0] < order[0]):
            return late[0]
        return order[0]

    def forget_oldest(self) -> None:
        late = self.late
        if late and late[0] == self.oldest():  # a sequence is in one of the two, never both
            del self.results[heappop(late)]
        else:
            del self.results[self.order.popleft()]


def encode_command(
    client_id: str, sequence: int, first_outstanding: int, time_ms: int, command: bytes
) -> bytes:
    """The data of a session entry in the log."""
    return packb([client_id, sequence, first_outstanding, time_ms, command])


class SessionTable:
    """The sessions of every client, applied from the log in order."""

    def __init__(self, timeout_ms: int) -> None:
        self._timeout_ms = timeout_ms
        self._sessions: dict[str, _Session] = {}
        self._clock_ms = 0
        """Log time: the latest leader time seen in an applied entry."""
        self._seen_bound_ms: float = math.inf
        """Invariant: at most every session's ``last_seen_ms``. Until the expiry horizon
        passes it, no session can have expired, and ``_expire`` need not look."""

    def apply(self, data: bytes, state_machine: StateMachine) -> tuple[Outcome, bool]:
        """Apply a session entry; return (its outcome, whether the command ran just now)."""
        # Every node runs this for every command a session client sends: the rules as in
        # the model of tests/test_sessions.py, with no call or lookup that can be saved.
        client_id, sequence, first_outstanding, time_ms, command = _unpackb(data)
        clock = self._clock_ms
        if time_ms > clock:
            self._clock_ms = clock = time_ms
        if clock - self._timeout_ms > self._seen_bound_ms:
            self._expire()
        session = self._sessions.get(client_id)
        if session is None:
            session = self._sessions[client_id] = _Session(last_seen_ms=clock)
            self._seen_bound_ms = min(self._seen_bound_ms, clock)
        session.last_seen_ms = clock
        results = session.results
        order = session.order
        floor = session.first_outstanding
        if first_outstanding > floor:
            # The client no longer waits for anything below: forget those results.
            session.first_outstanding = floor = first_outstanding
            if session.late:
                while results and session.oldest() < floor:
                    session.forget_oldest()
            else:
                while order and order[0] < floor:
                    del results[order.popleft()]
        found = results.get(sequence)  # an outcome is a tuple, never None
        if found is not None:
            return found, False
        kept = MAX_KEPT_RESULTS if floor else KEPT_RESULTS
        if sequence < floor or (results and len(results) >= kept and sequence < session.oldest()):
            raise StaleSequenceError(
                f"client {client_id!r}: command {sequence} is older than the results kept"
            )
        try:
            result = state_machine.apply(command)
        except Exception as exc:
            outcome: Outcome = ("error", [type(exc).__name__, str(exc)])
        else:
            outcome = _OK_NONE if result is None else _sendable(result)
        results[sequence] = outcome
        if not order or order[-1] < sequence:
            order.append(sequence)
        else:
            heappush(session.late, sequence)
        if len(results) > kept:
            session.forget_oldest()
        return outcome, True

    def _expire(self) -> None:
        horizon = self._clock_ms - self._timeout_ms
        if horizon <= self._seen_bound_ms:
            return  # about once per timeout a pass over the sessions, not once per command
        for client_id in [c for c, s in self._sessions.items() if s.last_seen_ms < horizon]:
            del self._sessions[client_id]
        self._bound_seen()

    def _bound_seen(self) -> None:
        self._seen_bound_ms = min(
            (s.last_seen_ms for s in self._sessions.values()), default=math.inf
        )

    def __len__(self) -> int:
        return len(self._sessions)

    def snapshot(self) -> list[Any]:
        return [
            self._clock_ms,
            [
                [
                    client_id,
                    s.last_seen_ms,
                    s.first_outstanding,
                    [[seq, kind, value] for seq, (kind, value) in s.results.items()],
                ]
                for client_id, s in self._sessions.items()
            ],
        ]

    def restore(self, state: list[Any]) -> None:
        clock_ms, sessions = state
        self._clock_ms = clock_ms
        self._sessions = {
            client_id: _Session(
                last_seen_ms=last_seen,
                first_outstanding=first_outstanding,
                results={seq: (kind, value) for seq, kind, value in results},
                order=deque(sorted(seq for seq, _, _ in results)),
            )
            for client_id, last_seen, first_outstanding, results in sessions
        }
        self._bound_seen()


def _sendable(result: object) -> Outcome:
    """The outcome of a command that returned ``result`` (not None): an error if no answer
    could carry it."""
    try:
        packb(result)
    except (TypeError, ValueError, OverflowError):
        return ("error", ["TypeError", "the result cannot be sent: not msgpack-encodable"])
    return ("ok", result)


SNAPSHOT_FORMAT = 1


def wrap_snapshot(sessions: SessionTable, state_machine_snapshot: bytes) -> bytes:
    """A node's snapshot: the session table and the user's state machine, together.

    The msgpack array ``[SNAPSHOT_FORMAT, sessions, state_machine_snapshot]``, built around
    the state machine's bytes rather than packed again: a large state is copied once, and
    does not need room for a third copy while it is packed.
    """
    length = len(state_machine_snapshot)
    if length >= 1 << 32:
        raise ValueError(f"snapshot: the state machine's snapshot is {length} bytes, over 4 GiB")
    packer = msgpack.Packer()
    head = packer.pack_array_header(3) + packer.pack(SNAPSHOT_FORMAT)
    head += packer.pack(sessions.snapshot()) + bin_header(length)
    return b"".join((head, state_machine_snapshot))


def unwrap_snapshot(data: bytes, sessions: SessionTable) -> bytes:
    """Restore the session table from ``data``; return the state machine's part."""
    try:
        version, table, user = msgpack.unpackb(data)
    except Exception:
        raise ValueError("snapshot: not a tinyraft_trio snapshot") from None
    if version != SNAPSHOT_FORMAT:
        raise ValueError(f"snapshot: unknown format {version!r}")
    sessions.restore(table)
    return bytes(user)
