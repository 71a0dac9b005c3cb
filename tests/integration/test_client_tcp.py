"""The client over real TCP, against a three-node cluster of ``open_raft_node`` on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio
from support import TcpCluster, free_loopback_ports

from tinyraft_trio._client import RaftClient, connect
from tinyraft_trio._exceptions import ClusterUnavailableError


async def test_client_applies_through_any_node_and_survives_the_leader_going_away() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cluster = TcpCluster(nursery, 3)
            addresses = list(cluster.peers.values())
            # The client exists before any node does: it waits for the cluster (wait-for-ready).
            async with connect(addresses, client_id="tcp-client", timeout=20.0) as client:

                async def boot() -> None:
                    await trio.sleep(0.2)
                    for node_id in cluster.peers:
                        await cluster.start(node_id)

                nursery.start_soon(boot)
                sent = []
                for i in range(40):
                    if i == 20:
                        cluster.kill((await cluster.leader()).id)
                    command = f"c{i}".encode()
                    await client.apply(command)
                    sent.append(command)

                statuses = await client.status()
                assert len(statuses) == 2  # the killed node does not answer
                leader = await cluster.leader()
                target = leader.status().commit_index
                for node in cluster.nodes.values():
                    await node.wait_applied(target)
                for node_id in cluster.nodes:
                    # Each command exactly once, in order, on every live node.
                    assert cluster.machines[node_id].commands == sent
            nursery.cancel_scope.cancel()


async def test_concurrent_clients_over_tcp() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cluster = TcpCluster(nursery, 3)
            for node_id in cluster.peers:
                await cluster.start(node_id)
            addresses = ",".join(cluster.peers.values())
            expected: set[bytes] = set()
            async with connect(addresses) as one, connect(addresses) as two:
                assert one.client_id != two.client_id

                async def worker(client_number: int, client: RaftClient) -> None:
                    for i in range(25):
                        command = f"w{client_number}-{i}".encode()
                        expected.add(command)
                        await client.apply(command)

                async with trio.open_nursery() as workers:
                    for number in range(4):
                        workers.start_soon(worker, number, one if number % 2 else two)
            leader = await cluster.leader()
            commands = cluster.machines[leader.id].commands
            assert sorted(commands) == sorted(expected)
            nursery.cancel_scope.cancel()


async def test_concurrent_queries_over_tcp_see_every_write_acknowledged_before_them() -> None:
    """Hundreds of queries in flight from one client go in batches (``_batching``), end to
    end: each gets an answer, and it counts every command acknowledged before it was sent."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cluster = TcpCluster(nursery, 3)
            for node_id in cluster.peers:
                await cluster.start(node_id)
            acknowledged = 0
            answers: list[tuple[int, object]] = []
            async with connect(list(cluster.peers.values()), client_id="reader") as client:

                async def writer() -> None:
                    nonlocal acknowledged
                    for i in range(60):
                        await client.apply(b"w%d" % i)
                        acknowledged += 1

                async def reader() -> None:
                    for _ in range(10):
                        before = acknowledged
                        answers.append((before, await client.query(b"how many")))

                async with trio.open_nursery() as workers:
                    workers.start_soon(writer)
                    for _ in range(200):
                        workers.start_soon(reader)
            assert len(answers) == 2000
            for before, count in answers:
                assert isinstance(count, int) and count >= before
            assert any(count for _, count in answers)
            nursery.cancel_scope.cancel()


async def test_unreachable_cluster_is_unavailable_quickly() -> None:
    addresses = [f"127.0.0.1:{port}" for port in free_loopback_ports(2)]
    with trio.fail_after(10):
        async with connect(addresses, timeout=1.0) as client:
            with pytest.raises(ClusterUnavailableError) as info:
                await client.apply(b"x")
            assert all(address in str(info.value) for address in addresses)
            assert await client.status() == []
