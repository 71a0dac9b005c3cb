"""Requests to any node: a follower forwards a command to its leader (simulated cluster)."""

from __future__ import annotations

import msgpack
import trio

from tinyraft_trio.testing import open_memory_cluster


async def test_any_node_applies_a_command_by_forwarding_to_the_leader(
    autojump_clock: object,
) -> None:
    async with open_memory_cluster(3, seed=41) as cluster:
        leader = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        positions = []
        for node_id in cluster.node_ids:  # the leader and both followers
            response = await client.request(
                cluster.address_of(node_id), "apply", f"via {node_id}".encode(), timeout=5
            )
            assert response.ok
            kind, position = msgpack.unpackb(response.body)
            assert kind == "ok"
            positions.append(position)
        assert positions == [1, 2, 3]
        await cluster.wait_applied(leader.status().commit_index)
        for machine in cluster.state_machines.values():
            assert machine.commands == [b"via n1", b"via n2", b"via n3"]  # type: ignore[attr-defined]


async def test_status_and_unknown_methods(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=42) as cluster:
        leader = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        response = await client.request(cluster.address_of(leader.id), "status", b"", timeout=5)
        status = msgpack.unpackb(response.body)
        assert (status["id"], status["role"]) == (leader.id, "leader")
        response = await client.request(cluster.address_of(leader.id), "nope", b"", timeout=5)
        assert not response.ok and b"unknown method" in response.body


async def test_without_a_leader_a_follower_says_so(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=43) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        await cluster.crash(leader.id)
        others = [i for i in cluster.node_ids if i not in (leader.id, follower)]
        cluster.network.partition([follower, "client-1"], others)
        client = cluster.network.client("client-1")
        with trio.fail_after(30):
            response = await client.request(cluster.address_of(follower), "apply", b"x", timeout=20)
        assert not response.ok
        assert msgpack.unpackb(response.body)[0] in ("not_leader", "unknown")


async def test_a_followers_own_apply_is_forwarded_to_the_leader(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=44) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(n for n in cluster.running.values() if n.id != leader.id)
        assert await follower.apply(b"from a follower") == 1
        await cluster.wait_applied(leader.status().commit_index)
        for machine in cluster.state_machines.values():
            assert machine.commands == [b"from a follower"]  # type: ignore[attr-defined]
