"""RaftNode: drives a RaftCore with Trio tasks, a transport, storage and a state machine.

Task shape (one nursery per node):

    node nursery
    ├── transport.serve        listener, one task per connection, one sender per peer
    ├── election timer         a CancelScope whose deadline every heartbeat pushes back
    ├── ready loop             persist, then send (etcd's Ready order)
    ├── applier                applies committed entries, answers waiting callers
    └── leader scope           only while leader; cancelled to step down
        ├── replicator per peer  AppendEntries (a heartbeat is one with no entries)
        └── check-quorum watch

A connection's task that has delivered a burst of messages does the ready loop's and the
applier's work itself while they idle and it can be done at once (``_settle``): each task
switch saved is a scheduler round off every write's latency. Order and exclusion are the
same as in those tasks; anything slow is still theirs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Protocol, cast

import msgpack
import trio

from ._answers import (
    BatchEntryReply,
    BatchPart,
    BatchReply,
    BatchResults,
    Outcome,
    Reply,
    Waiter,
    answer,
    answer_pair,
    apply_answer,
    apply_outcome,
    error_answer,
    leader_clock_ms,
    respond,
    session_entry_data,
    submit_answer,
    submit_outcome,
    with_leader_hint,
)
from ._batching import (
    SINGLE_METHOD_OF,
    decode_batch_body,
    encode_batch_answer,
    encode_batch_body,
)
from ._config import RaftConfig, check_node_id, parse_address
from ._core._messages import Message
from ._core._state import CoreSettings, RaftCore, Ready, SnapshotNeeded
from ._core._types import (
    Entry,
    EntryKind,
    Index,
    Member,
    Membership,
    NodeId,
    Role,
    SnapshotMeta,
    Term,
)
from ._exceptions import (
    CommandFailedError,
    LeadershipLostError,
    LeadershipTransferError,
    MembershipChangeError,
    NodeClosedError,
    NotLeaderError,
    RaftError,
    StorageFailedError,
)
from ._rpc import Request, Response, TransportError
from ._sessions import (
    SessionTable,
    StaleSequenceError,
    unwrap_snapshot,
    wrap_snapshot,
)
from ._state_machine import StateMachine
from ._status import MemberStatus, NodeStatus
from ._storage import Storage
from ._transport import Transport

logger = logging.getLogger("tinyraft_trio.node")

_APPLY_BATCH = 1024
"""At most this many commands are applied between two checkpoints of the applier."""

_COMMAND, _SESSION = EntryKind.COMMAND, EntryKind.SESSION
_BATCH, _SESSION_BATCH = EntryKind.BATCH, EntryKind.SESSION_BATCH
"""For the per-entry paths: looking an enum member up on its class is slow on Python 3.11."""

_SETTLE_ROUNDS = 4
"""Rounds of persist-then-apply ``_settle`` does before leaving the rest to the tasks (a
single-node leader commits what it persists, which then needs applying)."""

_OUTCOME_OF: dict[str, Outcome] = {"apply": apply_outcome, "submit": submit_outcome}
"""The methods the leader's fast path takes, and how each turns an outcome into an answer."""

_BATCH_KINDS: dict[str, tuple[EntryKind, EntryKind, Outcome]] = {
    "apply_batch": (_BATCH, _COMMAND, apply_outcome),
    "submit_batch": (_SESSION_BATCH, _SESSION, submit_outcome),
}
"""The batches the leader's fast path takes: the kind of their one entry, the kind of an
entry per command (a batch too large for one), and how a command's outcome is answered."""


def _parse_query(body: bytes) -> tuple[bytes, bool] | None:
    """A "query" request's ``(query, stale)``, or None if its body is malformed."""
    try:
        query, stale = msgpack.unpackb(body)
    except Exception:
        return None
    if not isinstance(query, bytes) or not isinstance(stale, bool):
        return None
    return query, stale


_COMMIT_LINGER = 0.002
"""How long a follower's news of a higher commit index may wait to ride on the next entries
before it is sent alone (counted from the latest advance, give or take half of it): under a
stream of commands it never is, which halves the messages of sequential writes. Followers
apply that much later; the leader's answers are not delayed."""


class NodeObserver(Protocol):
    """Hooks for test harnesses that check invariants as a node runs (tinyraft_trio.testing)."""

    def became_leader(self, node: RaftNode, term: Term) -> None: ...

    def applied_entry(self, node: RaftNode, entry: Entry) -> None: ...

    def state_changed(self, node: RaftNode) -> None:
        """Role, term, leader or applied index changed."""


