"""open_memory_cluster: a whole Raft cluster in one Trio program, on a MemoryNetwork."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._config import RaftConfig
from .._core._types import Entry, NodeId, Role, Term
from .._exceptions import LeadershipLostError, NodeClosedError, NotLeaderError
from .._node import RaftNode
from .._state_machine import StateMachine
from .._storage import MemoryStorage
from ._invariants import SafetyChecker
from ._network import MemoryNetwork
from ._state_machines import RecordingStateMachine

SIMULATED_EPOCH = 1_767_225_600.0
"""The nodes' wall clock at virtual time 0 (2026-01-01 UTC), so session entries carry
milliseconds of a realistic size."""


def simulated_wall_clock() -> float:
    """The nodes' wall clock: a fixed epoch plus the run's virtual time.

    A leader writes its wall clock into session entries; the real one would make each run's
    log differ from its replay's, and would not advance with virtual time.
    """
    return SIMULATED_EPOCH + trio.current_time()


class _ClusterObserver:
    """Forwards node events to the safety checker and wakes the cluster's waiters."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self._cluster = cluster

    def became_leader(self, node: RaftNode, term: Term) -> None:
        self._cluster.checker.became_leader(node, term)

    def applied_entry(self, node: RaftNode, entry: Entry) -> None:
        self._cluster.checker.applied_entry(node, entry)

    def state_changed(self, node: RaftNode) -> None:
        self._cluster._notify()


