"""The client (``tinyraft_trio._client``) against fake nodes on the in-memory network.

The fake nodes speak the nodes' request protocol ("submit", "query", "status", "members")
with a shared, scriptable notion of who leads and a session table, so each retry path of
the client can be driven exactly; virtual time (``autojump_clock``) makes timeouts instant.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgpack
import pytest
import trio
import trio.testing

from tinyraft_trio import Role
from tinyraft_trio._client import RaftClient, connect
from tinyraft_trio._exceptions import (
    ClusterUnavailableError,
    CommandFailedError,
    MembershipChangeError,
    OutcomeUnknownError,
)
from tinyraft_trio._rpc import Request, Response
from tinyraft_trio.testing import MemoryCluster, RecordingStateMachine, open_memory_cluster
from tinyraft_trio.testing._network import MemoryNetwork

CLIENT = "client-test"


def address_of(node_id: str) -> str:
    return f"{node_id}.sim:7000"


def answer(request: Request, value: list[object]) -> Response:
    # Like the real node: only definite results travel with ok=True.
    return Response(
        request_id=request.request_id,
        ok=value[0] in ("ok", "error"),
        body=msgpack.packb(value, use_bin_type=True),
    )


class FakeCluster:
    """Nodes that agree on a leader by fiat and share one session table and state machine."""

    def __init__(self, network: MemoryNetwork, node_ids: list[str]) -> None:
        self.network = network
        self.node_ids = node_ids
        self.leader: str | None = None
        self.commands: list[bytes] = []
        """The state machine: every command applied, in order."""
        self.sessions: dict[tuple[str, int], object] = {}
        self.submits: list[tuple[str, str, int]] = []
        """Every submit a node received: (node, client id, sequence)."""
        self.before_apply: Callable[[str, int], Awaitable[None]] | None = None
        """Runs on the leader before it applies a new sequence (to hang, or to fail over)."""
        self.after_apply: Callable[[str, int], Awaitable[None]] | None = None
        """Runs on the leader after it applied a sequence, before it answers."""
        self.scopes: dict[str, trio.CancelScope] = {}
        self.stopped: dict[str, trio.Event] = {}
        self.nursery: trio.Nursery | None = None

    async def handle(self, node_id: str, requester: str, request: Request) -> Response:
        if request.method == "submit":
            client_id, sequence, command, first_outstanding = msgpack.unpackb(
                request.body, raw=False
            )
            assert 1 <= first_outstanding <= sequence
            self.submits.append((node_id, client_id, sequence))
            if self.leader != node_id:
                leader_address = None if self.leader is None else address_of(self.leader)
                return answer(request, ["not_leader", self.leader, leader_address])
            key = (client_id, sequence)
            if key not in self.sessions:
                if self.before_apply is not None:
                    await self.before_apply(node_id, sequence)
                if command == b"boom":
                    self.commands.append(command)
                    self.sessions[key] = ("error", "KeyError", "boom")
                else:
                    self.commands.append(command)
                    self.sessions[key] = len(self.commands)
            if self.after_apply is not None:
                await self.after_apply(node_id, sequence)
            result = self.sessions[key]
            if isinstance(result, tuple):
                return answer(request, list(result))
            return answer(request, ["ok", result])
        if request.method == "query":
            query, stale = msgpack.unpackb(request.body, raw=False)
            if self.leader != node_id and not stale:
                return answer(request, ["not_leader", self.leader, None])
            return answer(request, ["ok", [query.decode(), stale, len(self.commands)]])
        if request.method == "status":
            body = msgpack.packb(
                {
                    "id": node_id,
                    "role": "leader" if self.leader == node_id else "follower",
                    "term": 3,
                    "leader_id": self.leader,
                    "commit_index": len(self.commands),
                    "last_applied": len(self.commands),
                    "last_log_index": len(self.commands),
                    "snapshot_index": 0,
                    "storage_error": None,
                    "members": [
                        {"id": i, "address": address_of(i), "voter": True} for i in self.node_ids
                    ],
                }
            )
            return Response(request_id=request.request_id, ok=True, body=body)
        if request.method == "members":
            change = msgpack.unpackb(request.body, raw=False)
            if self.leader != node_id:
                return answer(request, ["not_leader", self.leader, None])
            if change[0] == "transfer":
                return answer(request, ["ok", change[1] or "n2"])
            if change[0] == "remove" and change[1] not in self.node_ids:
                return answer(request, ["failed", f"{change[1]} is not a member"])
            return answer(request, ["ok", None])
        return Response(request_id=request.request_id, ok=False, body=b"unknown method")

    async def serve(
        self, node_id: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        transport = self.network.transport(node_id, address_of(node_id))

        async def handler(requester: str, request: Request) -> Response:
            return await self.handle(node_id, requester, request)

        stopped = self.stopped[node_id] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self.scopes[node_id] = scope
                await transport.serve(
                    node_id,
                    lambda _s, _m: None,
                    lambda _p: None,
                    handle_request=handler,
                    task_status=task_status,
                )
        finally:
            stopped.set()

    async def crash(self, node_id: str) -> None:
        # Wait until it is really down: a request to a transport whose serve() is still
        # unwinding would reach a closing nursery.
        self.scopes.pop(node_id).cancel()
        await self.stopped[node_id].wait()

    async def start(self, node_id: str) -> None:
        assert self.nursery is not None
        await self.nursery.start(self.serve, node_id)


@asynccontextmanager
async def fake_cluster(
    node_ids: tuple[str, ...] = ("n1", "n2", "n3"), *, leader: str | None = "n1"
) -> AsyncIterator[FakeCluster]:
    cluster = FakeCluster(MemoryNetwork(seed=1), list(node_ids))
    cluster.leader = leader
    async with trio.open_nursery() as nursery:
        cluster.nursery = nursery
        for node_id in node_ids:
            await cluster.start(node_id)
        yield cluster
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_of(
    cluster: FakeCluster, *, call_timeout: float = 10.0, seed: int = 7
) -> AsyncIterator[RaftClient]:
    async with connect(
        [address_of(i) for i in cluster.node_ids],
        client_id=CLIENT,
        timeout=call_timeout,
        rng=random.Random(seed),
        _rpc=cluster.network.client(CLIENT),
    ) as client:
        yield client


async def test_apply_returns_the_result_and_numbers_commands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        assert await client.apply(b"a") == 1
        assert await client.apply(b"b") == 2
        assert cluster.commands == [b"a", b"b"]
        sequences = [seq for _node, _c, seq in cluster.submits if _node == "n1"]
        assert sequences == [1, 2]


async def test_follows_leader_hints_and_remembers_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster(leader="n3") as cluster, client_of(cluster) as client:
        await client.apply(b"a")
        first = len(cluster.submits)
        await client.apply(b"b")
        # The second command goes straight to the leader it learned about.
        assert [node for node, _c, _s in cluster.submits[first:]] == ["n3"]


async def test_leader_change_mid_stream_keeps_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        results = []
        for i in range(30):
            if i == 10:
                cluster.leader = "n2"
            if i == 20:
                cluster.leader = None  # an election in progress...

                async def elect() -> None:
                    await trio.sleep(2.0)
                    cluster.leader = "n3"

                assert cluster.nursery is not None
                cluster.nursery.start_soon(elect)
            results.append(await client.apply(f"c{i}".encode()))
        assert results == list(range(1, 31))
        assert cluster.commands == [f"c{i}".encode() for i in range(30)]


async def test_connection_loss_retries_elsewhere(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        assert await client.apply(b"before") == 1
        await cluster.crash("n1")  # the leader's process dies: connections are refused
        cluster.leader = None

        async def elect() -> None:
            await trio.sleep(1.5)
            cluster.leader = "n2"

        assert cluster.nursery is not None
        cluster.nursery.start_soon(elect)
        start = trio.current_time()
        assert await client.apply(b"after") == 2
        assert trio.current_time() - start >= 1.5
        assert cluster.commands == [b"before", b"after"]


async def test_a_lost_answer_is_retried_with_the_same_sequence_and_applied_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster, call_timeout=10.0) as client:
        hung: list[int] = []

        async def hang_once(node_id: str, sequence: int) -> None:
            # Applied, but the first answer never leaves: the client times out and retries.
            if not hung:
                hung.append(sequence)
                await trio.sleep_forever()

        cluster.after_apply = hang_once
        assert await client.apply(b"once") == 1
        assert hung == [1]
        assert cluster.commands == [b"once"]
        sequences = [seq for _n, _c, seq in cluster.submits]
        assert len(sequences) >= 2 and set(sequences) == {1}


async def test_a_lost_connection_after_sending_is_retried_and_applied_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:

        async def fail_over(node_id: str, sequence: int) -> None:
            # The leader applies the command, then is cut off before it can answer; n2 takes
            # over with the same (replicated) session table.
            cluster.network.partition({"n2", "n3", CLIENT}, {"n1"})
            cluster.leader = "n2"

        cluster.after_apply = fail_over
        assert await client.apply(b"x") == 1
        cluster.after_apply = None
        assert await client.apply(b"y") == 2
        assert cluster.commands == [b"x", b"y"]


async def test_concurrent_applies_get_distinct_sequences(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        results: list[object] = []

        async def one(i: int) -> None:
            results.append(await client.apply(f"p{i}".encode()))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert sorted(results) == list(range(1, 21))  # type: ignore[type-var]
        at_leader = [seq for node, _c, seq in cluster.submits if node == "n1"]
        assert sorted(at_leader) == list(range(1, 21))


async def test_outcome_unknown_when_the_leader_is_cut_off_after_the_request_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster, call_timeout=5.0) as client:

        async def cut_off(node_id: str, sequence: int) -> None:
            # The leader got the command but never commits it: it and the client are
            # partitioned from the others, which have no leader yet.
            cluster.network.partition({"n1", CLIENT}, {"n2", "n3"})
            await trio.sleep_forever()

        cluster.before_apply = cut_off
        start = trio.current_time()
        with pytest.raises(OutcomeUnknownError) as info:
            await client.apply(b"lost")
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.6)
        assert "may or may not" in str(info.value)
        assert cluster.commands == []


async def test_a_call_shorter_than_an_attempt_still_ends_at_its_own_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An attempt waits a third of the call, but at least a second; a call of 0.4 s whose
    first attempt goes to a leader that never answers still ends after 0.4 s, not 1 s."""
    async with fake_cluster() as cluster, client_of(cluster, call_timeout=5.0) as client:

        async def hang(node_id: str, requester: str, request: Request) -> Response:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        cluster.handle = hang  # type: ignore[method-assign]
        start = trio.current_time()
        with pytest.raises(OutcomeUnknownError):
            await client.apply(b"hangs", timeout=0.4)
        assert trio.current_time() - start == pytest.approx(0.4, abs=0.05)
        start = trio.current_time()
        with pytest.raises(ClusterUnavailableError):  # a query has no outcome to be unsure of
            await client.query(b"hangs too", timeout=0.4)
        assert trio.current_time() - start == pytest.approx(0.4, abs=0.05)


