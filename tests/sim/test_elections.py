"""Elections in a simulated cluster, in virtual time (Raft §5.2, dissertation §9.6)."""

from __future__ import annotations

import trio

from tinyraft_trio import Role
from tinyraft_trio.testing import open_memory_cluster
from tinyraft_trio.testing._cluster import MemoryCluster
from tinyraft_trio.testing._network import MemoryNetwork


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


async def failover_time(cluster: MemoryCluster) -> float:
    """Crash the leader; the virtual time until another node leads."""
    old = await cluster.wait_for_leader()
    await trio.sleep(1)  # steady state: followers heard from the leader just now
    crashed_at = trio.current_time()
    await cluster.crash(old.id)
    await cluster.wait_until(lambda: bool(cluster.leaders()))
    return trio.current_time() - crashed_at


async def test_followers_campaign_soon_when_their_leaders_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reference: §4.2.3 and §9.6. A crashed leader's connections close: its followers stop
    deferring to it and campaign within a heartbeat interval, not an election timeout."""
    for seed in range(5):
        async with open_memory_cluster(
            3, seed=seed, election_timeout=5.0, heartbeat_interval=0.1
        ) as cluster:
            assert await failover_time(cluster) < 0.5


async def test_followers_that_campaign_soon_do_not_split_the_vote(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both followers of a crashed 3-node leader see its connection close at once. Were their
    early campaigns only jittered, those starting within a vote round of each other would
    split the vote (each votes for itself), and the cluster would wait a whole election
    timeout (5 s here) for the next try. Messages take 1-3 ms, so a round takes several."""
    slow = []
    for seed in range(40):
        network = MemoryNetwork(seed=seed, delay=(0.001, 0.003))
        async with open_memory_cluster(
            3, seed=seed, network=network, election_timeout=5.0, heartbeat_interval=0.1
        ) as cluster:
            took = await failover_time(cluster)
            if took >= 0.5:
                slow.append((seed, took))
    assert slow == []


async def test_in_lease_read_mode_followers_wait_out_the_election_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A lease-mode leader answers reads alone until its lease ends, so no follower may vote
    for another before then, connection or not."""
    async with open_memory_cluster(
        3, seed=7, election_timeout=5.0, heartbeat_interval=0.1, read_mode="lease"
    ) as cluster:
        assert await failover_time(cluster) >= 5.0


async def test_a_live_leader_keeps_its_place_when_one_follower_forgets_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reference: §4.2.3. One follower's closed connection does not depose a leader that a
    majority still hears from: the other follower refuses the candidate."""
    async with open_memory_cluster(3, seed=8, election_timeout=1.0) as cluster:
        leader = await cluster.wait_for_leader()
        term = leader.status().term
        follower = next(n for n in cluster.running.values() if n.id != leader.id)
        await trio.sleep(0.5)
        follower._peer_gone(leader.id)
        assert follower.status().leader_id is None
        await trio.sleep(5)
        assert leader.status().role is Role.LEADER and leader.status().term == term
        assert follower.status().leader_id == leader.id


async def test_a_pause_of_the_whole_machine_deposes_no_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every node stops for four election timeouts at once (a virtual machine paused, a
    laptop's lid closed). When they run again every timer is overdue, and the leader's
    check-quorum (dissertation §6.2) is due in the same scheduler round as the reads of what
    arrived meanwhile: it must not judge the followers by silence it caused itself. Five
    pauses, at different points of the heartbeat cycle, on three seeds."""
    for seed in range(3):
        async with open_memory_cluster(
            3, seed=seed, election_timeout=0.5, heartbeat_interval=0.1
        ) as cluster:
            leader = await cluster.wait_for_leader()
            term = leader.status().term
            for pause in range(5):
                await trio.sleep(0.21 + 0.013 * pause)
                autojump_clock.jump(2.0)
                await trio.sleep(1.0)
                status = leader.status()
                assert (status.role, status.term) == (Role.LEADER, term), (seed, pause)
            assert await cluster.apply(b"after the pauses") is not None
