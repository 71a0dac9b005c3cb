"""Elections in a simulated cluster, in virtual time (Raft §5.2, dissertation §9.6)."""

from __future__ import annotations

import trio

from tinyraft_trio import Role
from tinyraft_trio.testing import open_memory_cluster


async def test_three_nodes_elect_one_leader(autojump_clock: trio.testing.MockClock) -> None:
    """Reference: §5.2. A fresh cluster elects exactly one leader, and everyone follows it."""
    async with open_memory_cluster(3, seed=1) as cluster:
        leader = await cluster.wait_for_leader()
        await cluster.wait_until(
            lambda: all(n.status().leader_id == leader.id for n in cluster.running.values())
        )
        roles = sorted(n.status().role.value for n in cluster.running.values())
        assert roles == ["follower", "follower", "leader"]
        assert await cluster.apply(b"hello") == 1
        await cluster.wait_applied(leader.status().commit_index)
        for sm in cluster.state_machines.values():
            assert sm.commands == [b"hello"]  # type: ignore[attr-defined]
        assert leader.status().role is Role.LEADER
