"""Requests to any node: a follower forwards a command to its leader (simulated cluster)."""

from __future__ import annotations

import msgpack
import trio

from tinyraft_trio._rpc import Request, Response
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


async def test_the_leader_answers_commands_without_a_task_and_says_unknown_when_deposed(
    autojump_clock: object,
) -> None:
    """The fast path for "apply" and "submit": taken only by a leader, answered by the
    applier once the entry applies, or "unknown" if leadership is lost first."""
    async with open_memory_cluster(3, seed=45) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(n for n in cluster.running.values() if n.id != leader.id)
        replies: list[list[object]] = []
        replied = trio.Event()

        def reply(response: Response) -> None:
            nonlocal replied
            replies.append(msgpack.unpackb(response.body))
            replied.set()
            replied = trio.Event()

        async def wait_for_replies(count: int) -> None:
            with trio.fail_after(30):
                while len(replies) < count:
                    await replied.wait()

        apply = Request(request_id=1, method="apply", body=b"fast")
        assert not follower._start_request("c", apply, reply)
        assert leader._start_request("c", apply, reply)
        submit = msgpack.packb(["client-a", 1, b"once", 1])
        assert leader._start_request(
            "c", Request(request_id=2, method="submit", body=submit), reply
        )
        assert not leader._start_request(
            "c", Request(request_id=3, method="status", body=b""), reply
        )
        await wait_for_replies(2)
        assert [r[0] for r in replies] == ["ok", "ok"]

        cluster.network.isolate(leader.id)
        assert leader._start_request("c", Request(request_id=4, method="apply", body=b"x"), reply)
        await wait_for_replies(3)
        assert replies[2][0] == "unknown"
