"""A real three-node cluster over TCP on 127.0.0.1, in one Trio program."""

from __future__ import annotations

import logging

import msgpack
import pytest
import trio
from support import TcpCluster, running_cluster

from tinyraft_trio import LeadershipLostError, NodeClosedError, NotLeaderError, Role
from tinyraft_trio._rpc import RpcClient, TransportError, open_rpc_client


async def test_three_nodes_over_tcp_apply_commands_and_survive_leader_shutdown() -> None:
    """Election, 1,000 commands, leader shut down, new leader, equal state machines."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = TcpCluster(nursery, 3)
            for node_id in cluster.peers:
                await cluster.start(node_id)
            leader = await cluster.leader()

            async def propose(worker: int) -> None:
                for i in range(100):
                    await leader.apply(f"w{worker}-{i}".encode())

            async with trio.open_nursery() as clients:
                for worker in range(10):
                    clients.start_soon(propose, worker)
            assert len(cluster.machines[leader.id].commands) == 1000

            await cluster.stop(leader.id)
            new_leader = await cluster.leader()
            assert new_leader.id != leader.id
            await new_leader.apply(b"after-failover")
            target = new_leader.status().commit_index
            for node in cluster.nodes.values():
                await node.wait_applied(target)
            first, second = (cluster.machines[i].commands for i in cluster.nodes)
            assert first == second
            assert len(first) == 1001
            assert cluster.machines[leader.id].commands == first[:1000]
            nursery.cancel_scope.cancel()


async def test_leaving_the_context_hands_leadership_over_without_an_election(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shutting a leader down transfers leadership first (TimeoutNow), not by election timeout."""
    caplog.set_level(logging.INFO, logger="tinyraft_trio.node")
    with trio.fail_after(30):
        async with running_cluster() as cluster:
            leader = await cluster.leader()
            await leader.apply(b"before")
            term = leader.status().term
            await cluster.stop(leader.id)
            new_leader = await cluster.leader()
            assert new_leader.status().term == term + 1  # one election: the transfer's
            handed = f"{leader.id}: handed leadership to {new_leader.id} before stopping"
            assert handed in caplog.messages
            await new_leader.apply(b"after")


@pytest.mark.parametrize("stopping", ["follower", "leader"])
async def test_a_node_shut_down_gracefully_answers_every_request_it_took(stopping: str) -> None:
    """Clients keep writing through one node while it shuts down. Each request it took gets
    its answer: the result (it forwarded the command to the leader and relayed the answer),
    or where the leader is (not applied). None is left with its outcome unknown, as when the
    node closed its connections with requests still being forwarded."""
    with trio.fail_after(30):
        async with running_cluster() as cluster:
            node_id = await cluster.committing(stopping)
            address = cluster.peers[node_id]
            outcomes: list[str] = []
            writing = trio.Event()

            async def write(client: RpcClient, worker: int) -> None:
                for i in range(10_000):
                    try:
                        response = await client.request(
                            address, "apply", b"w%d-%d" % (worker, i), timeout=5
                        )
                    except TransportError as exc:
                        outcomes.append(f"lost: {exc}")
                        return
                    outcome = msgpack.unpackb(response.body)[0]
                    outcomes.append(outcome)
                    if len(outcomes) >= 200:
                        writing.set()  # every writer is under way
                    if outcome == "not_leader":
                        return  # a client goes to the leader it was told of

            async with (
                open_rpc_client(client_id="writer", cluster_id="tinyraft") as client,
                trio.open_nursery() as writers,
            ):
                for worker in range(20):
                    writers.start_soon(write, client, worker)
                await writing.wait()
                await cluster.stop(node_id)
            unknown = [o for o in outcomes if o not in ("ok", "not_leader")]
            assert not unknown, unknown
            assert outcomes.count("ok") > 20


@pytest.mark.parametrize("stopping", ["follower", "leader"])
async def test_a_node_shut_down_gracefully_answers_its_own_callers(stopping: str) -> None:
    """The same for callers of the node's own ``apply`` (as the HTTP API of the command line
    is): each gets its result, or an error saying that the command was certainly not applied
    (``NotLeaderError`` while the node drains, ``NodeClosedError`` once it is closed). None
    gets ``LeadershipLostError``, as when a follower closed with its callers' commands still
    on their way to the leader. A follower's reads, which it also forwards, are served or
    redirected too (a leader's may fail while it hands over: a read is safe to retry)."""
    with trio.fail_after(30):
        async with running_cluster() as cluster:
            node_id = await cluster.committing(stopping)
            node = cluster.nodes[node_id]
            writes: list[str] = []
            reads: list[str] = []
            busy = trio.Event()

            async def call(worker: int) -> None:
                reading = worker % 4 == 3
                outcomes = reads if reading else writes
                for i in range(10_000):
                    try:
                        if reading:
                            await node.read_barrier()
                        else:
                            await node.apply(b"w%d-%d" % (worker, i))
                    except (NotLeaderError, NodeClosedError) as exc:
                        outcomes.append(type(exc).__name__)
                        return  # certainly not applied: a client would go to the leader
                    except LeadershipLostError as exc:
                        outcomes.append(f"unknown: {exc}")
                        return
                    outcomes.append("ok")
                    if len(writes) >= 200:
                        busy.set()  # every caller is under way

            async with trio.open_nursery() as callers:
                for worker in range(20):
                    callers.start_soon(call, worker)
                await busy.wait()
                await cluster.stop(node_id)
            unknown = [o for o in writes if o.startswith("unknown")]
            assert not unknown, unknown
            assert writes.count("ok") > 20
            if stopping == "follower":
                assert not [o for o in reads if o.startswith("unknown")], reads
                assert reads.count("ok") > 5


async def test_winding_down_early_hands_over_and_drains_once() -> None:
    """``wind_down`` before leaving the block (as the command line does, to keep its HTTP API
    answering meanwhile): leadership moves, the node redirects its callers, and leaving the
    block then closes without draining again."""
    with trio.fail_after(30):
        async with running_cluster() as cluster:
            node_id = await cluster.committing("leader")
            node = cluster.nodes[node_id]
            drains = 0
            drain = node.drain

            async def counted_drain() -> None:
                nonlocal drains
                drains += 1
                await drain()

            node.drain = counted_drain  # type: ignore[method-assign]
            await node.wind_down()
            assert drains == 1
            assert node.status().role is not Role.LEADER
            with pytest.raises(NotLeaderError) as raised:
                await node.apply(b"after")
            assert raised.value.leader_id not in (None, node_id)
            await cluster.stop(node_id)
            assert drains == 1
            assert (await cluster.leader()).id == raised.value.leader_id