async def test_outcome_unknown_after_an_unknown_answer_then_only_refusals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster, call_timeout=3.0) as client:
        raise_unknown: list[int] = []
        original = cluster.handle

        async def handle(node_id: str, requester: str, request: Request) -> Response:
            if request.method == "submit" and not raise_unknown:
                raise_unknown.append(1)
                cluster.leader = None  # leadership lost before commit
                return answer(request, ["unknown", "leadership lost"])
            return await original(node_id, requester, request)

        cluster.handle = handle  # type: ignore[method-assign]
        with pytest.raises(OutcomeUnknownError) as info:
            await client.apply(b"maybe")
        assert "leadership lost" in info.value.reason


async def test_unknown_answer_then_success_returns_the_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        original = cluster.handle
        answered: list[int] = []

        async def handle(node_id: str, requester: str, request: Request) -> Response:
            if request.method == "submit" and not answered:
                answered.append(1)
                return answer(request, ["unknown", "leadership lost"])
            return await original(node_id, requester, request)

        cluster.handle = handle  # type: ignore[method-assign]
        assert await client.apply(b"z") == 1
        assert cluster.commands == [b"z"]


async def test_cluster_unavailable_when_no_node_is_reachable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster, call_timeout=2.0) as client:
        for node_id in list(cluster.node_ids):
            await cluster.crash(node_id)
        start = trio.current_time()
        with pytest.raises(ClusterUnavailableError) as info:
            await client.apply(b"nowhere")
        assert trio.current_time() - start <= 2.0
        message = str(info.value)
        for node_id in cluster.node_ids:
            assert address_of(node_id) in message
        assert "connection refused" in info.value.reason
        assert set(info.value.addresses) == {address_of(i) for i in cluster.node_ids}