class _Signal:
    """Wakes one waiting task; setting it while nobody waits is remembered until the next wait."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class _Replicator:
    """A replicator task's inbox: woken when a heartbeat is due, a snapshot must be sent,
    or news for its follower came outside a burst of deliveries.

    News that comes in a burst (the follower's answers, new entries, a higher commit index)
    is served by ``_serve_followers`` in the delivering task, so the replicator sleeps
    through a stream of writes. It still owns the one thing that needs a timer: commit news
    that no entries carried by ``commit_deadline``.
    """

    __slots__ = ("commit_deadline", "commit_due", "heartbeat_due", "scope", "waiting", "wake")

    def __init__(self) -> None:
        self.wake = _Signal()
        self.heartbeat_due = True
        self.commit_due = False
        self.commit_deadline = math.inf
        """When to send the follower the commit index alone, if no entries carry it first."""
        self.waiting: trio.CancelScope | None = None
        """The scope of the task's wait, while it waits; its deadline is ``commit_deadline``."""
        self.scope = trio.CancelScope()

    def linger_commit(self, now: float) -> None:
        """Let the news of a higher commit index wait up to ``_COMMIT_LINGER`` from ``now``
        for entries to carry it, then have the task send it alone. The deadline moves at
        most every half linger: each move is a push onto Trio's deadline heap."""
        deadline = now + _COMMIT_LINGER
        if self.commit_deadline == math.inf or self.commit_deadline < deadline - _COMMIT_LINGER / 2:
            self.commit_deadline = deadline
            if self.waiting is not None:
                self.waiting.deadline = deadline


class RaftNode:
    """One running Raft node. Obtain it from ``open_raft_node``; do not construct it directly."""

    def __init__(
        self,
        config: RaftConfig,
        state_machine: StateMachine,
        *,
        storage: Storage,
        transport: Transport,
        observer: NodeObserver | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._state_machine = state_machine
        self._storage = storage
        self._transport = transport
        self._observer = observer
        self._random = random.Random(config.seed)
        self._wall_clock = wall_clock
        """The clock a leader writes into session entries, by which sessions expire: the wall
        clock, or a simulation's own (so that a replay writes the same log)."""
        # The initial configuration, used only if storage holds none (§ "Bootstrap" in
        # the README): the peers; else this node alone; or, when joining, nobody yet.
        self._members: dict[NodeId, str] = dict(config.peers)
        if config.bootstrap:
            self._members = {self.id: config.advertise_address}
        self._core: RaftCore | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._draining = False
        """Shutting down: requests that would be forwarded are answered with where the leader
        is instead (see ``drain``)."""
        self._wound_down = False
        """``wind_down`` has run: leaving ``open_raft_node`` does not run it again."""
        self._forwards_in_flight = 0
        self._forwards_idle = trio.Event()
        """Set when the last request being forwarded is answered."""
        self._last_redirect_at = -math.inf
        self._ignored_messages = 0
        self._last_applied: Index = 0
        self._waiters: dict[Index, Waiter | Reply | BatchPart | BatchEntryReply] = {}
        self._apply_carry: list[Entry] = []
        """Committed entries taken from the core that the last apply round left for the next."""
        self._applied_commands = 0
        """Commands applied since the last snapshot (an entry of a batch counts each)."""
        self._ready_signal = _Signal()
        self._ready_loop_waiting = False
        self._carried_ready: Ready | None = None
        """Work taken from the core that ``_flush_ready_now`` left to the ready loop."""
        self._persist_now = _inline_persister(storage)
        self._write_ended_at = -math.inf
        self._write_took = 0.0
        """When this node's last log write (made by ``_flush_ready_now`` or the ready loop)
        ended, and how long it took: see ``_disk_rested``."""
        self._now: Callable[[], float] = trio.current_time
        """``trio.current_time``; once the node runs, its clock's own method: the same value
        for one Python call instead of three, on every message delivered."""
        self._apply_signal = _Signal()
        self._applier_waiting = False
        # While the transport delivers a burst, work for the ready loop and the applier is
        # noted here rather than signalled; ``_settle`` does it (or signals) once, after.
        self._in_burst = False
        self._ready_deferred = False
        self._apply_deferred = False
        self._serve_deferred = False
        self._serve_all = False
        """With ``_serve_deferred``: new entries for every follower, not only answers."""
        self._answered: dict[NodeId, None] = {}
        """The followers whose answers came in this burst, in arrival order (a dict, not a
        set: served in an order that does not follow string hashing)."""
        self._appends_sent_at: Index = 0
        """The log's last index when the leader last sent every follower its due entries."""
        self._replicators: dict[NodeId, _Replicator] = {}
        self._leader_nursery: trio.Nursery | None = None
        self._seen_membership: Membership | None = None
        self._leader_scope: trio.CancelScope | None = None
        self._timer_scope: trio.CancelScope | None = None
        self._election_deadline = math.inf
        self._seen_role = Role.FOLLOWER
        self._seen_term: Term = 0
        self._seen_leader: NodeId | None = None
        self._seen_commit: Index = 0
        self._seen_last_index: Index = 0
        self._state_changed = trio.Event()
        self._applied_changed = trio.Event()
        # Storage: persist/compact never overlap each other, nor save/read of the snapshot;
        # the two kinds may overlap, so writing a snapshot never stalls the log.
        self._log_lock = trio.Lock()
        self._snapshot_lock = trio.Lock()
        self._snapshot_requested = False
        self._snapshot_in_progress = False
        self._snapshot_done = trio.Event()
        self._storage_error: str | None = None
        self._progress_changed = trio.Event()
        self._promoting: set[NodeId] = set()
        self._round_started: dict[int, float] = {}
        self._sessions = SessionTable(timeout_ms=int(config.session_timeout * 1000))

    # ------------------------------------------------------------------ public API

    @property
    def id(self) -> NodeId:
        assert self.config.node_id is not None  # open_raft_node gives every node an id
        return self.config.node_id

    async def apply(self, command: bytes, *, forward: bool = True) -> object:
        """Replicate ``command`` and return what the state machine's ``apply`` returned.

        On the leader: returns once the command is committed and applied here; if the state
        machine raised, that exception is raised here. On a follower (with ``forward``): the
        command goes to the leader over the Raft transport, and its result comes back (it must
        be msgpack-encodable); if the state machine raised there, ``CommandFailedError``
        names the exception.

        Raises:
            NotLeaderError: no leader is known within two election timeouts, or this node is
                a follower and ``forward`` is false (the command was not appended).
            LeadershipLostError: the outcome is unknown: leadership was lost or the node
                shut down before the command committed, or the forwarded request got no
                answer.
            NodeClosedError: the node is not running (the command was not appended).

        Cancellation: the command may still commit and be applied; its result is discarded.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not isinstance(command, bytes | bytearray | memoryview):
            raise TypeError(f"command must be bytes, not {type(command).__name__}")
        limit = self._command_limit
        if len(command) > limit:
            raise ValueError(f"command of {len(command)} bytes exceeds the limit of {limit}")
        core = self._running_core()
        if forward and core.role is not Role.LEADER and self._storage_error is None:
            return await self._apply_at_leader(bytes(command))
        core = self._require_leader()
        return await self._wait_applied_entry(core.propose(bytes(command)))

    async def _leader_address(self) -> str:
        """The address of the leader, waiting up to two election timeouts for one.

        Raises:
            NotLeaderError: no other node is known to lead (or its address is unknown).
        """
        with trio.move_on_after(2 * self.config.election_timeout):
            await self.wait_for_leader()
        core = self._running_core()
        address = self._address_of(core.leader_id)
        if core.leader_id is None or core.leader_id == self.id or not address:
            raise NotLeaderError(core.leader_id, address)
        return address

    async def _apply_at_leader(self, command: bytes) -> object:
        """A follower's apply(): send the command to the leader, and bring back its result."""
        try:
            response, _ = await self._request_leader("apply", command)
        except NotLeaderError:
            if self._running_core().role is not Role.LEADER:
                raise
            # This node became the leader meanwhile.
            return await self._wait_applied_entry(self._require_leader().propose(command))
        except TransportError as exc:
            raise LeadershipLostError(f"forwarded to the leader, no answer: {exc}") from None
        try:
            decoded = msgpack.unpackb(response.body)
        except Exception:
            raise LeadershipLostError("the leader's answer could not be read") from None
        kind = decoded[0] if isinstance(decoded, list) and decoded else None
        if kind == "ok":
            return decoded[1]
        if kind == "error":
            raise CommandFailedError(str(decoded[1]), str(decoded[2]))
        if kind == "not_leader":
            raise NotLeaderError(decoded[1], decoded[2])
        if kind == "failed":
            raise RaftError(f"the leader refused the command: {decoded[1]}")
        raise LeadershipLostError(f"forwarded to the leader, outcome unknown: {decoded[1:]}")

    async def add_member(self, node_id: NodeId, address: str, *, voter: bool = True) -> None:
        """Add ``node_id`` at ``address`` to the cluster (leader only).

        A new voter joins as a learner first and is promoted once its log is within
        ``promote_within_entries`` of the leader's, so adding a node never stalls commits.
        Adding a member that already has this address and role changes nothing; a known id
        with a new address gets the new address (refused while the old one is live).

        Raises:
            NotLeaderError: this node does not lead.
            MembershipChangeError: the change was refused; the membership is unchanged.
            LeadershipLostError: leadership was lost before the change committed.

        Cancellation: a change already appended may still commit (as a learner, say).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        _check_member_id(node_id)
        parse_address(address, field_name="address")
        core = self._require_leader()
        existing = next((m for m in core.membership.members if m.id == node_id), None)
        if existing is not None and existing.address != address:
            progress = core.progress(node_id)
            contact = progress.last_contact if progress is not None else None
            if contact is not None and trio.current_time() - contact < self.config.election_timeout:
                raise MembershipChangeError(
                    f"{node_id!r} is a live member at {existing.address}; remove it first"
                )
        if existing is None or existing.address != address:
            learner = Member(
                id=node_id, address=address, voter=existing is not None and existing.voter
            )
            await self._change_membership(core, _with_member(core.membership, learner))
            if self._nursery is not None:
                self._nursery.start_soon(self._introduce, node_id, address)
        if voter and not self._is_voter(node_id):
            await self._wait_caught_up(node_id)
            promoted = Member(id=node_id, address=address, voter=True)
            await self._change_membership(
                self._require_leader(), _with_member(self._running_core().membership, promoted)
            )
        elif not voter and self._is_voter(node_id):
            demoted = Member(id=node_id, address=address, voter=False)
            core = self._require_leader()
            await self._change_membership(core, _with_member(core.membership, demoted))

    async def remove_member(self, node_id: NodeId) -> None:
        """Remove ``node_id`` from the cluster (leader only); the leader may remove itself.

        Returns once the change committed. A removed leader steps down then, and the others
        elect a new leader; a removed node stops campaigning.

        Raises:
            NotLeaderError: this node does not lead.
            MembershipChangeError: unknown id, the last voter, or another change pending.
            LeadershipLostError: leadership was lost before the change committed.

        Cancellation: the change may still commit.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        core = self._require_leader()
        if node_id not in core.membership.ids:
            raise MembershipChangeError(f"{node_id!r} is not a member")
        remaining = Membership(members=tuple(m for m in core.membership.members if m.id != node_id))
        if not remaining.voters:
            raise MembershipChangeError("cannot remove the last voter")
        await self._change_membership(core, remaining)

    async def transfer_leadership(self, to: NodeId | None = None) -> NodeId:
        """Hand leadership to ``to`` (default: the most caught-up voter); return the new leader.

        The leader stops accepting commands, brings the target up to date and sends it
        TimeoutNow (§3.10); the target then wins an election at once.

        Raises:
            NotLeaderError: this node does not lead.
            LeadershipTransferError: no other voter, or the target did not take over within
                an election timeout; this node then leads on and accepts commands again.

        Cancellation: the transfer is abandoned; this node leads on.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        core = self._require_leader()
        term = core.current_term
        target = to if to is not None else self._best_transfer_target(core)
        if target is None:
            raise LeadershipTransferError("there is no other voter to hand leadership to")
        try:
            core.transfer_leadership(target)
        except ValueError as exc:
            raise LeadershipTransferError(str(exc)) from None
        self._after_core()
        try:
            with trio.move_on_after(self.config.election_timeout):
                while not (core.current_term > term and core.leader_id is not None):
                    await self._state_changed.wait()
                    self._running_core()
                return core.leader_id
        finally:
            if core.role is Role.LEADER and core.current_term == term:
                core.abort_transfer()
        raise LeadershipTransferError(
            f"{target!r} did not take over within {self.config.election_timeout} s; "
            f"{self.id!r} leads on"
        )

    async def read_barrier(self) -> None:
        """Wait until this node's state machine reflects every write completed before the call.

        ReadIndex (dissertation §6.4): the leader notes its commit index, confirms with a
        round of heartbeats that a majority still follows it, and waits until it applied that
        index; a follower asks the leader for the index and waits to apply it. A deposed or
        partitioned leader never passes.

        Raises:
            NotLeaderError: no leader is known (after waiting two election timeouts).
            LeadershipLostError: leadership moved while confirming; try again.

        Cancellation: nothing changes; the wait just ends.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        core = self._running_core()
        if core.role is Role.LEADER:
            index = await self._confirm_read_index()
        else:
            index = await self._read_index_from_leader()
        await self.wait_applied(index)

    async def query(self, query: bytes, *, stale: bool = False) -> object:
        """Run the state machine's ``query(query)`` after a read barrier (unless ``stale``).

        A stale query reads this node's state as it is, possibly behind the cluster.

        Cancellation: nothing changes; the query is not run.
        """
        if stale:
            await trio.lowlevel.checkpoint()
        else:
            await self.read_barrier()
        return self._run_query(query)

    def _run_query(self, query: bytes) -> object:
        """The state machine's answer to ``query``, now (whatever it raises propagates)."""
        run_query = getattr(self._state_machine, "query", None)
        if run_query is None:
            raise TypeError("this state machine has no query() method")
        return run_query(query)

    async def _confirm_read_index(self) -> Index:
        """Leader: the commit index once a majority confirmed this leadership after the call."""
        core = self._running_core()
        if core.role is not Role.LEADER:
            raise NotLeaderError(core.leader_id, self._address_of(core.leader_id))
        term = core.current_term
        while True:
            self._running_core()  # a closed node's events stay set: this would spin
            if core.role is not Role.LEADER or core.current_term != term:
                raise LeadershipLostError("leadership was lost before the read was confirmed")
            started = core.start_read()
            if started is not None:
                break
            await self._applied_changed.wait()  # the new leader's no-op is not committed yet
        read_round, index = started
        if self.config.read_mode == "lease":
            self._round_started[read_round] = trio.current_time()
            if self._holds_lease(core):
                return index
        for replicator in self._replicators.values():
            replicator.heartbeat_due = True
            replicator.wake.set()
        while not core.read_confirmed(read_round):
            self._running_core()
            if core.role is not Role.LEADER or core.current_term != term:
                raise LeadershipLostError("leadership was lost before the read was confirmed")
            await self._progress_changed.wait()
        return index

    def _holds_lease(self, core: RaftCore) -> bool:
        """Lease mode: whether a majority acknowledged a heartbeat sent recently enough that
        no other leader can have been elected since (followers ignore candidates for an
        election timeout after hearing from this leader; 10% is left for clock drift)."""
        if self.config.read_mode != "lease" or core.transfer_target is not None:
            return False  # a transfer lets the target campaign at once: no lease then
        now = trio.current_time()
        starts = [now]
        for peer in core.voter_peers:
            progress = core.progress(peer)
            if progress is not None:
                starts.append(self._round_started.get(progress.read_round, -math.inf))
        if self.id not in core.voters:
            starts.pop(0)
        starts.sort(reverse=True)
        needed = len(core.voters) // 2 + 1
        if len(starts) < needed:
            return False
        return now < starts[needed - 1] + 0.9 * self.config.election_timeout

    async def _read_index_from_leader(self) -> Index:
        """Follower: ask the leader for a confirmed read index."""
        try:
            response, _ = await self._request_leader("read_index", b"")
        except TransportError as exc:
            raise LeadershipLostError(f"could not reach the leader for a read: {exc}") from None
        decoded = msgpack.unpackb(response.body)
        if decoded[0] == "ok":
            index: Index = decoded[1]
            return index
        if decoded[0] == "not_leader":
            raise NotLeaderError(decoded[1], decoded[2])
        raise LeadershipLostError(f"the leader could not confirm a read: {decoded[1:]}")

    async def wait_for_leader(self) -> NodeId:
        """Wait until this node knows a leader, and return its id.

        Cancellation: nothing changes; the wait just ends.
        """
        await trio.lowlevel.checkpoint()
        while True:
            core = self._running_core()
            if core.leader_id is not None:
                return core.leader_id
            await self._state_changed.wait()

    async def snapshot(self) -> int:
        """Snapshot the state machine now, compact the log, and return the snapshot's index.

        Returns once the snapshot is durable. If nothing was applied since the last snapshot,
        returns that snapshot's index without taking a new one.

        Cancellation: the snapshot may still be taken and saved.
        """
        await trio.lowlevel.checkpoint()
        core = self._running_core()
        while self._snapshot_in_progress:
            await self._snapshot_done.wait()
        self._snapshot_requested = True
        done = self._snapshot_done
        self._apply_signal.set()
        await done.wait()
        self._running_core()
        return core.snapshot.index if core.snapshot is not None else 0

    async def wait_applied(self, index: Index) -> None:
        """Wait until this node's state machine has applied every entry up to ``index``.

        Cancellation: nothing changes; the wait just ends.
        """
        await trio.lowlevel.checkpoint()
        while self._last_applied < index:
            self._running_core()
            await self._applied_changed.wait()

    def status(self) -> NodeStatus:
        """A snapshot of this node's Raft state."""
        core = self._running_core()
        return NodeStatus(
            id=self.id,
            role=core.role,
            term=core.current_term,
            leader_id=core.leader_id,
            commit_index=core.commit_index,
            last_applied=self._last_applied,
            last_log_index=core.log.last_index,
            members=tuple(self._member_status(core, member) for member in core.membership.members),
            rejected_connections=self._transport.statistics().connections_rejected,
            ignored_messages=self._ignored_messages,
            snapshot_index=core.snapshot.index if core.snapshot is not None else 0,
            storage_error=self._storage_error,
        )

    def _member_status(self, core: RaftCore, member: Member) -> MemberStatus:
        progress = core.progress(member.id)
        contact = progress.last_contact if progress is not None else None
        return MemberStatus(
            id=member.id,
            address=member.address or self._members.get(member.id),
            voter=member.voter,
            match_index=progress.match_index if progress is not None else None,
            last_contact=None if contact is None else trio.current_time() - contact,
        )

    async def wind_down(self) -> None:
        """Hand leadership over, then drain, within one election timeout; never raises.

        Leaving ``open_raft_node`` does this first. Call it before, to keep something else
        that uses the node (an HTTP API) answering while it runs: leaving the block then
        goes straight on to closing. Cancellation: the wait ends; the node stays draining.
        """
        if self._wound_down:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(self.config.election_timeout):
            await self.hand_over_leadership()
            await self.drain()
        self._wound_down = True

    async def hand_over_leadership(self) -> None:
        """If this node leads and another voter exists, transfer leadership; never raises.

        Used on shutdown. Cancellation: the transfer is abandoned.
        """
        core = self._core
        if core is None or self._closed or core.role is not Role.LEADER or not core.voter_peers:
            return
        try:
            new_leader = await self.transfer_leadership()
        except RaftError as exc:
            logger.info("%s: could not hand over leadership before stopping: %s", self.id, exc)
        else:
            logger.info("%s: handed leadership to %s before stopping", self.id, new_leader)

    async def drain(self) -> None:
        """Stop taking clients' requests, and answer those already taken; never raises.

        Used on shutdown, after ``hand_over_leadership``: a node that closed its connections
        with requests still on their way to the leader would leave their callers with the
        outcome unknown. From now on a request this node would forward is answered with where
        the leader is (certainly not carried out), so its client goes there; so is a caller of
        ``apply``, ``query`` or ``read_barrier`` here (``NotLeaderError``). Returns once no
        request is being forwarded, every command this node proposed has been answered (a
        leader that handed over applies what committed before it stepped down), and no
        request has come for a heartbeat interval (the clients have gone to the leader); the
        caller bounds the wait.
        """
        self._draining = True
        quiet = self.config.heartbeat_interval
        answered_at = trio.current_time()  # a client answered now may send its next request
        while not self._closed:
            if self._forwards_in_flight:
                self._forwards_idle = trio.Event()
                await self._forwards_idle.wait()
                answered_at = trio.current_time()
                continue
            if self._waiters:
                with trio.move_on_after(quiet):
                    await self._applied_changed.wait()
                answered_at = trio.current_time()
                continue
            idle_for = trio.current_time() - max(answered_at, self._last_redirect_at)
            if idle_for >= quiet:
                return
            await trio.sleep(quiet - idle_for)

    # ------------------------------------------------------------------ helpers of the API

    def _require_leader(self) -> RaftCore:
        core = self._running_core()
        if self._storage_error is not None:
            raise StorageFailedError(self._storage_error)
        if core.role is not Role.LEADER:
            raise NotLeaderError(core.leader_id, self._address_of(core.leader_id))
        if core.transfer_target is not None:
            # Leadership is being handed over: send commands to the next leader.
            target = core.transfer_target
            raise NotLeaderError(target, self._address_of(target))
        return core

    async def _wait_applied_entry(self, entry: Entry) -> object:
        waiter = Waiter(entry.term)
        self._waiters[entry.index] = waiter
        self._after_core()
        try:
            await waiter.done.wait()
        finally:
            if self._waiters.get(entry.index) is waiter:
                del self._waiters[entry.index]
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def _change_membership(self, core: RaftCore, membership: Membership) -> None:
        # A new leader first commits an entry of its term (its no-op): the fix of §4.1.
        while core.log.term_at(core.commit_index) != core.current_term:
            await self._applied_changed.wait()
            core = self._require_leader()
        if not self._quorum_in_contact(core):
            raise MembershipChangeError(
                "the leader has not heard from a majority of voters within an election "
                "timeout; a change could not commit"
            )
        try:
            entry = core.propose_membership(membership)
        except ValueError as exc:
            raise MembershipChangeError(str(exc)) from None
        logger.info("%s: membership change at index %d: %s", self.id, entry.index, membership)
        await self._wait_applied_entry(entry)

    def _quorum_in_contact(self, core: RaftCore) -> bool:
        now = trio.current_time()
        heard = {self.id}
        for peer in core.voter_peers:
            progress = core.progress(peer)
            contact = progress.last_contact if progress is not None else None
            if contact is not None and now - contact < self.config.election_timeout:
                heard.add(peer)
        return len(heard & core.voters) > len(core.voters) // 2

    def _is_voter(self, node_id: NodeId) -> bool:
        return node_id in self._running_core().voters

    async def _wait_caught_up(self, node_id: NodeId) -> None:
        """Wait until a learner's log is close enough to the leader's to promote it."""
        while True:
            core = self._require_leader()
            progress = core.progress(node_id)
            if progress is None:
                raise MembershipChangeError(f"{node_id!r} is no longer a member")
            caught_up = core.log.last_index - self.config.promote_within_entries
            if progress.last_contact is not None and progress.match_index >= caught_up:
                return
            await self._progress_changed.wait()

    def _best_transfer_target(self, core: RaftCore) -> NodeId | None:
        candidates = []
        for peer in core.voter_peers:
            progress = core.progress(peer)
            if progress is not None:
                candidates.append((progress.match_index, progress.last_contact or 0.0, peer))
        return max(candidates)[2] if candidates else None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled. ``task_status.started()`` once it serves peers."""
        self._now = trio.lowlevel.current_clock().current_time
        state = await self._storage.load()
        fresh = state.snapshot is None and not state.entries and state.hard_state.current_term == 0
        if fresh and self._members:
            # Bootstrap: record the initial configuration durably, as an empty snapshot at
            # index 0, so a restart resumes with it whatever peers the config names then.
            initial = Membership.of_voters(self._members)
            empty = SnapshotMeta(index=0, term=0, membership=initial, size=0)
            await self._storage.save_snapshot(empty, b"")
            state = dataclasses.replace(state, snapshot=empty)
        core = RaftCore(
            node_id=self.id,
            membership=Membership(),
            settings=CoreSettings(
                election_timeout=self.config.election_timeout,
                max_entries_per_append=self.config.max_entries_per_append,
                max_bytes_per_append=self.config.max_bytes_per_append,
                max_inflight_appends=self.config.max_inflight_appends,
                snapshot_chunk_bytes=self.config.snapshot_chunk_bytes,
                trailing_entries=self.config.trailing_entries,
                trailing_bytes=self.config.trailing_bytes,
            ),
            hard_state=state.hard_state,
            snapshot=state.snapshot,
            entries=state.entries,
        )
        if (
            state.snapshot is not None
            and state.entries
            and core.log.last_index < core.log.first_index
        ):
            await self._discard_stale_log(state.snapshot.index, state.entries[-1].index)
        if state.snapshot is not None:
            if state.snapshot.index > 0:
                # Restart: the state machine resumes from the snapshot, the log replays after.
                data = await self._storage.read_snapshot()
                self._state_machine.restore(unwrap_snapshot(data, self._sessions))
                self._last_applied = state.snapshot.index
            self._members.update(
                {member.id: member.address for member in state.snapshot.membership.members}
            )
        self._core = core
        self._seen_term = core.current_term
        self._seen_commit = core.commit_index
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                serve = functools.partial(
                    self._transport.serve,
                    self.id,
                    self._deliver,
                    self._address_of,
                    handle_request=self._handle_request,
                    start_request=self._start_request,
                    peer_gone=self._peer_gone,
                    settle=self._settle,
                )
                await nursery.start(serve)
                nursery.start_soon(self._run_election_timer)
                nursery.start_soon(self._run_ready_loop)
                nursery.start_soon(self._run_applier)
                self._reset_election_timer()
                if self.config.join:
                    nursery.start_soon(self._join_cluster)
                task_status.started()
        finally:
            self._closed = True
            self._nursery = None
            # Their commands are in the log, and another leader may still commit them.
            error = LeadershipLostError("the node shut down before the command committed")
            for waiter in self._waiters.values():
                waiter.resolve(error=error)
            self._waiters.clear()
            self._applied_changed.set()
            self._snapshot_done.set()
            self._notify_state_changed()

    # ------------------------------------------------------------------ tasks

    async def _run_election_timer(self) -> None:
        """Start an election whenever the deadline passes without being pushed back (§5.2).

        The scope's deadline lags behind ``_election_deadline``, which every message from
        the leader pushes back: it wakes this task about once per election timeout to
        catch up, instead of a deadline move for each message (see ``_set_election_deadline``).
        """
        core = self._running_core()
        while True:
            with trio.CancelScope(deadline=self._election_deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            if trio.current_time() < self._election_deadline:
                continue  # pushed back since the scope was set: sleep until the new one
            if self._storage_error is not None:
                await trio.sleep_forever()
            self._election_deadline = trio.current_time() + self._random_election_timeout()
            core.election_timeout()
            self._after_core()

    async def _discard_stale_log(self, snapshot_index: Index, stored_last: Index) -> None:
        """Drop the stored log that the stored snapshot makes stale, before anything is
        appended after the snapshot (which would otherwise leave a gap after it).

        A node may apply committed entries before its own write of them is durable, and
        snapshot them; a crash can then keep the snapshot and tear the write, so the stored
        log ends before the snapshot's last entry (or holds another term there: a crash
        between saving a received snapshot and truncating the log). The core then starts
        from the snapshot alone (``_recover_log``). The entries after the snapshot's index
        go first, then those up to it: a crash in between leaves entries that still end at
        or before the snapshot's index, which the next start discards again.
        """
        logger.info(
            "%s: the stored log (up to %d) is stale behind the snapshot at %d: discarding it",
            self.id,
            stored_last,
            snapshot_index,
        )
        if stored_last > snapshot_index:
            await self._storage.persist(hard_state=None, first_index=snapshot_index + 1, entries=())
        await self._storage.compact(snapshot_index)

    async def _run_ready_loop(self) -> None:
        """Persist what the core changed, and only then send the messages depending on it."""
        core = self._running_core()
        while True:
            self._ready_loop_waiting = True
            try:
                await self._ready_signal.wait()
            finally:
                self._ready_loop_waiting = False
            while self._storage_error is None:
                ready, self._carried_ready = self._carried_ready, None
                if ready is None:
                    if not core.has_ready:
                        break
                    ready = core.take_ready()
                if (
                    ready.entries
                    and self._replicators
                    and self._appends_sent_at != core.log.last_index
                ):
                    # A leader sends new entries before writing them itself (§10.2.1): its
                    # own write, which may block the event loop, overlaps the round trip.
                    self._send_appends()
                try:
                    if ready.snapshot is not None:
                        meta, data = ready.snapshot
                        async with self._snapshot_lock:
                            await self._storage.save_snapshot(meta, data)
                            core.on_snapshot_saved(meta)
                        self._notify_state_changed()
                    try:
                        self._log_lock.acquire_nowait()  # no schedule point when free
                    except trio.WouldBlock:
                        await self._log_lock.acquire()
                    try:
                        if ready.compact_through is not None:
                            await self._storage.compact(ready.compact_through)
                        if ready.hard_state is not None or ready.first_index is not None:
                            started = self._now()
                            await self._storage.persist(
                                hard_state=ready.hard_state,
                                first_index=ready.first_index,
                                entries=ready.entries,
                            )
                            self._note_write(started)
                    finally:
                        self._log_lock.release()
                except OSError as exc:
                    self._fail_storage(exc)
                    return
                self._finish_ready(ready)

    def _flush_ready_now(self) -> bool:
        """Do the ready loop's work here and now, when the storage can write it at once:
        saves the ready loop a task switch. False: the rest is the ready loop's to do.

        A leader sends first. It writes here too only when its disk has rested (see
        ``_disk_rested``); under load its own write stays with the ready loop, which runs
        after every connection's burst of this scheduler round, so that their proposals
        share one write.
        """
        persist_now = self._persist_now
        if (
            persist_now is None
            or not self._ready_loop_waiting
            or self._ready_signal.is_set()
            or self._carried_ready is not None
            or self._log_lock.locked()
            or self._storage_error is not None
        ):
            return False
        core = self._running_core()
        if core.role is Role.LEADER:
            if self._replicators:
                self._send_appends()
            if not self._disk_rested():
                return False
        while core.has_ready:
            ready = core.take_ready()
            if ready.snapshot is None and ready.compact_through is None:
                try:
                    if ready.hard_state is None and ready.first_index is None:
                        written = True
                    else:
                        started = self._now()
                        written = persist_now(
                            hard_state=ready.hard_state,
                            first_index=ready.first_index,
                            entries=ready.entries,
                        )
                        if written:
                            self._note_write(started)
                except OSError as exc:
                    self._fail_storage(exc)
                    return True
                if written:
                    self._finish_ready(ready)
                    continue
            self._carried_ready = ready
            return False
        return True

    def _disk_rested(self) -> bool:
        """Whether this node's last log write ended at least as long ago as it took.

        A leader whose disk has rested writes new entries at once, in the burst that brought
        them, rather than leave them to the ready loop: under light load (a client writing
        one command at a time) no other proposal would share the write, and the ready loop's
        task switch cost the leader about 80 us of CPU per write. A disk kept busy means
        load: then the ready loop writes, after every connection's burst of the scheduler
        round, so that one write carries all their proposals.
        """
        return self._now() - self._write_ended_at >= self._write_took

    def _note_write(self, started: float) -> None:
        self._write_ended_at = now = self._now()
        self._write_took = now - started

    def _finish_ready(self, ready: Ready) -> None:
        """``ready``'s changes are durable: tell the core, and send what depended on them."""
        if ready.entries:
            last = ready.entries[-1]
            self._running_core().on_persisted(last.index, last.term)
            self._after_core()
        for to, message in ready.messages:
            self._transport.send_nowait(to, message)

    def _fail_storage(self, error: OSError) -> None:
        """The disk failed: stop taking part (never acknowledge what was not written)."""
        self._storage_error = f"{type(error).__name__}: {error}"
        logger.error("%s: storage failed, no longer taking part: %s", self.id, error)
        core = self._running_core()
        if core.role is not Role.FOLLOWER:
            core.become_follower(core.current_term, None)
            self._after_core()
        self._set_election_deadline(math.inf)
        for waiter in self._waiters.values():
            waiter.resolve(
                error=LeadershipLostError(
                    f"storage failed ({self._storage_error}); outcome unknown: followers "
                    "may have committed the command"
                )
            )
        self._waiters.clear()
        self._notify_state_changed()

    async def _run_applier(self) -> None:
        """Apply committed entries in log order, each exactly once, and answer their callers.

        Only this task touches the state machine (apply, snapshot and restore), except for
        ``_apply_now``, which does this task's work while it waits.
        """
        while True:
            self._applier_waiting = True
            try:
                await self._apply_signal.wait()
            finally:
                self._applier_waiting = False
            while self._apply_round():
                await trio.lowlevel.checkpoint()
            self._maybe_start_snapshot()

    def _apply_round(self) -> bool:
        """Restore a received snapshot and apply up to ``_APPLY_BATCH`` committed entries;
        False if there was nothing to do."""
        core = self._running_core()
        restore = core.take_restore()
        if restore is not None:
            self._restore_snapshot(*restore)
        entries = self._apply_carry or core.take_committed(_APPLY_BATCH)
        self._apply_carry = []
        if not entries and restore is None:
            return False
        budget = _APPLY_BATCH
        for position, entry in enumerate(entries):
            budget -= self._apply_entry(entry)
            if budget <= 0:
                # Entries of batches carry many commands: leave the rest for the next round
                # rather than hold the event loop for thousands of them.
                self._apply_carry = entries[position + 1 :]
                break
        self._applied_changed.set()
        self._applied_changed = trio.Event()
        if self._observer is not None:
            self._observer.state_changed(self)
        self._maybe_start_snapshot()
        return True

    def _apply_now(self) -> bool:
        """Apply what was committed here and now if the applier is idle: saves it a task
        switch. False: the applier must be woken for the rest."""
        if not self._applier_waiting or self._apply_signal.is_set():
            return False
        self._apply_round()
        return self._running_core().commit_index <= self._last_applied

    def _restore_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._state_machine.restore(unwrap_snapshot(data, self._sessions))
        self._last_applied = meta.index
        self._applied_commands = 0
        self._apply_carry = [entry for entry in self._apply_carry if entry.index > meta.index]
        covered = [index for index in self._waiters if index <= meta.index]
        for index in covered:
            self._waiters.pop(index).resolve(
                error=LeadershipLostError("applied from a snapshot; the result is unavailable")
            )
        logger.info("%s: restored a snapshot up to index %d", self.id, meta.index)

    def _maybe_start_snapshot(self) -> None:
        """Snapshot the state machine when the log since the last snapshot grew long (§7)."""
        if self._snapshot_in_progress or self._nursery is None:
            return
        core = self._running_core()
        since = core.snapshot.index if core.snapshot is not None else 0
        if self._last_applied <= since:
            if self._snapshot_requested:
                self._snapshot_requested = False
                self._finish_snapshot_round()
            return
        if not self._snapshot_requested and (
            self._applied_commands < self.config.snapshot_threshold
        ):
            return
        self._snapshot_requested = False
        self._applied_commands = 0
        data = wrap_snapshot(self._sessions, self._state_machine.snapshot())
        meta = dataclasses.replace(core.snapshot_meta_at(self._last_applied), size=len(data))
        self._snapshot_in_progress = True
        self._nursery.start_soon(self._save_snapshot, meta, data)

    async def _save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Write a snapshot off the event loop, then compact the log behind it."""
        core = self._running_core()
        try:
            async with self._snapshot_lock:
                await self._storage.save_snapshot(meta, data)
                through = core.on_snapshot_saved(meta)
            if through is not None:
                async with self._log_lock:
                    await self._storage.compact(through)
            logger.info("%s: snapshot up to index %d saved", self.id, meta.index)
            self._notify_state_changed()
        except OSError as exc:
            logger.error("%s: could not save a snapshot: %s", self.id, exc)
        finally:
            self._snapshot_in_progress = False
            self._finish_snapshot_round()

    def _finish_snapshot_round(self) -> None:
        self._snapshot_done.set()
        self._snapshot_done = trio.Event()

    def _apply_entry(self, entry: Entry) -> int:
        """Apply ``entry`` and answer its caller, if it has one here; the commands applied."""
        result: object = None
        error: BaseException | None = None
        commands = 1
        kind = entry.kind
        if kind is _COMMAND:
            try:
                result = self._state_machine.apply(entry.data)
            except Exception as exc:
                error = exc
        elif kind is _BATCH or kind is _SESSION_BATCH:
            result = self._apply_batch_entry(entry)
            commands = len(result.results)
        elif kind is _SESSION:
            result = self._apply_session_command(entry.data)
        self._last_applied = entry.index
        self._applied_commands += commands
        waiter = self._waiters.pop(entry.index, None)
        if waiter is not None:
            if waiter.term == entry.term:
                waiter.resolve(result, error)
            else:
                waiter.resolve(error=LeadershipLostError("the entry was replaced by another"))
        if self._observer is not None:
            self._observer.applied_entry(self, entry)
        return commands

    def _apply_session_command(self, data: bytes) -> object:
        """Apply a client's numbered command (a SESSION entry's data) at most once; its
        outcome, as sessions keep it."""
        try:
            outcome, _ = self._sessions.apply(data, self._state_machine)
        except StaleSequenceError as exc:
            return ("error", ["StaleSequenceError", str(exc)])
        return outcome

    def _apply_batch_entry(self, entry: Entry) -> BatchResults:
        """Apply each command of a batch entry (BATCH or SESSION_BATCH) in order, each on
        its own (one that raises does not stop the rest)."""
        waiter = self._waiters.get(entry.index)
        if isinstance(waiter, BatchEntryReply) and waiter.data is entry.data:
            commands: list[bytes] | None = waiter.commands  # decoded when it was proposed
        else:
            commands = decode_batch_body(entry.data)
        if commands is None:
            # The leader checked the batch before proposing it, so only a bug gets here;
            # every node skips the entry alike, and its caller learns why.
            logger.error("%s: entry %d is a malformed batch; skipped", self.id, entry.index)
            return BatchResults([], {}, "the batch entry is malformed")
        apply = self._state_machine.apply if entry.kind is _BATCH else self._apply_session_command
        results: list[object] = []
        errors: dict[int, BaseException] = {}
        for command in commands:
            try:
                results.append(apply(command))
            except Exception as exc:
                errors[len(results)] = exc
                results.append(None)
        return BatchResults(results, errors)

    async def _lead(self, scope: trio.CancelScope, term: Term) -> None:
        """Do a leader's work for ``term`` until ``scope`` is cancelled (step-down)."""
        with scope:
            async with trio.open_nursery() as nursery:
                self._leader_nursery = nursery
                try:
                    self._sync_replicators()
                    nursery.start_soon(self._tick_heartbeats)
                    nursery.start_soon(self._watch_quorum)
                    await trio.sleep_forever()
                finally:
                    self._leader_nursery = None

    def _sync_replicators(self) -> None:
        """One replicator per member while leading: start new members', stop removed ones'.

        Both in a fixed order (the members' ids, then the replicators' starts), not a set's:
        the order tasks start in is the order a seeded simulation schedules them in.
        """
        nursery = self._leader_nursery
        if nursery is None:
            return
        peers = self._running_core().peers
        for peer in peers:
            if peer not in self._replicators:
                replicator = self._replicators[peer] = _Replicator()
                nursery.start_soon(self._replicate_to, peer, replicator)
        for peer in [peer for peer in self._replicators if peer not in peers]:
            self._replicators.pop(peer).scope.cancel()

    async def _replicate_to(self, peer: NodeId, replicator: _Replicator) -> None:
        """Keep one follower's log in step: pipelined AppendEntries, heartbeats when due."""
        core = self._running_core()
        try:
            with replicator.scope:
                while True:
                    heartbeat, replicator.heartbeat_due = replicator.heartbeat_due, False
                    message = core.replicate(
                        peer, heartbeat=heartbeat, commit=replicator.commit_due
                    )
                    if message is not None:
                        replicator.commit_due = False
                    if isinstance(message, SnapshotNeeded):
                        async with self._snapshot_lock:
                            data = await self._storage.read_snapshot(message.offset, message.size)
                            chunk = core.snapshot_chunk(peer, message.meta, message.offset, data)
                        if chunk is not None:
                            self._transport.send_nowait(peer, chunk)
                    elif message is not None:
                        self._transport.send_nowait(peer, message)
                    else:
                        replicator.commit_due = False  # asked for once, after the deadline
                        if core.commit_behind(peer):
                            replicator.linger_commit(self._now())
                        with trio.CancelScope(deadline=replicator.commit_deadline) as waiting:
                            replicator.waiting = waiting
                            try:
                                await replicator.wake.wait()
                            finally:
                                replicator.waiting = None
                        if waiting.cancelled_caught:
                            replicator.commit_deadline = math.inf
                            replicator.commit_due = True
        finally:
            if self._replicators.get(peer) is replicator:
                del self._replicators[peer]

    def _send_appends(self) -> None:
        """Send each follower the entries due to it now, from the caller's task."""
        core = self._running_core()
        for peer, replicator in self._replicators.items():
            self._send_appends_to(core, peer, replicator)
        self._appends_sent_at = core.log.last_index

    def _send_appends_to(self, core: RaftCore, peer: NodeId, replicator: _Replicator) -> None:
        """Send ``peer`` the entries due to it now. What needs more than sending (a
        snapshot) is left to its replicator."""
        send = self._transport.send_nowait
        while True:
            message = core.replicate(peer, commit=False)
            if message is None:
                return
            if isinstance(message, SnapshotNeeded):
                replicator.wake.set()
                return
            send(peer, message)

    async def _tick_heartbeats(self) -> None:
        """Every heartbeat interval, have each replicator send at least an empty append (§5.2).

        In lease mode every tick also starts a read round, so acknowledgements renew the lease.
        """
        core = self._running_core()
        while True:
            if self.config.read_mode == "lease" and core.role is Role.LEADER:
                self._round_started[core.next_read_round()] = trio.current_time()
                if len(self._round_started) > 256:
                    del self._round_started[min(self._round_started)]
            for replicator in self._replicators.values():
                replicator.heartbeat_due = True
                replicator.wake.set()
            await trio.sleep(self.config.heartbeat_interval)

    async def _watch_quorum(self) -> None:
        """Step down if a majority stays silent for an election timeout (check-quorum).

        A check due more than a heartbeat interval ago when it runs means this node's own
        event loop was held up (a slow fsync on the loop, a paused process or machine):
        silence measured across that is no evidence. The answers that arrived meanwhile are
        unread (the check and those reads are due in the same scheduler round, in random
        order), and followers paused alongside had nothing to answer. So the check waits a
        heartbeat interval for the answers to the heartbeats sent now that the loop runs
        again. Judging at once deposed a healthy leader after every pause of the whole
        machine longer than an election timeout (50 of 50 in a simulation).
        """
        core = self._running_core()
        while True:
            due = trio.current_time() + self.config.election_timeout
            await trio.sleep_until(due)
            if trio.current_time() - due > self.config.heartbeat_interval:
                await trio.sleep(self.config.heartbeat_interval)
            if not core.check_quorum(trio.current_time()):
                logger.warning("%s: lost contact with a majority; stepping down", self.id)
                self._after_core()

    # ------------------------------------------------------------------ requests

    async def _handle_request(self, requester: str, request: Request) -> Response:
        """Answer a request from a node or a client (see the methods below)."""
        if request.method == "join":
            return await self._answer_join(request)
        if request.method == "apply":
            return await self._answer_apply(request)
        if request.method == "submit":
            return await self._answer_submit(request)
        if request.method == "query":
            (pair,) = await self._answer_queries([request.body])
            return respond(request, pair)
        if request.method == "query_batch":
            return await self._answer_query_batch(request)
        if request.method in SINGLE_METHOD_OF:
            return await self._answer_batch(requester, request)
        if request.method == "read_index":
            return await self._answer_read_index(request)
        if request.method == "members":
            return await self._answer_members(request)
        if request.method == "introduce":
            self._learn_members(request.body)
            await trio.lowlevel.checkpoint()
            return Response(request_id=request.request_id, ok=True, body=b"")
        if request.method == "status":
            await trio.lowlevel.checkpoint()
            return Response(request_id=request.request_id, ok=True, body=self._status_body())
        return error_answer(request, f"unknown method {request.method!r}")

    async def _answer_apply(self, request: Request) -> Response:
        """Apply a client's command on the leader; a follower forwards it there.

        The answer's body is msgpack: ``["ok", result]``, ``["error", type, message]`` (the
        state machine raised), ``["not_leader", leader_id, address]`` (certainly not applied),
        ``["unknown", reason]`` (the outcome is unknown) or ``["failed", reason]`` (certainly
        not applied). A follower that forwarded the command adds the leader's address to an
        ``ok``: ``["ok", result, address]``, so a client can go there next time.
        """
        core = self._running_core()
        if core.role is not Role.LEADER:
            return await self._forward(request)
        try:
            result = await self.apply(request.body)
        except NotLeaderError as exc:
            return answer(request, ["not_leader", exc.leader_id, exc.leader_address])
        except (StorageFailedError, ValueError, TypeError) as exc:
            return answer(request, ["failed", f"{type(exc).__name__}: {exc}"])
        except Exception as exc:
            return apply_answer(request, None, exc)
        return apply_answer(request, result, None)

    async def _answer_batch(self, requester: str, request: Request) -> Response:
        """Carry out each command of a batch request as if it had come alone (``_batching``).

        Commands of one batch are independent: each has its own answer, and a refused one
        does not stop the others. A follower forwards the whole batch to its leader.
        """
        bodies = decode_batch_body(request.body)
        if bodies is None:
            return error_answer(request, "malformed batch request")
        if self._running_core().role is not Role.LEADER:
            return await self._forward(request)
        method = SINGLE_METHOD_OF[request.method]
        oks = [False] * len(bodies)
        answers = [b""] * len(bodies)

        async def answer_one(position: int, body: bytes) -> None:
            one = Request(request_id=request.request_id, method=method, body=body)
            response = await self._handle_request(requester, one)
            oks[position], answers[position] = response.ok, response.body

        async with trio.open_nursery() as nursery:
            for position, body in enumerate(bodies):
                nursery.start_soon(answer_one, position, body)
        body = encode_batch_answer(oks, answers)
        return Response(request_id=request.request_id, ok=True, body=body)

    def _start_request(
        self, requester: str, request: Request, reply: Callable[[Response], None]
    ) -> bool:
        """The leader's fast path for "apply" and "submit": propose at once; the applier answers.

        Saves a task, an Event and two task switches per command. Everything else (and an
        "apply" that would be refused or forwarded) goes to ``_handle_request``.
        """
        core = self._core
        if (
            core is None
            or core.role is not Role.LEADER
            or core.transfer_target is not None
            or self._closed
            or self._storage_error is not None
        ):
            return False
        method = request.method
        if method in _OUTCOME_OF:
            proposal = self._fast_proposal(method, request.body)
            if proposal is None:
                return False  # refused by the handler
            entry = core.propose(*proposal)
            self._waiters[entry.index] = Reply(entry.term, request, _OUTCOME_OF[method], reply)
        elif method in _BATCH_KINDS:
            # A batch of commands (``_batching``): one entry of its commands, applied one by
            # one on every node (``EntryKind.BATCH``, ``SESSION_BATCH``); or, too large for
            # one entry, an entry per command as if each had come alone.
            bodies = decode_batch_body(request.body)
            if bodies is None:
                return False  # refused by the handler
            batch_kind, single_kind, outcome = _BATCH_KINDS[method]
            if batch_kind is _BATCH:
                commands, data = bodies, request.body  # the request's own bytes
            else:
                session_commands = self._session_commands(bodies)
                if session_commands is None:
                    return False  # the handler refuses the malformed one, does the rest
                commands, data = session_commands, encode_batch_body(session_commands)
            waiters = self._waiters
            if len(data) <= self._command_limit:
                entry = core.propose(data, batch_kind)
                waiters[entry.index] = BatchEntryReply(
                    entry.term, request.request_id, entry.data, commands, outcome, reply
                )
            else:
                if batch_kind is _BATCH and max(map(len, commands)) > self._command_limit:
                    return False  # the handler refuses that command and carries out the rest
                batch = BatchReply(request.request_id, len(commands), reply)
                proposals = [(command, single_kind) for command in commands]
                for position, entry in enumerate(core.propose_many(proposals)):
                    waiters[entry.index] = BatchPart(entry.term, batch, position, outcome)
        else:
            return False
        self._in_burst = True
        self._after_propose(core)
        return True

    def _leader_clock_ms(self) -> int:
        """The clock this node, leading, writes into session entries."""
        return leader_clock_ms(self._wall_clock)

    def _session_commands(self, bodies: list[bytes]) -> list[bytes] | None:
        """The SESSION entries' data for the "submit" bodies of a batch; None if one is
        malformed."""
        time_ms = self._leader_clock_ms()
        datas = [session_entry_data(body, time_ms) for body in bodies]
        return None if None in datas else cast(list[bytes], datas)

    def _fast_proposal(self, method: str, body: bytes) -> tuple[bytes, EntryKind] | None:
        """The entry an "apply" or "submit" body proposes; None if the handler must refuse it."""
        if method == "apply":
            return None if len(body) > self._command_limit else (body, _COMMAND)
        data = session_entry_data(body, self._leader_clock_ms())
        return None if data is None else (data, _SESSION)

    @property
    def _command_limit(self) -> int:
        """The largest command accepted: what fits a frame with room for its AppendEntries."""
        return self.config.max_frame_bytes - 4096

    async def _answer_submit(self, request: Request) -> Response:
        """A client's numbered command: applied once, however often it arrives (§6.3)."""
        data = session_entry_data(request.body, self._leader_clock_ms())
        if data is None:
            return answer(request, ["failed", "malformed submit request"])
        core = self._running_core()
        if core.role is not Role.LEADER:
            return await self._forward(request)
        try:
            core = self._require_leader()
            entry = core.propose(data, EntryKind.SESSION)
            outcome = await self._wait_applied_entry(entry)
        except NotLeaderError as exc:
            return answer(request, ["not_leader", exc.leader_id, exc.leader_address])
        except (LeadershipLostError, NodeClosedError) as exc:
            return submit_answer(request, None, exc)
        except StorageFailedError as exc:
            return answer(request, ["failed", f"{type(exc).__name__}: {exc}"])
        return submit_answer(request, outcome, None)

    async def _answer_query_batch(self, request: Request) -> Response:
        """Answer each query of a batch (``_batching``) as if it had come alone."""
        bodies = decode_batch_body(request.body)
        if bodies is None:
            return error_answer(request, "malformed batch request")
        pairs = await self._answer_queries(bodies)
        body = encode_batch_answer([ok for ok, _ in pairs], [answer for _, answer in pairs])
        return Response(request_id=request.request_id, ok=True, body=body)

    async def _answer_queries(self, bodies: list[bytes]) -> list[tuple[bool, bytes]]:
        """The answers to "query" request bodies (``[query, stale]``), in order.

        One read barrier, started after all of them arrived, serves every query that is not
        stale; if it fails, those get the failure as their answer (``["not_leader", ...]``,
        ``["unknown", ...]`` or ``["failed", ...]``) and the stale ones are still answered.
        A query that raises gets ``["error", ...]``, as an "apply" whose command raised.
        """
        queries = [_parse_query(body) for body in bodies]
        refusal: tuple[bool, bytes] | None = None
        if any(query is not None and not query[1] for query in queries):
            try:
                await self.read_barrier()
            except NotLeaderError as exc:
                refusal = answer_pair(["not_leader", exc.leader_id, exc.leader_address])
            except (LeadershipLostError, NodeClosedError) as exc:
                refusal = answer_pair(["unknown", str(exc)])
            except RaftError as exc:
                refusal = answer_pair(["failed", f"{type(exc).__name__}: {exc}"])
        else:
            await trio.lowlevel.checkpoint()
        pairs: list[tuple[bool, bytes]] = []
        for query in queries:
            if query is None:
                pairs.append(answer_pair(["failed", "malformed query request"]))
            elif refusal is not None and not query[1]:
                pairs.append(refusal)
            else:
                try:
                    result = self._run_query(query[0])
                except Exception as exc:  # the query raised (or there is none): its answer
                    pairs.append(apply_outcome(None, exc))
                else:
                    pairs.append(apply_outcome(result, None))
        return pairs

    async def _answer_read_index(self, request: Request) -> Response:
        try:
            index = await self._confirm_read_index()
        except NotLeaderError as exc:
            return answer(request, ["not_leader", exc.leader_id, exc.leader_address])
        except RaftError as exc:
            return answer(request, ["unknown", str(exc)])
        return answer(request, ["ok", index])

    async def _answer_members(self, request: Request) -> Response:
        try:
            operation, *arguments = msgpack.unpackb(request.body)
        except Exception:
            return answer(request, ["failed", "malformed members request"])
        core = self._running_core()
        if core.role is not Role.LEADER:
            return await self._forward(request)
        try:
            if operation == "add":
                node_id, address, voter = arguments
                await self.add_member(node_id, address, voter=bool(voter))
                return answer(request, ["ok", None])
            if operation == "remove":
                (node_id,) = arguments
                await self.remove_member(node_id)
                return answer(request, ["ok", None])
            if operation == "transfer":
                (target,) = arguments
                return answer(request, ["ok", await self.transfer_leadership(target)])
        except NotLeaderError as exc:
            return answer(request, ["not_leader", exc.leader_id, exc.leader_address])
        except (LeadershipLostError, NodeClosedError) as exc:
            return answer(request, ["unknown", str(exc)])
        except (RaftError, ValueError, TypeError) as exc:
            return answer(request, ["failed", f"{type(exc).__name__}: {exc}"])
        return answer(request, ["failed", f"unknown members operation {operation!r}"])

    async def _forward(self, request: Request) -> Response:
        """Relay a client's request to the leader and its answer back (see ``_request_leader``)."""
        try:
            response, leader_address = await self._request_leader(request.method, request.body)
        except NotLeaderError as exc:
            return answer(request, ["not_leader", exc.leader_id, exc.leader_address])
        except TransportError as exc:
            return answer(request, ["unknown", f"forwarding to the leader failed: {exc}"])
        body = response.body
        if response.ok:
            body = with_leader_hint(request.method, body, leader_address)
        return Response(request_id=request.request_id, ok=response.ok, body=body)

    async def _request_leader(self, method: str, body: bytes) -> tuple[Response, str]:
        """Send a request on to the leader, waiting a little for one to be known: its
        response, and the leader's address.

        Every request a follower sends on, its clients' and its own callers', goes through
        here, so that ``drain`` can wait for them; while draining, none is sent.

        Raises:
            NotLeaderError: no other node is known to lead, or this node is draining (the
                request was not sent).
            TransportError: the leader did not answer (it may have carried the request out).
        """
        if self._draining:
            self._last_redirect_at = trio.current_time()
            await trio.lowlevel.checkpoint()
            leader_id = self._running_core().leader_id
            raise NotLeaderError(leader_id, self._address_of(leader_id))
        self._forwards_in_flight += 1
        try:
            leader_address = await self._leader_address()
            response = await self._transport.request(
                leader_address, method, body, timeout=self._forward_timeout
            )
        finally:
            self._forwards_in_flight -= 1
            if not self._forwards_in_flight:
                self._forwards_idle.set()
        return response, leader_address

    @property
    def _forward_timeout(self) -> float:
        return max(5.0, 10 * self.config.election_timeout)

    def _status_body(self) -> bytes:
        body: bytes = msgpack.packb(self.status().summary())
        return body

    async def _answer_join(self, request: Request) -> Response:
        """Add the requesting node; a follower forwards the request to its leader."""
        try:
            node_id, address, voter = msgpack.unpackb(request.body)
            if not isinstance(address, str) or not isinstance(voter, bool):
                raise TypeError("bad join request")
        except Exception:
            return error_answer(request, "malformed join request")
        core = self._running_core()
        if core.role is Role.LEADER:
            # Answer once the node is a learner: it needs the members' addresses (in the
            # answer) to reply to the leader at all. Promotion follows in the background.
            try:
                current = next((m for m in core.membership.members if m.id == node_id), None)
                await self.add_member(node_id, address, voter=current is not None and current.voter)
            except RaftError as exc:
                return error_answer(request, f"{type(exc).__name__}: {exc}")
            if voter and node_id not in self._promoting and self._nursery is not None:
                self._promoting.add(node_id)
                self._nursery.start_soon(self._promote, node_id, address)
            members = self._running_core().membership.members
            body = _members_body(members)
            return Response(request_id=request.request_id, ok=True, body=body)
        leader_address = self._address_of(core.leader_id)
        if core.leader_id is None or not leader_address:
            return error_answer(request, "no leader known yet")
        try:
            response = await self._transport.request(
                leader_address, "join", request.body, timeout=self._join_request_timeout
            )
        except TransportError as exc:
            return error_answer(request, f"could not reach the leader: {exc}")
        return Response(request_id=request.request_id, ok=response.ok, body=response.body)

    async def _introduce(self, node_id: NodeId, address: str) -> None:
        """Tell a node just added which addresses its fellow members have.

        A node that did not join by asking (so got no answer listing them) could otherwise
        not answer the leader until its log told it where the leader is, and its log cannot
        grow until it answers.
        """
        members = self._running_core().membership.members
        body = _members_body(members)
        for _ in range(5):
            try:
                response = await self._transport.request(
                    address, "introduce", body, timeout=self._join_request_timeout
                )
            except TransportError:
                await trio.sleep(self.config.election_timeout)
                continue
            if response.ok:
                return
        logger.info("%s: could not introduce the members to %s at %s", self.id, node_id, address)

    def _learn_members(self, body: bytes) -> None:
        """Remember the members' addresses from a join answer (to reply before the log says)."""
        try:
            rows = msgpack.unpackb(body)
            self._members.update({str(row[0]): str(row[1]) for row in rows})
        except Exception:
            logger.warning("%s: malformed join answer ignored", self.id)

    def _joined(self) -> bool:
        """Whether this node is a member, and a voter if it asked to be one."""
        core = self._running_core()
        if self.config.voter:
            return self.id in core.voters
        return self.id in core.membership.ids or self.id in self._members

    async def _promote(self, node_id: NodeId, address: str) -> None:
        """Promote a learner that joined as a voter once it caught up (see add_member)."""
        try:
            await self.add_member(node_id, address, voter=True)
        except RaftError as exc:
            logger.info("%s: did not promote %s: %s", self.id, node_id, exc)
        finally:
            self._promoting.discard(node_id)

    @property
    def _join_request_timeout(self) -> float:
        return max(5.0, 20 * self.config.election_timeout)

    async def _join_cluster(self) -> None:
        """Ask the members at ``config.join`` to add this node, until one of them does.

        Joining is idempotent, so a restarted node asks again: a no-op, or an address update.
        """
        body = msgpack.packb([self.id, self.config.advertise_address, self.config.voter])
        addresses = list(self.config.join)
        delay = self.config.heartbeat_interval
        last_problem = ""
        with trio.move_on_after(self.config.join_timeout):
            while True:
                for address in addresses:
                    try:
                        response = await self._transport.request(
                            address, "join", body, timeout=self._join_request_timeout
                        )
                    except TransportError as exc:
                        last_problem = str(exc)
                        continue
                    if response.ok:
                        self._learn_members(response.body)
                        if self._joined():
                            logger.info("%s: joined the cluster through %s", self.id, address)
                            return
                        last_problem = "waiting to be promoted to voter"
                        break
                    last_problem = f"{address}: {response.body.decode(errors='replace')}"
                await trio.sleep(delay * (1 + self._random.random()))
                delay = min(delay * 2, 2.0)
        logger.error(
            "%s: could not join through %s within %s s: %s",
            self.id,
            ", ".join(addresses),
            self.config.join_timeout,
            last_problem,
        )

    # ------------------------------------------------------------------ reacting to the core

    def _deliver(self, sender: NodeId, message: Message) -> None:
        core = self._core
        if core is None or self._closed or self._storage_error is not None:
            return
        known = core.known_ids
        if (known and sender not in known and sender not in self._members) or sender == self.id:
            self._ignored_messages += 1
            logger.warning(
                "%s: ignored %s from non-member %r", self.id, type(message).__name__, sender
            )
            return
        claimed = getattr(message, "leader_id", None) or getattr(message, "candidate_id", sender)
        if claimed != sender:
            self._ignored_messages += 1
            logger.warning(
                "%s: ignored %s from %r claiming to be %r",
                self.id,
                type(message).__name__,
                sender,
                claimed,
            )
            return
        self._in_burst = True
        core.handle_message(sender, message, self._now())
        if core.role is Role.LEADER:
            self._progress_changed.set()
            self._progress_changed = trio.Event()
        if sender in self._replicators:
            # The answer may open the window or rewind the follower.
            self._serve_deferred = True
            self._answered[sender] = None
        self._after_core()

    def _after_core(self) -> None:
        """Turn the core's new state into Trio actions; call after every core input."""
        core = self._running_core()
        if core.role is not self._seen_role or core.current_term != self._seen_term:
            self._on_role_change(core.role, core.current_term)
        if core.take_timer_reset():
            self._reset_election_timer()
        if core.leader_id != self._seen_leader:
            self._seen_leader = core.leader_id
            self._notify_state_changed()
        if core.membership is not self._seen_membership:
            self._seen_membership = core.membership
            self._sync_replicators()  # a member joined or left: start or stop its replicator
        if core.has_ready:
            self._wake_ready_loop()
        if core.commit_index != self._seen_commit or core.log.last_index != self._seen_last_index:
            if core.commit_index != self._seen_commit:
                self._seen_commit = core.commit_index
                self._wake_applier()
            appended = core.log.last_index != self._seen_last_index
            self._seen_last_index = core.log.last_index
            # New entries or a new commit index: every follower has something to hear.
            self._wake_replicators(appended)

    def _after_propose(self, core: RaftCore) -> None:
        """``_after_core`` for a proposed command, which changed nothing but the log's end."""
        self._wake_ready_loop()
        self._seen_last_index = core.log.last_index
        self._wake_replicators(appended=True)

    def _wake_ready_loop(self) -> None:
        if self._in_burst:
            self._ready_deferred = True
        else:
            self._ready_signal.set()

    def _wake_applier(self) -> None:
        if self._in_burst:
            self._apply_deferred = True
        else:
            self._apply_signal.set()

    def _settle(self) -> None:
        """The transport ends a burst of deliveries (before it next waits): persist, send and
        apply what they left, once for the whole burst, here if that can be done at once.

        Doing it here saves the ready loop's and the applier's task switches, about a
        scheduler round each, on every write's path. What cannot be done at once (a slow
        write, a snapshot, a busy task) is signalled to its task instead.
        """
        try:
            for _ in range(_SETTLE_ROUNDS):
                if self._ready_deferred:
                    self._ready_deferred = False
                    if not self._flush_ready_now():
                        self._ready_signal.set()
                if self._apply_deferred:
                    self._apply_deferred = False
                    if not self._apply_now():
                        self._apply_signal.set()
                if self._serve_deferred:
                    self._serve_deferred = False
                    self._serve_followers()
                if not (self._ready_deferred or self._apply_deferred or self._serve_deferred):
                    break
        finally:
            self._in_burst = False
            if self._ready_deferred:
                self._ready_deferred = False
                self._ready_signal.set()
            if self._apply_deferred:
                self._apply_deferred = False
                self._apply_signal.set()
            if self._serve_deferred:
                self._serve_deferred = self._serve_all = False
                self._answered.clear()
                for replicator in self._replicators.values():
                    replicator.wake.set()

    def _serve_followers(self) -> None:
        """Send each follower what a burst made due: entries its answer let through, a
        rewind after a refusal, and (unless entries carry it within ``_COMMIT_LINGER``) the
        new commit index, whose timer its replicator keeps. Saves each replicator a task
        switch per burst."""
        core = self._core
        answered = self._answered
        if core is None or core.role is not Role.LEADER or not self._replicators:
            answered.clear()
            return
        if self._serve_all:
            self._serve_all = False
            self._send_appends()
        else:
            for peer in answered:
                replicator = self._replicators.get(peer)
                if replicator is not None:
                    self._send_appends_to(core, peer, replicator)
        answered.clear()
        now = self._now()
        for peer, replicator in self._replicators.items():
            if core.commit_behind(peer):
                replicator.linger_commit(now)

    def _wake_replicators(self, appended: bool) -> None:
        if appended and self._ready_loop_waiting:
            return  # the ready loop, about to run, sends the new entries first
        if self._in_burst:
            self._serve_deferred = True
            self._serve_all = self._serve_all or appended
            return
        for replicator in self._replicators.values():
            replicator.wake.set()

    def _on_role_change(self, role: Role, term: Term) -> None:
        was_leader = self._seen_role is Role.LEADER
        self._seen_role, self._seen_term = role, term
        if was_leader:
            self._step_down()
        if role is Role.LEADER:
            logger.info("%s: became leader in term %d", self.id, term)
            self._appends_sent_at = -1  # nothing sent in this term yet
            scope = self._leader_scope = trio.CancelScope()
            assert self._nursery is not None
            self._nursery.start_soon(self._lead, scope, term)
            if self._observer is not None:
                self._observer.became_leader(self, term)
        self._reset_election_timer()
        self._notify_state_changed()

    def _step_down(self) -> None:
        """Stop all leader work and fail the callers whose entries may never commit."""
        self._progress_changed.set()
        self._progress_changed = trio.Event()
        if self._leader_scope is not None:
            self._leader_scope.cancel()
            self._leader_scope = None
        commit_index = self._running_core().commit_index
        lost = [index for index in self._waiters if index > commit_index]
        for index in lost:
            self._waiters.pop(index).resolve(
                error=LeadershipLostError(
                    "leadership was lost before the command committed; outcome unknown"
                )
            )

    def _reset_election_timer(self) -> None:
        core = self._running_core()
        if core.role is Role.LEADER:
            self._set_election_deadline(math.inf)
        else:
            self._set_election_deadline(trio.current_time() + self._random_election_timeout())

    def _set_election_deadline(self, deadline: float) -> None:
        """Start an election at ``deadline`` unless pushed back again before then.

        Only an earlier deadline moves the timer's scope at once. A later one waits for the
        scope to expire (``_run_election_timer``): moving a scope's deadline costs Trio a
        context manager and a push onto its deadline heap, and a follower would otherwise
        pay it for every AppendEntries.
        """
        self._election_deadline = deadline
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _peer_gone(self, peer_id: NodeId) -> None:
        """The connection from ``peer_id`` closed. If it was our leader, its process most
        likely exited: campaign within a heartbeat interval or two, not an election timeout.

        All its followers see the close at once. Campaigns only jittered would often start
        within a vote round of each other and split the vote (each votes for itself), and
        then every node waits a whole election timeout to try again. So the voters take
        turns, in the order of their ids, a heartbeat interval apart: each campaigns in the
        first half of its turn, at least half an interval after the one before it, which
        has usually won by then and been heard from (that pushes the next one's election
        back). Only the jitter within a turn is random.

        Not in lease read mode: there a leader answers reads alone while its lease lasts,
        which is only sound if no follower votes for another before the lease is over.
        """
        core = self._core
        if core is None or self._closed or self.config.read_mode == "lease":
            return
        if not core.forget_leader(peer_id):
            return
        logger.info("%s: connection from leader %s closed; campaigning soon", self.id, peer_id)
        turns = sorted(core.voters - {peer_id})
        turn = turns.index(self.id) if self.id in turns else len(turns)
        delay = (turn + self._random.random() / 2) * self.config.heartbeat_interval
        self._set_election_deadline(min(trio.current_time() + delay, self._election_deadline))
        self._notify_state_changed()

    def _random_election_timeout(self) -> float:
        timeout = self.config.election_timeout
        return timeout + self._random.random() * timeout

    def _notify_state_changed(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()
        if self._observer is not None:
            self._observer.state_changed(self)

    def _address_of(self, node_id: NodeId | None) -> str | None:
        if node_id is None:
            return None
        if self._core is not None:
            address = self._core.membership.address_of(node_id)
            if address:
                return address
        return self._members.get(node_id)

    def _running_core(self) -> RaftCore:
        if self._core is None or self._closed:
            raise NodeClosedError("the node is not running")
        return self._core


def _inline_persister(storage: Storage) -> Callable[..., bool] | None:
    """``storage.persist_now`` if it has one that does what its ``persist`` does (see
    ``Storage``): one defined by the same class."""
    persist_now = getattr(storage, "persist_now", None)
    if persist_now is None:
        return None
    for cls in type(storage).__mro__:
        if "persist" in vars(cls) or "persist_now" in vars(cls):
            both = "persist" in vars(cls) and "persist_now" in vars(cls)
            return cast(Callable[..., bool], persist_now) if both else None
    return None


def _with_member(membership: Membership, member: Member) -> Membership:
    """``membership`` with ``member`` added, or replacing the member of the same id."""
    others = [m for m in membership.members if m.id != member.id]
    return Membership(members=tuple(sorted([*others, member], key=lambda m: m.id)))


def _check_member_id(node_id: object) -> None:
    """The rules of RaftConfig.node_id, refused as a membership change."""
    try:
        check_node_id("node_id", node_id)
    except ValueError as exc:
        raise MembershipChangeError(str(exc)) from None


def _members_body(members: tuple[Member, ...]) -> bytes:
    """Every member's id, address and role, for a joining node (msgpack)."""
    body: bytes = msgpack.packb([[m.id, m.address, m.voter] for m in members])
    return body
