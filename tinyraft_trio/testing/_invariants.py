"""Raft's safety properties (Figure 3 of the paper), checked on a running cluster."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._core._types import Entry, Index, NodeId, Term

if TYPE_CHECKING:
    from .._node import RaftNode


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold: the library has a bug."""


class SafetyChecker:
    """Watches nodes (as their observer) and checks Raft's safety properties.

    * Election Safety: at most one leader per term (checked as each leader takes office).
    * Leader Completeness: a new leader's log holds every entry applied anywhere so far.
    * State Machine Safety: no two nodes apply different entries at one index.
    * Log Matching: checked on demand by ``check_logs``.
    """

    def __init__(self) -> None:
        self.leaders: dict[Term, NodeId] = {}
        self.applied: dict[Index, Entry] = {}
        self.changes = 0

    def became_leader(self, node: RaftNode, term: Term) -> None:
        previous = self.leaders.setdefault(term, node.id)
        if previous != node.id:
            raise InvariantViolation(
                f"Election Safety: {previous} and {node.id} both led term {term}"
            )
        log = node._running_core().log
        for index, entry in self.applied.items():
            if index >= log.first_index and log.term_at(index) != entry.term:
                raise InvariantViolation(
                    f"Leader Completeness: {node.id}, leader of term {term}, lacks committed "
                    f"entry {index} (term {entry.term}); has term {log.term_at(index)}"
                )
        self.changes += 1

    def applied_entry(self, node: RaftNode, entry: Entry) -> None:
        previous = self.applied.setdefault(entry.index, entry)
        if previous != entry:
            raise InvariantViolation(
                f"State Machine Safety: {node.id} applied {entry} at {entry.index}, "
                f"another node applied {previous}"
            )
        self.changes += 1

    def check_logs(self, nodes: Iterable[RaftNode]) -> None:
        """Log Matching: two logs with an entry of the same index and term agree up to it."""
        logs = [(node.id, node._running_core().log) for node in nodes]
        for position, (id_a, log_a) in enumerate(logs):
            for id_b, log_b in logs[position + 1 :]:
                low = max(log_a.first_index, log_b.first_index)
                high = min(log_a.last_index, log_b.last_index)
                agreed = False
                for index in range(high, low - 1, -1):
                    same_term = log_a.term_at(index) == log_b.term_at(index)
                    if agreed and not same_term:
                        raise InvariantViolation(
                            f"Log Matching: {id_a} and {id_b} agree on a later entry but "
                            f"differ at index {index}"
                        )
                    if same_term and log_a.entry(index) != log_b.entry(index):
                        raise InvariantViolation(
                            f"Log Matching: {id_a} and {id_b} hold different entries of term "
                            f"{log_a.term_at(index)} at index {index}"
                        )
                    agreed = agreed or same_term
