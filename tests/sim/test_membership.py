"""Membership changes and leadership transfer in simulated clusters (dissertation §3.10, §4)."""

from __future__ import annotations

import contextlib

import pytest
import trio

from tinyraft_trio import (
    LeadershipLostError,
    LeadershipTransferError,
    MembershipChangeError,
    NotLeaderError,
    RaftError,
    RaftNode,
    Role,
)
from tinyraft_trio.testing import MemoryCluster, open_memory_cluster


def commands(cluster: MemoryCluster, node_id: str) -> list[bytes]:
    return cluster.state_machines[node_id].commands  # type: ignore[attr-defined, no-any-return]


def voters(node: RaftNode) -> set[str]:
    return {m.id for m in node.status().members if m.voter}


def member_ids(node: RaftNode) -> set[str]:
    return {m.id for m in node.status().members}


async def leader_of(cluster: MemoryCluster) -> RaftNode:
    with trio.fail_after(10):
        return await cluster.wait_for_leader()


async def converge(cluster: MemoryCluster, *, among: list[str] | None = None) -> None:
    await cluster.apply(b"sync")
    leader = await leader_of(cluster)
    ids = among if among is not None else sorted(member_ids(leader))
    with trio.fail_after(10):
        await cluster.wait_applied(leader.status().commit_index, ids)
    reference = commands(cluster, leader.id)
    for node_id in ids:
        assert commands(cluster, node_id) == reference, node_id
    cluster.check_logs()


async def test_grow_from_one_to_three_to_five(autojump_clock: object) -> None:
    async with open_memory_cluster(1, seed=21) as cluster:
        leader = await leader_of(cluster)
        await cluster.apply(b"alone")
        for node_id in ("n2", "n3", "n4", "n5"):
            await cluster.start_new(node_id)
            await leader.add_member(node_id, cluster.address_of(node_id))
            await cluster.apply(f"after {node_id}".encode())
        assert voters(leader) == {"n1", "n2", "n3", "n4", "n5"}
        await converge(cluster)
        # Everyone agrees on the configuration, and it works: any two may fail.
        for node in cluster.running.values():
            assert voters(node) == {"n1", "n2", "n3", "n4", "n5"}
        await cluster.crash("n4")
        await cluster.crash("n5")
        await cluster.apply(b"still a majority")


async def test_shrink_five_to_three_and_remove_the_leader(autojump_clock: object) -> None:
    async with open_memory_cluster(5, seed=22) as cluster:
        leader = await leader_of(cluster)
        followers = [i for i in cluster.node_ids if i != leader.id]
        await leader.remove_member(followers[0])
        await leader.remove_member(followers[1])
        assert voters(leader) == {leader.id, *followers[2:]}
        await cluster.apply(b"three left")
        # Removing the leader: it steps down once the change commits; the rest elect.
        await leader.remove_member(leader.id)
        assert leader.status().role is Role.FOLLOWER
        with trio.fail_after(10):
            await cluster.wait_until(
                lambda: any(n.status().role is Role.LEADER for n in cluster.leaders())
            )
        new_leader = await leader_of(cluster)
        assert new_leader.id != leader.id
        assert voters(new_leader) == set(followers[2:])
        await cluster.apply(b"two left")
        await trio.sleep(5)  # the removed nodes must not disturb the rest
        assert (await leader_of(cluster)).id == new_leader.id
        await converge(cluster, among=followers[2:])


async def test_replace_a_node(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=23) as cluster:
        leader = await leader_of(cluster)
        old = next(i for i in cluster.node_ids if i != leader.id)
        await cluster.crash(old)
        await cluster.start_new("n9")
        await leader.add_member("n9", cluster.address_of("n9"))
        await leader.remove_member(old)
        assert voters(leader) == {*cluster.node_ids} - {old}
        await converge(cluster, among=sorted(voters(leader)))


async def test_learners_do_not_count_towards_the_quorum(autojump_clock: object) -> None:
    """A 2-voter + 3-learner cluster cannot commit with one voter down."""
    async with open_memory_cluster(2, seed=24) as cluster:
        leader = await leader_of(cluster)
        for node_id in ("n3", "n4", "n5"):
            await cluster.start_new(node_id)
            await leader.add_member(node_id, cluster.address_of(node_id), voter=False)
        assert voters(leader) == {"n1", "n2"}
        await converge(cluster)
        other_voter = next(i for i in ("n1", "n2") if i != leader.id)
        await cluster.crash(other_voter)
        with trio.move_on_after(5), pytest.raises(LeadershipLostError):
            await leader.apply(b"cannot commit")  # it loses its quorum first (check-quorum)
        await trio.sleep(5)
        for node_id, machine in cluster.state_machines.items():
            assert b"cannot commit" not in machine.commands, node_id  # type: ignore[attr-defined]
        for learner in ("n3", "n4", "n5"):
            assert cluster.node(learner).status().role is Role.FOLLOWER


async def test_join_and_remove_during_partitions(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=25) as cluster:
        leader = await leader_of(cluster)
        follower = next(i for i in cluster.node_ids if i != leader.id)
        cluster.network.isolate(follower)
        await cluster.start_new("n4")
        await leader.add_member("n4", cluster.address_of("n4"))  # commits with leader + other
        cluster.network.heal()
        await converge(cluster)
        # A change without a quorum never commits, and refuses a second change meanwhile.
        others = [i for i in cluster.node_ids if i != leader.id]
        cluster.network.partition([leader.id], others)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_try_remove, leader, "n4")
            await trio.sleep(0.1)
            with pytest.raises((MembershipChangeError, NotLeaderError)):
                await leader.remove_member(follower)
            nursery.cancel_scope.deadline = trio.current_time() + 3
        cluster.network.heal()
        await converge(cluster)