class MemoryCluster:
    """Nodes on a MemoryNetwork, each with a MemoryStorage that survives its crashes.

    Crashing a node cancels it at once (what it persisted stays in its MemoryStorage, the
    rest is gone); restarting it builds a new node, with a fresh state machine, on the same
    storage. Safety properties are checked as the nodes run (see SafetyChecker). The nodes'
    wall clock is the run's virtual time (``simulated_wall_clock``).
    """

    def __init__(
        self,
        node_ids: list[NodeId],
        *,
        network: MemoryNetwork,
        nursery: trio.Nursery,
        state_machine_factory: Callable[[], StateMachine],
        config_overrides: dict[str, Any],
        seed: int,
        storage_factory: Callable[[NodeId], MemoryStorage] | None = None,
    ) -> None:
        self.node_ids = node_ids
        self._initial = list(node_ids)
        self._joining: set[NodeId] = set()
        self.network = network
        self.checker = SafetyChecker()
        make_storage = storage_factory or (lambda node_id: MemoryStorage())
        self._make_storage = make_storage
        self.storages: dict[NodeId, MemoryStorage] = {i: make_storage(i) for i in node_ids}
        self.state_machines: dict[NodeId, StateMachine] = {}
        self._nursery = nursery
        self._factory = state_machine_factory
        self._overrides = config_overrides
        self._seed = seed
        self._nodes: dict[NodeId, RaftNode] = {}
        self._scopes: dict[NodeId, trio.CancelScope] = {}
        self._stopped: dict[NodeId, trio.Event] = {}
        self._restarts = 0
        self._changed = trio.Event()

    # -------------------------------------------------------------- nodes

    def address_of(self, node_id: NodeId) -> str:
        """The (simulated) address of a node: only the membership records it."""
        return f"{node_id}.sim:7000"

    def config_for(self, node_id: NodeId) -> RaftConfig:
        self._restarts += 1
        values: dict[str, Any] = {
            "node_id": node_id,
            "listen": self.address_of(node_id),
            "seed": self._seed * 1_000_003 + self._restarts,
        }
        if node_id in self._initial:
            if len(self._initial) == 1:
                values["bootstrap"] = True
            else:
                values["peers"] = {peer: self.address_of(peer) for peer in self._initial}
        elif node_id in self._joining:
            values["join"] = tuple(self.address_of(peer) for peer in self._initial)
        values.update(self._overrides)
        return RaftConfig(**values)

    async def start(self, node_id: NodeId) -> RaftNode:
        """Start (or restart) ``node_id``; returns once it serves."""
        if node_id in self._scopes:
            raise RuntimeError(f"{node_id} is already running")
        state_machine = self._factory()
        self.state_machines[node_id] = state_machine
        node = RaftNode(
            self.config_for(node_id),
            state_machine,
            storage=self.storages[node_id],
            transport=self.network.transport(node_id, self.address_of(node_id)),
            observer=_ClusterObserver(self),
            wall_clock=simulated_wall_clock,
        )
        scope = trio.CancelScope()
        stopped = trio.Event()
        self._scopes[node_id], self._stopped[node_id] = scope, stopped

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await node.run(task_status=task_status)
            finally:
                stopped.set()

        await self._nursery.start(run)
        self._nodes[node_id] = node  # listed once it runs: status() works from then on
        return node

    async def start_new(self, node_id: NodeId, *, join: bool = False) -> RaftNode:
        """Start a node that is not a member yet.

        With ``join`` it asks the initial members to add it (``RaftConfig.join``); without,
        it waits for a leader's ``add_member``.
        """
        if node_id in self.storages:
            raise RuntimeError(f"{node_id} already exists")
        if join:
            self._joining.add(node_id)
        self.node_ids.append(node_id)
        self.storages[node_id] = self._make_storage(node_id)
        return await self.start(node_id)

    async def crash(self, node_id: NodeId) -> None:
        """Stop ``node_id`` abruptly; only what it persisted survives."""
        self._scopes.pop(node_id).cancel()
        self._nodes.pop(node_id, None)
        await self._stopped.pop(node_id).wait()
        self._notify()

    async def restart(self, node_id: NodeId) -> RaftNode:
        """Crash ``node_id`` if it runs, then start it again from its storage."""
        if node_id in self._scopes:
            await self.crash(node_id)
        return await self.start(node_id)

    def node(self, node_id: NodeId) -> RaftNode:
        return self._nodes[node_id]

    @property
    def running(self) -> dict[NodeId, RaftNode]:
        """The nodes currently up."""
        return dict(self._nodes)

    def leaders(self) -> list[RaftNode]:
        return [node for node in self._nodes.values() if node.status().role is Role.LEADER]

    # -------------------------------------------------------------- waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever any node changes."""
        while not predicate():
            await self._changed.wait()

    async def wait_for_leader(self) -> RaftNode:
        """Wait until a running node leads with the highest term among running nodes."""

        def stable_leader() -> RaftNode | None:
            statuses = [node.status() for node in self._nodes.values()]
            if not statuses:
                return None
            top = max(status.term for status in statuses)
            for node, status in zip(self._nodes.values(), statuses, strict=True):
                if status.role is Role.LEADER and status.term == top:
                    return node
            return None

        await self.wait_until(lambda: stable_leader() is not None)
        leader = stable_leader()
        assert leader is not None
        return leader

    async def wait_applied(self, index: int, node_ids: list[NodeId] | None = None) -> None:
        """Wait until the given running nodes (default: all) applied up to ``index``."""
        ids = node_ids if node_ids is not None else list(self._nodes)
        await self.wait_until(
            lambda: all(
                self._nodes[i].status().last_applied >= index for i in ids if i in self._nodes
            )
        )

    async def apply(self, command: bytes) -> object:
        """Apply ``command`` through whichever node leads, retrying while there is none.

        Only retries when the command was certainly not appended (NotLeaderError); raises
        LeadershipLostError when the outcome is unknown.
        """
        while True:
            leader = await self.wait_for_leader()
            try:
                return await leader.apply(command)
            except (NotLeaderError, NodeClosedError):
                await trio.sleep(self._retry_delay())
            except LeadershipLostError:
                raise

    def _retry_delay(self) -> float:
        timeout: float = self._overrides.get("heartbeat_interval", 0.1)
        return timeout

    def check_logs(self) -> None:
        """Check Log Matching across every running node."""
        self.checker.check_logs(self._nodes.values())


@asynccontextmanager
async def open_memory_cluster(
    size: int = 3,
    *,
    seed: int = 0,
    network: MemoryNetwork | None = None,
    state_machine_factory: Callable[[], StateMachine] = RecordingStateMachine,
    start: bool = True,
    storage_factory: Callable[[NodeId], MemoryStorage] | None = None,
    **config_overrides: Any,
) -> AsyncIterator[MemoryCluster]:
    """Run ``size`` nodes (``n1`` .. ``nN``) on an in-memory network, all in this program.

    Meant for ``trio.testing.MockClock(autojump_threshold=0)``: elections and timeouts then
    pass in virtual time, and ``seed`` makes the nodes' randomness replayable.
    ``config_overrides`` are RaftConfig fields applied to every node. ``storage_factory``
    makes each node's storage (default: MemoryStorage; see SimulatedDisk).
    """
    if network is None:
        network = MemoryNetwork(seed=seed)
    node_ids = [f"n{number}" for number in range(1, size + 1)]
    async with trio.open_nursery() as nursery:
        cluster = MemoryCluster(
            node_ids,
            network=network,
            nursery=nursery,
            state_machine_factory=state_machine_factory,
            config_overrides=dict(config_overrides),
            seed=seed,
            storage_factory=storage_factory,
        )
        if start:
            for node_id in node_ids:
                await cluster.start(node_id)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()
