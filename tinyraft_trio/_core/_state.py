"""RaftCore: the Raft algorithm as a deterministic state machine, with no I/O.

The driver feeds it inputs (messages, timer expiries, proposals, the clock's reading) and
drains its outputs with ``take_ready``, in etcd/raft's order: persist the hard state and the
new entries first, then send the messages, then apply the committed entries. Messages that
acknowledge log entries or votes are only ever sent through ``take_ready``, so nothing is
promised before it is durable. AppendEntries built by ``replicate`` may leave the leader
before its own copy is durable (dissertation §10.2.1); the leader counts itself towards a
commit only for entries the driver reports persisted through ``on_persisted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._log import RaftLog
from ._membership import ConfigurationHistory
from ._messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from ._progress import Progress, ReplicationState
from ._quorum import VoteOutcome, committed_index, majority, tally
from ._types import (
    Entry,
    EntryKind,
    HardState,
    Index,
    Member,
    Membership,
    NodeId,
    Role,
    SnapshotMeta,
    Term,
    build_entry,
)


class SafetyViolation(AssertionError):
    """A Raft invariant was about to be broken: a bug, never a runtime condition."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CoreSettings:
    """The knobs of the algorithm itself (the driver keeps the ones about time and I/O)."""

    election_timeout: float
    max_entries_per_append: int = 2048
    max_bytes_per_append: int = 1024 * 1024
    max_inflight_appends: int = 64
    snapshot_chunk_bytes: int = 1024 * 1024
    trailing_entries: int = 1024
    trailing_bytes: int = 4 * 1024 * 1024
    pre_vote: bool = True
    check_quorum: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Ready:
    """Work for the driver, to be done in this order.

    1. Save ``snapshot`` (if any), then let storage compact through ``compact_through``.
    2. Persist ``hard_state`` (if not None) and the log change: drop every stored entry at
       or after ``first_index`` and write ``entries`` (when ``first_index`` is not None).
    3. Send ``messages`` — only once steps 1 and 2 are durable.
    Committed entries are fetched separately with ``RaftCore.take_committed``.
    """

    snapshot: tuple[SnapshotMeta, bytes] | None
    """A snapshot received from the leader: save it durably first of all."""
    compact_through: Index | None
    """After the snapshot is saved, storage may drop entries up to here."""
    hard_state: HardState | None
    first_index: Index | None
    entries: tuple[Entry, ...]
    messages: tuple[tuple[NodeId, Message], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotNeeded:
    """``replicate`` asks the driver for bytes of the snapshot to send to ``peer``.

    The driver reads ``size`` bytes at ``offset`` of the snapshot ``meta`` describes and
    passes them to ``RaftCore.snapshot_chunk``.
    """

    meta: SnapshotMeta
    offset: int
    size: int


class RaftCore:
    """One node's Raft state and the rules of Figure 2, plus pre-vote and check-quorum.

    Every method runs to completion synchronously; ``now`` arguments are readings of the
    driver's clock, used only to measure leader contact.
    """

    def __init__(
        self,
        *,
        node_id: NodeId,
        settings: CoreSettings,
        voters: Iterable[NodeId] | None = None,
        membership: Membership | None = None,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        self.id = node_id
        self.settings = settings
        if membership is None:
            ids = sorted(voters or ())
            membership = Membership(members=tuple(Member(id=i, address="") for i in ids))
        if snapshot is not None:
            membership = snapshot.membership
        hard_state = hard_state or HardState()
        # Persistent state (Figure 2); written by the driver before any dependent message.
        self.current_term: Term = hard_state.current_term
        self.voted_for: NodeId | None = hard_state.voted_for
        # The latest durable snapshot; Invariant: snapshot.index <= commit_index.
        self.snapshot = snapshot
        self.log = _recover_log(snapshot, entries)
        self._configs = ConfigurationHistory(membership, snapshot.index if snapshot else 0)
        self._configs.appended(self.log.slice(self.log.first_index, self.log.last_index + 1))
        # The latest configuration in the log, committed or not (§4.1).
        self.membership = self._configs.latest
        self.voters: frozenset[NodeId] = self.membership.voters
        # Volatile state.
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        start = snapshot.index if snapshot is not None else 0
        # Invariant: commit_index only grows, and never exceeds an index a quorum persisted.
        self.commit_index: Index = start
        # Invariant: applied_index <= commit_index; entries up to it went to the applier.
        self.applied_index: Index = start
        # Invariant: every entry up to persisted_index is durable in this node's storage.
        self.persisted_index: Index = self.log.last_index
        self._handed_hard_state = hard_state
        self._messages: list[tuple[NodeId, Message]] = []
        self._votes: dict[NodeId, bool] = {}
        self._pre_campaign = False
        self._progress: dict[NodeId, Progress] = {}
        self._last_leader_contact: float | None = None
        self._timer_reset = False
        # A snapshot arriving from the leader, chunk by chunk: (index, term) and the bytes.
        self._incoming: tuple[tuple[Index, Term], bytearray] | None = None
        self._received_snapshot: tuple[SnapshotMeta, bytes] | None = None
        self._restore: tuple[SnapshotMeta, bytes] | None = None
        self._compact_through: Index | None = None
        # Leadership transfer in progress (§3.10): no new commands meanwhile.
        self.transfer_target: NodeId | None = None
        # ReadIndex (§6.4): every AppendEntries carries the current round, and answers echo
        # it; a round is confirmed once a majority of voters answered it (or a later one).
        self._read_round = 0

    # ------------------------------------------------------------------ driver interface

    @property
    def hard_state(self) -> HardState:
        return HardState(current_term=self.current_term, voted_for=self.voted_for)

    @property
    def has_ready(self) -> bool:
        return (
            bool(self._messages)
            or self.log.has_unstable
            or self._hard_state_changed()
            or self._received_snapshot is not None
        )

    def _hard_state_changed(self) -> bool:
        """Whether term or vote differ from the last hard state handed to the driver
        (compared field by field: the driver asks after every message)."""
        handed = self._handed_hard_state
        return self.current_term != handed.current_term or self.voted_for != handed.voted_for

    def take_ready(self) -> Ready:
        """Hand the pending persistence work and messages to the driver."""
        hard_state: HardState | None = None
        if self._hard_state_changed():
            hard_state = self._handed_hard_state = self.hard_state
        first_index: Index | None = None
        entries: list[Entry] = []
        if self.log.has_unstable:
            first_index, entries = self.log.take_unstable()
        messages, self._messages = self._messages, []
        snapshot, self._received_snapshot = self._received_snapshot, None
        compact_through, self._compact_through = self._compact_through, None
        return Ready(
            snapshot=snapshot,
            compact_through=compact_through,
            hard_state=hard_state,
            first_index=first_index,
            entries=tuple(entries),
            messages=tuple(messages),
        )

    def on_persisted(self, index: Index, term: Term) -> None:
        """The driver made entries up to ``index`` (whose term was ``term``) durable."""
        if index > self.persisted_index and self.log.term_at(index) == term:
            self.persisted_index = index
            if self.role is Role.LEADER:
                self._maybe_commit()

    def take_committed(self, limit: int = 4096) -> list[Entry]:
        """Committed entries not yet handed out, in order; each is handed out exactly once."""
        high = min(self.commit_index, self.applied_index + limit)
        if high <= self.applied_index:
            return []
        entries = self.log.slice(self.applied_index + 1, high + 1)
        self.applied_index = high
        return entries

    def take_timer_reset(self) -> bool:
        """Whether the election timer must restart (a leader was heard, or a vote granted)."""
        reset, self._timer_reset = self._timer_reset, False
        return reset

    def take_restore(self) -> tuple[SnapshotMeta, bytes] | None:
        """A snapshot from the leader to restore the state machine from, before applying on.

        Entries after it come from ``take_committed`` as usual.
        """
        restore, self._restore = self._restore, None
        return restore

    def snapshot_meta_at(self, index: Index) -> SnapshotMeta:
        """The metadata of a snapshot of the state after applying entries up to ``index``."""
        if not self.log.first_index - 1 <= index <= self.applied_index:
            raise ValueError(f"no snapshot possible at {index}")
        term = self.log.term_at(index)
        assert term is not None
        return SnapshotMeta(index=index, term=term, membership=self._configs.at(index))

    def on_snapshot_saved(self, meta: SnapshotMeta) -> Index | None:
        """A snapshot of this node's own state machine is durable: compact the log (§7).

        Returns the index through which storage may now drop entries, if any. Keeps up to
        ``trailing_entries`` (and ``trailing_bytes`` of data) behind the snapshot so slightly
        lagging followers need no snapshot.
        """
        if self.snapshot is not None and meta.index <= self.snapshot.index:
            return None
        self.snapshot = meta
        settings = self.settings
        kept_from = self.log.trailing_start(
            meta.index, settings.trailing_entries, settings.trailing_bytes
        )
        through = min(kept_from - 1, self.log.handed_index)
        if through <= self.log.first_index - 1:
            return None
        self.log.compact(through)
        self._configs.compacted(through)
        return through

    def progress(self, peer: NodeId) -> Progress | None:
        """The leader's progress record for ``peer`` (None when not leader)."""
        return self._progress.get(peer)

    @property
    def peers(self) -> list[NodeId]:
        """The other members (voters and learners), sorted: everyone the leader replicates to."""
        return sorted(self.membership.ids - {self.id})

    @property
    def voter_peers(self) -> list[NodeId]:
        """The other voters, sorted: everyone a candidate asks for a vote."""
        return sorted(self.voters - {self.id})

    @property
    def known_ids(self) -> frozenset[NodeId]:
        """Every node any configuration in this log names: whom to accept messages from.

        Wider than the configuration in force: an uncommitted change that removed the next
        leader must not stop this node from hearing that leader, which will overwrite it.
        """
        return self._configs.known_ids

    @property
    def membership_index(self) -> Index:
        """The index of the entry that set the configuration in force (0: the initial one)."""
        return self._configs.latest_index

    @property
    def membership_change_pending(self) -> bool:
        """Whether the configuration in force is not yet committed."""
        return self._configs.latest_index > self.commit_index

    # ------------------------------------------------------------------ inputs

    def handle_message(self, sender: NodeId, message: Message, now: float) -> None:
        """Process one message from ``sender``."""
        if isinstance(message, AppendEntries):
            self.handle_append_entries(sender, message, now)
        elif isinstance(message, AppendEntriesResponse):
            self.handle_append_entries_response(sender, message, now)
        elif isinstance(message, RequestVote):
            self.handle_request_vote(sender, message, now)
        elif isinstance(message, RequestVoteResponse):
            self.handle_request_vote_response(sender, message)
        elif isinstance(message, TimeoutNow):
            self.handle_timeout_now(sender, message)
        elif isinstance(message, InstallSnapshot):
            self.handle_install_snapshot(sender, message, now)
        elif isinstance(message, InstallSnapshotResponse):
            self.handle_install_snapshot_response(sender, message, now)

    def election_timeout(self) -> None:
        """The election timer expired: start a pre-vote, or an election (§5.2, §9.6)."""
        if self.role is Role.LEADER or self.id not in self.voters:
            return
        self._last_leader_contact = None
        self.leader_id = None
        if self.settings.pre_vote:
            self._start_pre_campaign()
        else:
            self._campaign(transfer=False)

    def check_quorum(self, now: float) -> bool:
        """Leader only: step down unless a majority was heard from within an election timeout.

        Reference: dissertation §6.2 (a leader that cannot reach a majority steps down).
        """
        if self.role is not Role.LEADER:
            return False
        active = {self.id}
        for peer, progress in self._progress.items():
            contact = progress.last_contact
            if contact is not None and now - contact < self.settings.election_timeout:
                active.add(peer)
        if len(active & self.voters) >= majority(len(self.voters)):
            return True
        self.become_follower(self.current_term, None)
        return False

    def propose(self, data: bytes, kind: EntryKind = EntryKind.COMMAND) -> Entry:
        """Leader only: append a new entry of the current term to the log (§5.3)."""
        (entry,) = self.propose_many(((data, kind),))
        return entry

    def propose_many(self, proposals: Iterable[tuple[bytes, EntryKind]]) -> list[Entry]:
        """Leader only: ``propose`` each ``(data, kind)`` in order; the new entries."""
        if self.role is not Role.LEADER:
            raise RuntimeError("propose() called on a node that is not the leader")
        term = self.current_term
        first = self.log.last_index + 1
        build = build_entry
        entries = [
            build(term, index, kind, data) for index, (data, kind) in enumerate(proposals, first)
        ]
        self.log.append(entries)
        if self._configs.appended(entries):
            self._configuration_changed()
        return entries

    def start_read(self) -> tuple[int, Index] | None:
        """Leader only: begin a linearizable read (ReadIndex, dissertation §6.4).

        Returns (round, read_index), or None while this leader has not yet committed an
        entry of its term (its commit index may then lag the cluster's). The read may run
        once ``read_confirmed(round)`` and the state machine applied ``read_index``.
        """
        if self.role is not Role.LEADER:
            raise RuntimeError("start_read() called on a node that is not the leader")
        if self.log.term_at(self.commit_index) != self.current_term:
            return None
        self._read_round += 1
        return self._read_round, self.commit_index

    def next_read_round(self) -> int:
        """Leader only: number a new round without a read (lease mode renews with these)."""
        self._read_round += 1
        return self._read_round

    def read_confirmed(self, read_round: int) -> bool:
        """Whether a majority of voters answered AppendEntries of ``read_round`` or later in
        this term: then no other leader can have been elected before the read began."""
        if self.role is not Role.LEADER:
            return False
        confirmed = {self.id} | {
            peer for peer, progress in self._progress.items() if progress.read_round >= read_round
        }
        return len(confirmed & self.voters) >= majority(len(self.voters))

    def propose_membership(self, membership: Membership) -> Entry:
        """Leader only: append a configuration change, in force at once (§4.1).

        One change at a time: refused while the previous one is uncommitted, and until an
        entry of this leader's term is committed (the fix of §4.1 for single-server changes).
        The caller makes sure the change adds or removes at most one voter.
        """
        if self.role is not Role.LEADER:
            raise RuntimeError("propose_membership() called on a node that is not the leader")
        if self.membership_change_pending:
            raise ValueError("a membership change is already in progress")
        if self.log.term_at(self.commit_index) != self.current_term:
            raise ValueError("the leader has not committed an entry of its term yet")
        return self.propose(membership.to_bytes(), EntryKind.CONFIG)

    def transfer_leadership(self, target: NodeId) -> None:
        """Leader only: hand leadership to ``target`` once its log is up to date (§3.10)."""
        if self.role is not Role.LEADER:
            raise RuntimeError("transfer_leadership() called on a node that is not the leader")
        if target == self.id or target not in self.voters:
            raise ValueError(f"{target!r} is not another voter")
        self.transfer_target = target
        self._maybe_send_timeout_now()

    def abort_transfer(self) -> None:
        """Give up a leadership transfer (it timed out): accept commands again."""
        self.transfer_target = None

    def replicate(
        self, peer: NodeId, *, heartbeat: bool = False, commit: bool = True
    ) -> AppendEntries | SnapshotNeeded | None:
        """Leader only: the next AppendEntries for ``peer``, or None if nothing is due.

        ``heartbeat`` asks for a message even if nothing new is pending (§5.2). ``commit``
        false withholds a message that would only advance the follower's commit index: the
        driver may let that news ride on the next entries instead (see ``commit_behind``).
        In PROBE one
        message at a time is outstanding; in REPLICATE entries stream optimistically, at most
        ``max_inflight_appends`` messages ahead of the follower's acknowledgements. A follower
        that needs compacted entries gets the snapshot instead: ``SnapshotNeeded`` asks the
        driver for the next chunk's bytes.
        """
        if self.role is not Role.LEADER:
            return None
        progress = self._progress.get(peer)
        if progress is None:
            return None
        if progress.state is ReplicationState.SNAPSHOT or (
            self.log.term_at(progress.next_index - 1) is None
        ):
            return self._next_snapshot_chunk(progress, heartbeat)
        message = self._next_append(progress, heartbeat, commit)
        if message is not None:
            progress.commit_sent = message.leader_commit
        return message

    def snapshot_chunk(
        self, peer: NodeId, meta: SnapshotMeta, offset: int, data: bytes
    ) -> InstallSnapshot | None:
        """Wrap snapshot bytes the driver read (after ``SnapshotNeeded``) for ``peer``."""
        progress = self._progress.get(peer)
        if (
            self.role is not Role.LEADER
            or progress is None
            or progress.state is not ReplicationState.SNAPSHOT
            or self.snapshot != meta
            or progress.snapshot_index != meta.index
            or progress.snapshot_offset != offset
        ):
            return None  # things moved on while the driver was reading
        progress.chunk_sent = True
        return InstallSnapshot(
            term=self.current_term,
            leader_id=self.id,
            last_included_index=meta.index,
            last_included_term=meta.term,
            membership=meta.membership,
            offset=offset,
            data=data,
            done=offset + len(data) >= meta.size,
        )

    def _next_snapshot_chunk(self, progress: Progress, heartbeat: bool) -> SnapshotNeeded | None:
        snapshot = self.snapshot
        if snapshot is None:
            return None  # cannot happen: the log is only compacted behind a snapshot
        if progress.state is not ReplicationState.SNAPSHOT or (
            progress.snapshot_index != snapshot.index
        ):
            progress.become_snapshot(snapshot.index)
        elif progress.chunk_sent and not heartbeat:
            return None
        size = min(self.settings.snapshot_chunk_bytes, snapshot.size - progress.snapshot_offset)
        return SnapshotNeeded(meta=snapshot, offset=progress.snapshot_offset, size=max(size, 0))

    def commit_behind(self, peer: NodeId) -> bool:
        """Leader only: whether ``peer`` was not yet sent the current commit index."""
        progress = self._progress.get(peer)
        return (
            self.role is Role.LEADER
            and progress is not None
            and progress.state is ReplicationState.REPLICATE
            and progress.commit_sent < self.commit_index
        )

    def _next_append(
        self, progress: Progress, heartbeat: bool, commit: bool
    ) -> AppendEntries | None:
        prev_log_index = progress.next_index - 1
        if progress.state is ReplicationState.PROBE:
            if progress.probe_sent and not heartbeat:
                return None
            progress.probe_sent = True
            return self._append_entries(prev_log_index, self._entries_from(progress.next_index))
        if (
            progress.next_index <= self.log.last_index
            and len(progress.inflight) < self.settings.max_inflight_appends
        ):
            entries = self._entries_from(progress.next_index)
            progress.next_index = entries[-1].index + 1
            progress.inflight.append(entries[-1].index)
            return self._append_entries(prev_log_index, entries)
        if heartbeat or (commit and progress.commit_sent < self.commit_index):
            return self._append_entries(prev_log_index, ())
        return None

    # ------------------------------------------------------------------ message handlers

    def handle_request_vote(self, sender: NodeId, message: RequestVote, now: float) -> None:
        """Grant or refuse a vote or pre-vote (§5.2, §5.4.1, §9.6; Figure 2 RequestVote RPC)."""
        if message.term > self.current_term and not message.transfer and self._in_lease(now):
            # Leader stickiness (§4.2.3): a live leader exists, so this candidate is disruptive.
            return
        if message.term > self.current_term and not message.pre_vote:
            self.become_follower(message.term, None)
        log_ok = self.log.is_up_to_date(message.last_log_index, message.last_log_term)
        if message.pre_vote:
            granted = message.term > self.current_term and log_ok
            reply_term = message.term if granted else self.current_term
        else:
            granted = (
                message.term == self.current_term
                and self.voted_for in (None, message.candidate_id)
                and log_ok
            )
            reply_term = self.current_term
            if granted:
                self.voted_for = message.candidate_id
                self._timer_reset = True
        self._send(
            sender,
            RequestVoteResponse(term=reply_term, vote_granted=granted, pre_vote=message.pre_vote),
        )

    def handle_request_vote_response(self, sender: NodeId, message: RequestVoteResponse) -> None:
        """Count a vote or pre-vote; win with a majority of voters (§5.2)."""
        if not message.vote_granted and message.term > self.current_term:
            self.become_follower(message.term, None)
            return
        if message.pre_vote:
            # A grant echoes the term we would campaign in; a refusal carries the voter's term.
            expected_term = self.current_term + 1 if message.vote_granted else self.current_term
            if not self._pre_campaign or message.term != expected_term:
                return
            self._votes[sender] = message.vote_granted
            outcome = tally(self.voters, self._votes)
            if outcome == VoteOutcome.WON:
                self._campaign(transfer=False)
            elif outcome == VoteOutcome.LOST:
                self._pre_campaign = False
            return
        if message.term > self.current_term:
            self.become_follower(message.term, None)
            return
        if self.role is not Role.CANDIDATE or message.term != self.current_term:
            return
        self._votes[sender] = message.vote_granted
        outcome = tally(self.voters, self._votes)
        if outcome == VoteOutcome.WON:
            self.become_leader()
        elif outcome == VoteOutcome.LOST:
            self.become_follower(self.current_term, None)

    def handle_append_entries(self, sender: NodeId, message: AppendEntries, now: float) -> None:
        """Accept entries that match the log, refuse those that don't (§5.3, Figure 2)."""
        if message.term < self.current_term:
            # A stale leader: the reply's term makes it step down.
            self._send(
                sender,
                AppendEntriesResponse(
                    term=self.current_term,
                    success=False,
                    reject_index=message.prev_log_index,
                    context=message.context,
                ),
            )
            return
        self._follow(message.term, message.leader_id, now)

        prev_log_index = message.prev_log_index
        entries = message.entries
        if prev_log_index < self.log.first_index - 1:
            # The prefix up to our snapshot is committed, so it matches: skip it.
            skip = self.log.first_index - 1 - prev_log_index
            entries = entries[skip:]
            prev_log_index = self.log.first_index - 1
            prev_log_term = self.log.term_at(prev_log_index)
        else:
            prev_log_term = message.prev_log_term
        local_term = self.log.term_at(prev_log_index)
        if local_term is None:
            self._reject(sender, message, conflict_index=self.log.last_index + 1, conflict_term=0)
            return
        if local_term != prev_log_term:
            self._reject(
                sender,
                message,
                conflict_index=self.log.first_index_of_term(prev_log_index),
                conflict_term=local_term,
            )
            return

        match_index = prev_log_index + len(entries)
        self._merge_entries(entries)
        if message.leader_commit > self.commit_index:
            self.commit_index = max(self.commit_index, min(message.leader_commit, match_index))
        self._send(
            sender,
            AppendEntriesResponse(
                term=self.current_term,
                success=True,
                match_index=match_index,
                context=message.context,
            ),
        )

    def handle_append_entries_response(
        self, sender: NodeId, message: AppendEntriesResponse, now: float
    ) -> None:
        """Advance or rewind a follower's progress; commit what a majority holds (§5.3, §5.4.2)."""
        progress = self._answering_progress(sender, message.term, now, message.context)
        if progress is None:
            return
        if message.success:
            advanced = progress.acknowledge(message.match_index)
            if (
                progress.state is ReplicationState.PROBE
                and message.match_index >= progress.match_index
            ):
                progress.become_replicate()
            if advanced:
                self._maybe_commit()
                if sender == self.transfer_target:
                    self._maybe_send_timeout_now()
            return
        if progress.state is ReplicationState.REPLICATE:
            if message.reject_index <= progress.match_index:
                return  # stale: that point is already known to match
        elif message.reject_index != progress.next_index - 1:
            return  # stale: not the answer to the probe outstanding
        next_index = message.conflict_index
        if message.conflict_term > 0:
            last_of_term = self.log.last_index_of_term(message.conflict_term, message.reject_index)
            if last_of_term is not None:
                next_index = last_of_term + 1
        progress.state = ReplicationState.PROBE
        progress.inflight.clear()
        progress.probe_sent = False
        progress.next_index = max(min(next_index, message.reject_index), progress.match_index + 1)

    def handle_install_snapshot(self, sender: NodeId, message: InstallSnapshot, now: float) -> None:
        """Receive the leader's snapshot chunk by chunk; install it when complete (Figure 13)."""
        index, term = message.last_included_index, message.last_included_term
        if message.term < self.current_term:
            self._send(
                sender,
                InstallSnapshotResponse(
                    term=self.current_term, last_included_index=index, next_offset=0, done=False
                ),
            )
            return
        self._follow(message.term, message.leader_id, now)
        if index <= self.commit_index:
            # Everything it covers is already committed here; nothing to install.
            self._incoming = None
            self._answer_snapshot(sender, index, message.offset + len(message.data), done=True)
            return
        if message.offset == 0:
            self._incoming = ((index, term), bytearray())
        incoming = self._incoming
        if incoming is None or incoming[0] != (index, term) or message.offset != len(incoming[1]):
            held = len(incoming[1]) if incoming is not None and incoming[0] == (index, term) else 0
            self._answer_snapshot(sender, index, held, done=False)
            return
        buffer = incoming[1]
        buffer += message.data
        if not message.done:
            self._answer_snapshot(sender, index, len(buffer), done=False)
            return
        self._incoming = None
        meta = SnapshotMeta(index=index, term=term, membership=message.membership, size=len(buffer))
        self._install_snapshot(meta, bytes(buffer))
        self._answer_snapshot(sender, index, len(buffer), done=True)

    def handle_install_snapshot_response(
        self, sender: NodeId, message: InstallSnapshotResponse, now: float
    ) -> None:
        """Advance a snapshot transfer; once installed, resume with the log after it."""
        progress = self._answering_progress(sender, message.term, now)
        if progress is None:
            return
        if progress.state is not ReplicationState.SNAPSHOT:
            return
        if message.last_included_index != progress.snapshot_index:
            return  # about another snapshot: stale
        if message.done:
            progress.acknowledge(message.last_included_index)
            progress.become_probe()
            progress.next_index = progress.match_index + 1
            self._maybe_commit()
            return
        progress.snapshot_offset = message.next_offset
        progress.chunk_sent = False

    def handle_timeout_now(self, sender: NodeId, message: TimeoutNow) -> None:
        """The leader hands over leadership: campaign at once, past leader stickiness (§3.10)."""
        if message.term != self.current_term or self.id not in self.voters:
            return
        if self.role is Role.LEADER:
            return
        self._campaign(transfer=True)

    # ------------------------------------------------------------------ role transitions

    def become_follower(self, term: Term, leader_id: NodeId | None) -> None:
        """Step down (or stay follower), adopting ``term`` if it is newer (§5.1)."""
        if term > self.current_term:
            self.current_term = term
            self.voted_for = None
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self._pre_campaign = False
        self._votes = {}
        self._progress = {}
        self._timer_reset = True
        self.transfer_target = None

    def become_leader(self) -> None:
        """Take office: reset every follower's progress and append a no-op (§5.4.2, §8)."""
        self.role = Role.LEADER
        self.leader_id = self.id
        self._pre_campaign = False
        self._votes = {}
        self._progress = {peer: Progress(self.log.last_index + 1) for peer in self.peers}
        self.propose(b"", EntryKind.NOOP)
        self._maybe_commit()

    # ------------------------------------------------------------------ internals

    def _answering_progress(
        self, sender: NodeId, term: Term, now: float, context: int = 0
    ) -> Progress | None:
        """The progress of a follower answering this leader in ``term``, or None to ignore.

        A newer term deposes this node (§5.1); an older term or a non-member is stale.
        """
        if term > self.current_term:
            self.become_follower(term, None)
            return None
        if self.role is not Role.LEADER or term != self.current_term:
            return None
        progress = self._progress.get(sender)
        if progress is not None:
            progress.last_contact = now
            # Any answer in this term shows the follower still follows this leader.
            progress.read_round = max(progress.read_round, context)
        return progress

    def _follow(self, term: Term, leader_id: NodeId, now: float) -> None:
        """Accept ``leader_id`` as the leader of ``term`` (which is >= current_term)."""
        if self.role is Role.LEADER and term == self.current_term:
            raise SafetyViolation(f"{self.id}: two leaders in term {term} ({leader_id})")
        if term > self.current_term or self.role is not Role.FOLLOWER:
            self.become_follower(term, leader_id)
        self.leader_id = leader_id
        self._pre_campaign = False
        self._last_leader_contact = now
        self._timer_reset = True

    def _install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace state up to ``meta.index`` with the leader's snapshot (Figure 13, steps 6-8)."""
        if meta.index <= self.log.last_index and self.log.term_at(meta.index) == meta.term:
            # The log holds the snapshot's last entry: keep what follows it (step 6). Entries
            # not yet handed to storage stay until they are; a later snapshot compacts them.
            if meta.index <= self.log.handed_index:
                self.log.compact(meta.index)
                self._configs.compacted(meta.index)
        else:
            self.log.reset(meta.index, meta.term)  # step 7: discard the entire log
            self._configs.reset(meta.membership, meta.index)
        # self.snapshot changes only once the driver saved it (on_snapshot_saved), so a leader
        # never offers a snapshot that is not durable yet.
        self._configuration_changed()
        self.commit_index = max(self.commit_index, meta.index)
        self.applied_index = max(self.applied_index, meta.index)
        self.persisted_index = max(self.persisted_index, meta.index)
        self._received_snapshot = (meta, data)
        self._restore = (meta, data)
        self._compact_through = self.log.first_index - 1

    def _answer_snapshot(self, to: NodeId, index: Index, next_offset: int, *, done: bool) -> None:
        self._send(
            to,
            InstallSnapshotResponse(
                term=self.current_term,
                last_included_index=index,
                next_offset=next_offset,
                done=done,
            ),
        )

    def _configuration_changed(self) -> None:
        """Put the latest configuration in force: quorums, and the leader's followers."""
        self.membership = self._configs.latest
        self.voters = self.membership.voters
        if self.role is Role.LEADER:
            for peer in self.peers:
                if peer not in self._progress:
                    self._progress[peer] = Progress(self.log.last_index + 1)
            for peer in list(self._progress):
                if peer not in self.membership.ids:
                    del self._progress[peer]
            if self.transfer_target is not None and self.transfer_target not in self.voters:
                self.transfer_target = None

    def _maybe_send_timeout_now(self) -> None:
        target = self.transfer_target
        progress = self._progress.get(target) if target is not None else None
        if (
            target is not None
            and progress is not None
            and (progress.match_index == self.log.last_index)
        ):
            self._send(target, TimeoutNow(term=self.current_term, leader_id=self.id))

    def forget_leader(self, leader_id: NodeId) -> bool:
        """Follower: ``leader_id`` is most likely gone (its connection to us closed).

        Forget it as the leader, and stop refusing candidates on its behalf (leader
        stickiness, §4.2.3), so a new leader can be elected without waiting out a whole
        election timeout. Safety never rests on this: a leader that is in fact alive keeps
        its place while a majority still hears from it (the others refuse the candidate).
        Returns whether anything changed (``leader_id`` led this follower).
        """
        if self.role is not Role.FOLLOWER or self.leader_id is None or self.leader_id != leader_id:
            return False
        self.leader_id = None
        self._last_leader_contact = None
        return True

    def _in_lease(self, now: float) -> bool:
        if not self.settings.check_quorum:
            return False
        if self.role is Role.LEADER:
            return True
        return (
            self.leader_id is not None
            and self._last_leader_contact is not None
            and now - self._last_leader_contact < self.settings.election_timeout
        )

    def _start_pre_campaign(self) -> None:
        self.role = Role.FOLLOWER
        self._pre_campaign = True
        self._votes = {self.id: True}
        if tally(self.voters, self._votes) == VoteOutcome.WON:
            self._campaign(transfer=False)
            return
        self._request_votes(term=self.current_term + 1, pre_vote=True, transfer=False)

    def _campaign(self, *, transfer: bool) -> None:
        """Become a candidate in a new term and ask every voter for its vote (§5.2)."""
        self.current_term += 1
        self.voted_for = self.id
        self.role = Role.CANDIDATE
        self.leader_id = None
        self._pre_campaign = False
        self._votes = {self.id: True}
        self._timer_reset = True
        if tally(self.voters, self._votes) == VoteOutcome.WON:
            self.become_leader()
            return
        self._request_votes(term=self.current_term, pre_vote=False, transfer=transfer)

    def _request_votes(self, *, term: Term, pre_vote: bool, transfer: bool) -> None:
        request = RequestVote(
            term=term,
            candidate_id=self.id,
            last_log_index=self.log.last_index,
            last_log_term=self.log.last_term,
            pre_vote=pre_vote,
            transfer=transfer,
        )
        for peer in self.voter_peers:
            self._send(peer, request)

    def _reject(
        self, sender: NodeId, message: AppendEntries, *, conflict_index: Index, conflict_term: Term
    ) -> None:
        self._send(
            sender,
            AppendEntriesResponse(
                term=self.current_term,
                success=False,
                reject_index=message.prev_log_index,
                conflict_index=conflict_index,
                conflict_term=conflict_term,
                context=message.context,
            ),
        )

    def _merge_entries(self, entries: Sequence[Entry]) -> None:
        """Append what is new; truncate only at a real conflict (Figure 2, receiver step 3-4)."""
        if not entries:
            return
        if entries[0].index == self.log.last_index + 1:
            self.log.append(entries)
            if self._configs.appended(entries):
                self._configuration_changed()
            return
        for position, entry in enumerate(entries):
            local_term = self.log.term_at(entry.index)
            if local_term == entry.term:
                continue
            if local_term is not None:
                if entry.index <= self.commit_index:
                    raise SafetyViolation(
                        f"{self.id}: would overwrite committed entry {entry.index}"
                    )
                self.log.truncate_from(entry.index)
                self.persisted_index = min(self.persisted_index, entry.index - 1)
                truncated = self._configs.truncated(entry.index)
            else:
                truncated = False
            self.log.append(entries[position:])
            if self._configs.appended(entries[position:]) or truncated:
                self._configuration_changed()
            return

    def _maybe_commit(self) -> None:
        """Commit the highest index a majority holds, if it is of this term (§5.4.2)."""
        matches = {peer: progress.match_index for peer, progress in self._progress.items()}
        matches[self.id] = min(self.persisted_index, self.log.last_index)
        index = committed_index(self.voters, matches)
        if index > self.commit_index and self.log.term_at(index) == self.current_term:
            self.commit_index = index
            if self.id not in self.voters and not self.membership_change_pending:
                # This leader's removal (or demotion) is committed: hand over (§4.2.2).
                self.become_follower(self.current_term, None)

    def _entries_from(self, next_index: Index) -> list[Entry]:
        return self.log.slice(
            next_index,
            next_index + self.settings.max_entries_per_append,
            max_bytes=self.settings.max_bytes_per_append,
        )

    def _append_entries(self, prev_log_index: Index, entries: Sequence[Entry]) -> AppendEntries:
        return AppendEntries(
            term=self.current_term,
            leader_id=self.id,
            prev_log_index=prev_log_index,
            prev_log_term=self.log.term_at(prev_log_index) or 0,
            entries=tuple(entries),
            leader_commit=self.commit_index,
            context=self._read_round,
        )

    def _send(self, to: NodeId, message: Message) -> None:
        self._messages.append((to, message))


def _recover_log(snapshot: SnapshotMeta | None, entries: Sequence[Entry]) -> RaftLog:
    """Build the in-memory log from what storage returned, reconciled with its snapshot.

    Entries kept behind the snapshot are used only if they contain the snapshot's last entry
    with its term (then, by Log Matching, they are the committed history); otherwise the
    stored log is stale (a crash between saving a received snapshot and truncating the log)
    and only the snapshot counts.
    """
    if snapshot is None:
        return RaftLog(entries)
    entries = list(entries)
    if not entries:
        return RaftLog((), snapshot_index=snapshot.index, snapshot_term=snapshot.term)
    first = entries[0].index
    if first > snapshot.index + 1:
        raise ValueError(
            f"log starts at {first}, after snapshot index {snapshot.index} + 1: entries missing"
        )
    if first == snapshot.index + 1:
        return RaftLog(entries, snapshot_index=snapshot.index, snapshot_term=snapshot.term)
    position = snapshot.index - first
    if position >= len(entries) or entries[position].term != snapshot.term:
        return RaftLog((), snapshot_index=snapshot.index, snapshot_term=snapshot.term)
    # The first stored entry becomes the compaction point: its term is known, the one before
    # it is not.
    return RaftLog(entries[1:], snapshot_index=first, snapshot_term=entries[0].term)
