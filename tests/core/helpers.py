"""Builders for tests of the pure core, and a tiny deterministic in-memory cluster of cores.

The cluster plays the driver's part as DESIGN.md §2 prescribes: every Ready is written to the
node's ``Disk`` before its messages are queued, and AppendEntries built by ``replicate`` are
queued at once (the leader may send before its own copy is durable, dissertation §10.2.1).
Queued messages wait in one FIFO list, ``Cluster.queue``, until the test delivers or drops
them: nothing happens on its own, and there is no clock but ``Cluster.now``.

While it runs, the cluster checks Election Safety (one leader per term) and State Machine
Safety (every node applies the same entry at each index), and each disk checks that a Ready
never leaves a gap in the stored log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tinyraft_trio._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
)
from tinyraft_trio._core._state import CoreSettings, RaftCore, Ready
from tinyraft_trio._core._types import Entry, HardState, Index, NodeId, Role, Term

ELECTION_TIMEOUT = 1.0
"""Every test core uses this election timeout; ``now`` values are measured against it."""

M = TypeVar("M")


# ---------------------------------------------------------------------- single cores


def settings(**overrides: Any) -> CoreSettings:
    return CoreSettings(election_timeout=ELECTION_TIMEOUT, **overrides)


def log_of(*terms: Term, start: Index = 1) -> list[Entry]:
    """Entries with these terms at ``start``, ``start + 1``, ...; each one's data is unique."""
    return [
        Entry(term=term, index=index, data=f"{index}@{term}".encode())
        for index, term in enumerate(terms, start=start)
    ]


def make_core(
    node_id: NodeId = "a",
    voters: Iterable[NodeId] = ("a", "b", "c"),
    *,
    term: Term = 0,
    voted_for: NodeId | None = None,
    log: Sequence[Entry] = (),
    **overrides: Any,
) -> RaftCore:
    """A core restarted from storage holding this hard state and log (a follower)."""
    return RaftCore(
        node_id=node_id,
        voters=voters,
        settings=settings(**overrides),
        hard_state=HardState(current_term=term, voted_for=voted_for),
        entries=log,
    )


def terms_of(core: RaftCore) -> list[Term]:
    """The term of every entry in the core's log, from index 1."""
    return [core.log.entry(index).term for index in range(1, core.log.last_index + 1)]


def sent(ready: Ready, kind: type[M]) -> list[tuple[NodeId, M]]:
    """The messages of ``kind`` in a Ready, with their destinations."""
    return [(to, message) for to, message in ready.messages if isinstance(message, kind)]


def reply(core: RaftCore, sender: NodeId, message: Message, now: float = 0.0) -> Ready:
    """Feed one message to ``core`` and return the Ready it produced."""
    core.handle_message(sender, message, now)
    return core.take_ready()


def only_reply(core: RaftCore, sender: NodeId, message: Message, now: float = 0.0) -> Message:
    """Feed one message to ``core`` and return its single answer (which must go to sender)."""
    ready = reply(core, sender, message, now)
    assert len(ready.messages) == 1, ready.messages
    to, answer = ready.messages[0]
    assert to == sender
    return answer


def append_entries(
    *,
    term: Term,
    prev: tuple[Index, Term] = (0, 0),
    entries: Sequence[Entry] = (),
    commit: Index = 0,
    leader: NodeId = "b",
) -> AppendEntries:
    return AppendEntries(
        term=term,
        leader_id=leader,
        prev_log_index=prev[0],
        prev_log_term=prev[1],
        entries=tuple(entries),
        leader_commit=commit,
    )


def vote_request(
    *,
    term: Term,
    candidate: NodeId = "b",
    last: tuple[Index, Term] = (0, 0),
    pre_vote: bool = False,
    transfer: bool = False,
) -> RequestVote:
    return RequestVote(
        term=term,
        candidate_id=candidate,
        last_log_index=last[0],
        last_log_term=last[1],
        pre_vote=pre_vote,
        transfer=transfer,
    )


def elect(core: RaftCore, now: float = 0.0) -> Ready:
    """Make ``core`` leader by feeding it every peer's grant (pre-votes too, if enabled).

    Returns the Ready taken once it leads; its own log is then reported persisted.
    """
    core.election_timeout()
    while core.role is not Role.LEADER:
        requests = sent(core.take_ready(), RequestVote)
        assert requests, "the core asked for no votes"
        for peer, request in requests:
            grant = RequestVoteResponse(
                term=request.term, vote_granted=True, pre_vote=request.pre_vote
            )
            core.handle_message(peer, grant, now)
    ready = core.take_ready()
    core.on_persisted(core.log.last_index, core.log.last_term)
    return ready