async def _try_remove(node: RaftNode, node_id: str) -> None:
    with contextlib.suppress(RaftError):  # outcome unknown once leadership is lost
        await node.remove_member(node_id)


async def test_bad_membership_requests_are_refused(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=26) as cluster:
        leader = await leader_of(cluster)
        await trio.sleep(1)  # followers answer heartbeats: they are live
        with pytest.raises(MembershipChangeError, match="not a member"):
            await leader.remove_member("nobody")
        follower = next(i for i in cluster.node_ids if i != leader.id)
        with pytest.raises(MembershipChangeError, match="live member"):
            await leader.add_member(follower, "elsewhere:1")
        with pytest.raises(NotLeaderError):
            await cluster.node(follower).add_member("n9", "n9.sim:7000")
        await leader.add_member(follower, cluster.address_of(follower))  # no-op
        assert member_ids(leader) == set(cluster.node_ids)


async def test_membership_survives_restarting_every_node(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=27, snapshot_threshold=20) as cluster:
        leader = await leader_of(cluster)
        await cluster.start_new("n4")
        await leader.add_member("n4", cluster.address_of("n4"), voter=False)
        for i in range(40):
            await cluster.apply(f"c{i}".encode())
        for node_id in list(cluster.running):
            await cluster.crash(node_id)
        for node_id in cluster.node_ids:
            await cluster.start(node_id)
        leader = await leader_of(cluster)
        assert member_ids(leader) == {"n1", "n2", "n3", "n4"}
        assert voters(leader) == {"n1", "n2", "n3"}
        await converge(cluster)


async def test_transfer_leadership_to_a_chosen_node_and_to_the_default(
    autojump_clock: object,
) -> None:
    async with open_memory_cluster(3, seed=28) as cluster:
        leader = await leader_of(cluster)
        target = sorted(i for i in cluster.node_ids if i != leader.id)[0]
        start = trio.current_time()
        assert await leader.transfer_leadership(target) == target
        assert trio.current_time() - start < 0.5  # no election timeout to wait for
        assert cluster.node(target).status().role is Role.LEADER
        new_leader = cluster.node(target)
        chosen = await new_leader.transfer_leadership()
        assert chosen != target
        assert cluster.node(chosen).status().role is Role.LEADER
        await converge(cluster)


async def test_transfer_to_a_lagging_node_catches_it_up_first(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=29) as cluster:
        leader = await leader_of(cluster)
        laggard = next(i for i in cluster.node_ids if i != leader.id)
        cluster.network.isolate(laggard)
        for i in range(30):
            await cluster.apply(f"c{i}".encode())
        cluster.network.heal()
        assert await leader.transfer_leadership(laggard) == laggard
        assert len(commands(cluster, laggard)) >= 0
        await converge(cluster)


async def test_transfer_times_out_and_the_old_leader_resumes(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=30) as cluster:
        leader = await leader_of(cluster)
        target = next(i for i in cluster.node_ids if i != leader.id)
        await cluster.crash(target)
        with pytest.raises(LeadershipTransferError, match="leads on"):
            await leader.transfer_leadership(target)
        assert leader.status().role is Role.LEADER
        await leader.apply(b"accepted again")


async def test_nodes_join_by_asking_any_member(autojump_clock: object) -> None:
    """A node started with join addresses asks a member, which forwards to the leader."""
    async with open_memory_cluster(3, seed=31) as cluster:
        leader = await leader_of(cluster)
        await cluster.start_new("n4", join=True)
        await cluster.start_new("n5", join=True)
        with trio.fail_after(20):
            await cluster.wait_until(lambda: voters(leader) == {"n1", "n2", "n3", "n4", "n5"})
        await converge(cluster)
        # Asking again after a restart is a no-op.
        await cluster.restart("n4")
        await trio.sleep(5)
        assert voters(await leader_of(cluster)) == {"n1", "n2", "n3", "n4", "n5"}


async def test_a_node_without_peers_bootstrap_or_join_waits(autojump_clock: object) -> None:
    """It must never form a cluster of its own."""
    async with open_memory_cluster(1, seed=32) as cluster:
        leader = await leader_of(cluster)
        lonely = await cluster.start_new("n2")
        await trio.sleep(10)
        assert lonely.status().role is Role.FOLLOWER
        assert lonely.status().term == 0
        await leader.add_member("n2", cluster.address_of("n2"), voter=False)
        await converge(cluster)


async def test_a_change_without_a_quorum_is_refused_at_once(autojump_clock: object) -> None:
    """Refused with a clear error, never left pending: MembershipChangeError while the cut-off
    leader still leads, NotLeaderError once check-quorum has stepped it down."""
    async with open_memory_cluster(3, seed=33) as cluster:
        leader = await leader_of(cluster)
        await cluster.apply(b"x")
        others = [i for i in cluster.node_ids if i != leader.id]
        timeout = leader.config.election_timeout
        cluster.network.partition([leader.id], others)

        def followers_silent() -> bool:
            return all(
                m.last_contact is not None and m.last_contact > timeout
                for m in leader.status().members
                if m.id != leader.id
            )

        # Staleness grows with (virtual) time, not with events: step through time.
        for _ in range(int(3 * timeout / 0.001)):
            if leader.status().role is not Role.LEADER or followers_silent():
                break
            await trio.sleep(0.001)
        expected = MembershipChangeError if leader.status().role is Role.LEADER else NotLeaderError
        with pytest.raises(expected):
            await leader.remove_member(others[0])
        assert member_ids(leader) == set(cluster.node_ids)