async def test_cluster_unavailable_when_no_leader_is_ever_known(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster(leader=None) as cluster, client_of(cluster, call_timeout=2.0) as client:
        with pytest.raises(ClusterUnavailableError, match="no leader known"):
            await client.apply(b"nobody")
        assert cluster.commands == []


async def test_wait_for_ready_before_the_cluster_elects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster(leader=None) as cluster:
        for node_id in list(cluster.node_ids):
            await cluster.crash(node_id)  # not even started yet
        async with client_of(cluster) as client:

            async def boot() -> None:
                await trio.sleep(1.0)
                for node_id in cluster.node_ids:
                    await cluster.start(node_id)
                await trio.sleep(2.0)
                cluster.leader = "n2"

            assert cluster.nursery is not None
            cluster.nursery.start_soon(boot)
            start = trio.current_time()
            assert await client.apply(b"first") == 1
            assert trio.current_time() - start >= 3.0


async def test_backoff_is_capped_and_jittered(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_cluster(leader=None) as cluster, client_of(cluster, call_timeout=5.0) as client:
        with pytest.raises(ClusterUnavailableError):
            await client.apply(b"x")
        # Attempts keep coming until the deadline (the cap is 0.5 s), not one long sleep.
        assert len(cluster.submits) >= 10


async def test_state_machine_error_is_raised_and_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        with pytest.raises(CommandFailedError) as info:
            await client.apply(b"boom")
        assert (info.value.type_name, info.value.message) == ("KeyError", "boom")
        assert cluster.commands == [b"boom"]
        assert [node for node, _c, _s in cluster.submits].count("n1") == 1


async def test_query_and_stale_query(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_cluster(leader="n2") as cluster, client_of(cluster) as client:
        await client.apply(b"a")
        assert await client.query(b"q") == ["q", False, 1]
        assert await client.query(b"q", stale=True) == ["q", True, 1]


async def test_status_lists_reachable_nodes(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        await cluster.crash("n3")
        statuses = await client.status()
        assert [s.id for s in statuses] == ["n1", "n2"]
        assert statuses[0].role is Role.LEADER
        assert statuses[1].leader_id == "n1"
        assert [m.id for m in statuses[0].members] == ["n1", "n2", "n3"]


async def test_membership_calls(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_cluster(leader="n2") as cluster, client_of(cluster) as client:
        await client.add_member("n4", "n4.sim:7000", voter=False)
        assert await client.transfer_leadership("n3") == "n3"
        with pytest.raises(MembershipChangeError, match="not a member"):
            await client.remove_member("n9")


async def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="addresses"):
        async with connect([]):
            pass
    with pytest.raises(ValueError, match="timeout"):
        async with connect("127.0.0.1:1", timeout=0):
            pass
    async with connect("127.0.0.1:1, 127.0.0.1:2") as client:
        assert client.addresses == ("127.0.0.1:1", "127.0.0.1:2")
        assert client.client_id.startswith("client-")
        with pytest.raises(TypeError):
            await client.apply("text")  # type: ignore[arg-type]
        for bad in (-1, 0, -0.5, float("nan"), True, "1"):
            with pytest.raises(ValueError, match="timeout"):
                await client.apply(b"x", timeout=bad)  # type: ignore[arg-type]


# -- Against a real in-memory cluster (RaftNode's request handler, sessions and forwarding) --


@asynccontextmanager
async def real_client(
    cluster: MemoryCluster, client_id: str = CLIENT, *, call_timeout: float = 10.0
) -> AsyncIterator[RaftClient]:
    async with connect(
        [cluster.address_of(i) for i in cluster.node_ids],
        client_id=client_id,
        timeout=call_timeout,
        rng=random.Random(11),
        _rpc=cluster.network.client(client_id),
    ) as client:
        yield client


def commands_of(cluster: MemoryCluster, node_id: str) -> list[bytes]:
    machine = cluster.state_machines[node_id]
    assert isinstance(machine, RecordingStateMachine)
    return machine.commands


async def test_real_cluster_wait_for_ready(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_memory_cluster(3, seed=1, start=False) as cluster,
        real_client(cluster) as client,
    ):

        async def boot() -> None:
            await trio.sleep(1.0)
            for node_id in cluster.node_ids:
                await cluster.start(node_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(boot)
            start = trio.current_time()
            assert await client.apply(b"first") == 1
            assert trio.current_time() - start >= 1.0


async def test_real_cluster_leader_crashes_mid_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_cluster(3, seed=2) as cluster, real_client(cluster) as client:
        sent = []
        for i in range(30):
            if i in (10, 20):
                leader = await cluster.wait_for_leader()
                await cluster.crash(leader.id)  # connections to it are refused from now on
                if i == 20:
                    await cluster.restart(
                        next(n for n in cluster.node_ids if n not in cluster.running)
                    )
            command = f"c{i}".encode()
            await client.apply(command)
            sent.append(command)
        leader = await cluster.wait_for_leader()
        await cluster.wait_applied(leader.status().commit_index, [leader.id])
        # Every acknowledged command is applied exactly once, in order.
        assert commands_of(cluster, leader.id) == sent


async def test_real_cluster_retried_command_is_applied_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=3)
    cut: list[bool] = []

    class CuttingMachine(RecordingStateMachine):
        def apply(self, command: bytes) -> object:
            if command == b"cut" and not cut:
                # The first node to apply it (the leader) cuts the client off before it can
                # answer: the client sees a timeout and retries the same sequence.
                cut.append(True)
                network.isolate(CLIENT)
            return super().apply(command)

    async with (
        open_memory_cluster(
            3, seed=3, network=network, state_machine_factory=CuttingMachine
        ) as cluster,
        real_client(cluster, call_timeout=20.0) as client,
    ):
        assert await client.apply(b"before") == 1

        async def heal_later() -> None:
            await trio.sleep(4.0)
            network.heal()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heal_later)
            start = trio.current_time()
            assert await client.apply(b"cut") == 2  # the first result, not a second apply
            assert trio.current_time() - start >= 4.0
        assert await client.apply(b"after") == 3
        leader = await cluster.wait_for_leader()
        index = leader.status().commit_index
        await cluster.wait_applied(index)
        for node_id in cluster.node_ids:
            assert commands_of(cluster, node_id) == [b"before", b"cut", b"after"]


async def test_real_cluster_outcome_unknown_when_the_leader_is_cut_off_before_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_cluster(3, seed=4) as cluster,
        real_client(cluster, call_timeout=5.0) as client,
    ):
        assert await client.apply(b"before") == 1
        leader = await cluster.wait_for_leader()
        others = [n for n in cluster.node_ids if n != leader.id]
        # The leader can hear the client but not its followers: it appends the command and
        # never commits it.
        cluster.network.partition({leader.id, CLIENT}, others)
        with pytest.raises(OutcomeUnknownError):
            await client.apply(b"limbo")
        for node_id in others:
            assert b"limbo" not in commands_of(cluster, node_id)


async def test_real_cluster_unavailable_when_every_node_is_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_cluster(3, seed=5) as cluster,
        real_client(cluster, call_timeout=3.0) as client,
    ):
        for node_id in list(cluster.running):
            await cluster.crash(node_id)
        with pytest.raises(ClusterUnavailableError, match="connection refused"):
            await client.apply(b"nowhere")


async def test_real_cluster_status_and_two_clients(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_cluster(3, seed=6) as cluster,
        real_client(cluster, "alice") as alice,
        real_client(cluster, "bob") as bob,
    ):
        # Both clients start at sequence 1: sessions are per client.
        assert await alice.apply(b"a1") == 1
        assert await bob.apply(b"b1") == 2
        statuses = await alice.status()
        assert len(statuses) == 3
        assert sum(s.role is Role.LEADER for s in statuses) == 1


async def test_membership_refusal_after_a_lost_answer_is_outcome_unknown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_cluster() as cluster, client_of(cluster) as client:
        original = cluster.handle
        calls: list[int] = []

        async def handle(node_id: str, requester: str, request: Request) -> Response:
            if request.method == "members" and node_id == "n1":
                calls.append(1)
                if len(calls) == 1:
                    await trio.sleep_forever()  # removed, but the answer is lost
                return answer(request, ["failed", "n3 is not a member"])
            return await original(node_id, requester, request)

        cluster.handle = handle  # type: ignore[method-assign]
        with pytest.raises(OutcomeUnknownError, match="not a member"):
            await client.remove_member("n3")


async def test_real_cluster_a_forwarded_answer_sends_the_client_to_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A follower forwards a command and relays the answer, naming the leader after the
    result: the client's next command goes to the leader, not through the follower again
    (before, having had its answer from the follower, it stayed there: a second hop for
    every command, half the throughput of ``connect()`` in the benchmark)."""
    async with open_memory_cluster(3, seed=5) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        network_client = cluster.network.client(CLIENT)
        sent_to: list[str] = []

        class Recording:
            async def request(
                self,
                address: str,
                method: str,
                body: bytes,
                *,
                timeout: float,  # noqa: ASYNC109
            ) -> Response:
                sent_to.append(address)
                return await network_client.request(address, method, body, timeout=timeout)

        async with connect(
            [cluster.address_of(follower)], client_id=CLIENT, rng=random.Random(1), _rpc=Recording()
        ) as client:
            assert await client.apply(b"a") == 1
            assert await client.apply(b"b") == 2
        assert sent_to == [cluster.address_of(follower), cluster.address_of(leader.id)]
        await cluster.wait_applied(leader.status().commit_index, [leader.id])
        assert commands_of(cluster, leader.id) == [b"a", b"b"]