def acknowledge(leader: RaftCore, peer: NodeId, append: AppendEntries, now: float = 0.0) -> None:
    """Feed ``leader`` the follower's success for ``append`` (as if it matched)."""
    match = append.prev_log_index + len(append.entries)
    leader.handle_message(
        peer,
        AppendEntriesResponse(term=append.term, success=True, match_index=match),
        now,
    )


def replicate(leader: RaftCore, peer: NodeId, *, heartbeat: bool = False) -> AppendEntries | None:
    """``leader.replicate(peer)``, which (with no snapshots here) is an AppendEntries or None."""
    message = leader.replicate(peer, heartbeat=heartbeat)
    assert message is None or isinstance(message, AppendEntries), message
    return message


def drain_appends(leader: RaftCore, peer: NodeId) -> list[AppendEntries]:
    """Every AppendEntries ``leader.replicate(peer)`` hands out before it returns None."""
    appends = []
    while (append := replicate(leader, peer)) is not None:
        appends.append(append)
        assert len(appends) < 10_000, "replicate() never stops"
    return appends


# ---------------------------------------------------------------------- the mini cluster


@dataclass
class Disk:
    """What a node has made durable: the hard state and the log."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)

    def write(self, ready: Ready) -> None:
        assert getattr(ready, "snapshot", None) is None, "the mini cluster takes no snapshots"
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state
        if ready.first_index is not None:
            assert ready.first_index <= len(self.entries) + 1, "a Ready left a gap in the log"
            del self.entries[ready.first_index - 1 :]
            self.entries.extend(ready.entries)
            for position, entry in enumerate(self.entries, start=1):
                assert entry.index == position, "the stored log is not contiguous"


@dataclass(frozen=True, eq=False)
class Envelope:
    sender: NodeId
    to: NodeId
    message: Message


Match = Callable[[Envelope], bool]


def to(*nodes: NodeId) -> Match:
    """Matches messages addressed to any of ``nodes``."""
    return lambda envelope: envelope.to in nodes


def of_type(kind: type) -> Match:
    return lambda envelope: isinstance(envelope.message, kind)


class Cluster:
    """Cores wired by a network of plain lists; the test decides what is delivered, and when."""

    def __init__(
        self,
        ids: Sequence[NodeId] = ("a", "b", "c"),
        *,
        logs: dict[NodeId, Sequence[Entry]] | None = None,
        hard_states: dict[NodeId, HardState] | None = None,
        **overrides: Any,
    ) -> None:
        self.ids = list(ids)
        self.settings = settings(**overrides)
        logs = logs or {}
        hard_states = hard_states or {}
        self.disks = {
            node: Disk(hard_states.get(node, HardState()), list(logs.get(node, ())))
            for node in self.ids
        }
        self.cores = {node: self._boot(node) for node in self.ids}
        self.now = 0.0
        self.queue: list[Envelope] = []
        self.down: set[NodeId] = set()
        self.cut: set[frozenset[NodeId]] = set()
        # Per node, the entries it applied since it last (re)started.
        self.applied: dict[NodeId, list[Entry]] = {node: [] for node in self.ids}
        # Every entry any node ever applied, by index (State Machine Safety).
        self.committed: dict[Index, Entry] = {}
        # Who led each term (Election Safety).
        self.leaders: dict[Term, NodeId] = {}
        # How many times each node was restarted.
        self.incarnation: dict[NodeId, int] = dict.fromkeys(self.ids, 0)

    def __getitem__(self, node: NodeId) -> RaftCore:
        return self.cores[node]

    def _boot(self, node: NodeId) -> RaftCore:
        disk = self.disks[node]
        return RaftCore(
            node_id=node,
            voters=self.ids,
            settings=self.settings,
            hard_state=disk.hard_state,
            entries=list(disk.entries),
        )

    # ------------------------------------------------------------------ faults

    def reachable(self, sender: NodeId, receiver: NodeId) -> bool:
        return (
            sender not in self.down
            and receiver not in self.down
            and frozenset((sender, receiver)) not in self.cut
        )

    def isolate(self, node: NodeId) -> None:
        """Cut every link of ``node`` (messages already queued on them are lost on delivery)."""
        for other in self.ids:
            if other != node:
                self.cut.add(frozenset((node, other)))

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, node: NodeId) -> None:
        """Stop ``node``; what it has not written to its disk is gone."""
        self.down.add(node)

    def restart(self, node: NodeId) -> None:
        """Start ``node`` again from its disk: a follower that remembers only its hard state."""
        self.down.discard(node)
        self.incarnation[node] += 1
        self.cores[node] = self._boot(node)
        self.applied[node] = []

    # ------------------------------------------------------------------ driving

    def flush(self, node: NodeId) -> None:
        """Do a driver's work for ``node``: persist, then send, then apply."""
        core = self.cores[node]
        self._observe(node)
        while core.has_ready:
            ready = core.take_ready()
            self.disks[node].write(ready)
            if ready.entries:
                last = ready.entries[-1]
                core.on_persisted(last.index, last.term)
            for receiver, message in ready.messages:
                self.send(node, receiver, message)
        for entry in core.take_committed():
            assert entry.index == len(self.applied[node]) + 1, "applied out of order"
            self.applied[node].append(entry)
            first = self.committed.setdefault(entry.index, entry)
            assert first == entry, f"State Machine Safety: {node} applied {entry}, not {first}"
        self._observe(node)

    def _observe(self, node: NodeId) -> None:
        core = self.cores[node]
        if core.role is Role.LEADER:
            holder = self.leaders.setdefault(core.current_term, node)
            assert holder == node, f"Election Safety: {holder} and {node} lead {core.current_term}"

    def send(self, sender: NodeId, receiver: NodeId, message: Message) -> None:
        if self.reachable(sender, receiver):
            self.queue.append(Envelope(sender, receiver, message))

    def up(self) -> list[NodeId]:
        return [node for node in self.ids if node not in self.down]

    def leaders_now(self) -> list[NodeId]:
        return [node for node in self.up() if self.cores[node].role is Role.LEADER]

    def replicate(
        self, leader: NodeId, *, heartbeat: bool = False, peers: Iterable[NodeId] | None = None
    ) -> None:
        """Queue whatever AppendEntries ``leader`` has for its peers (or just ``peers``)."""
        core = self.cores[leader]
        for peer in core.peers if peers is None else peers:
            message = replicate(core, peer, heartbeat=heartbeat)
            while message is not None:
                self.send(leader, peer, message)
                message = replicate(core, peer)

    def deliver(self, match: Match | None = None, *, limit: int | None = None) -> int:
        """Deliver the queued messages that ``match`` (all by default), oldest first.

        Messages that do not match stay queued, in order. Returns how many were taken.
        """
        batch: list[Envelope] = []
        rest: list[Envelope] = []
        for envelope in self.queue:
            if (match is None or match(envelope)) and (limit is None or len(batch) < limit):
                batch.append(envelope)
            else:
                rest.append(envelope)
        self.queue = rest
        for envelope in batch:
            if self.reachable(envelope.sender, envelope.to):
                self.cores[envelope.to].handle_message(envelope.sender, envelope.message, self.now)
                self.flush(envelope.to)
        return len(batch)

    def drop(self, match: Match | None = None) -> list[Envelope]:
        """Remove (lose) the queued messages that ``match`` (all by default)."""
        dropped = [e for e in self.queue if match is None or match(e)]
        self.queue = [e for e in self.queue if not (match is None or match(e))]
        return dropped

    def stabilize(self, *, heartbeat: bool = False, max_rounds: int = 500) -> None:
        """Replicate and deliver until no node has anything more to say."""
        for node in self.up():
            self.flush(node)
        for _ in range(max_rounds):
            for leader in self.leaders_now():
                self.replicate(leader, heartbeat=heartbeat)
            heartbeat = False
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("the cluster did not settle")

    def timeout(self, node: NodeId) -> None:
        """``node``'s election timer fires."""
        self.cores[node].election_timeout()
        self.flush(node)

    def elect(self, node: NodeId) -> None:
        """Let every lease lapse, fire ``node``'s election timer, and run to quiet."""
        self.now += 2 * ELECTION_TIMEOUT
        self.timeout(node)
        self.stabilize()
        assert self.cores[node].role is Role.LEADER, f"{node} was not elected"

    def propose(self, leader: NodeId, data: bytes) -> Entry:
        entry = self.cores[leader].propose(data)
        self.flush(leader)
        return entry

    def check_log_matching(self) -> None:
        """Log Matching: two logs holding an entry with the same index and term agree up to it."""
        for a in self.ids:
            for b in self.ids:
                log_a, log_b = self.cores[a].log, self.cores[b].log
                for index in range(1, min(log_a.last_index, log_b.last_index) + 1):
                    if log_a.term_at(index) == log_b.term_at(index):
                        assert log_a.slice(1, index + 1) == log_b.slice(1, index + 1), (a, b, index)
