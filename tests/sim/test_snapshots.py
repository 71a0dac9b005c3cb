"""Snapshots, log compaction and InstallSnapshot in simulated clusters (Raft §7, Figure 13)."""

from __future__ import annotations

import msgpack
import trio

from tinyraft_trio import RaftNode, Role
from tinyraft_trio.testing import MemoryCluster, MemoryNetwork, open_memory_cluster

SMALL = {"snapshot_threshold": 20, "trailing_entries": 5, "snapshot_chunk_bytes": 64}


def commands(cluster: MemoryCluster, node_id: str) -> list[bytes]:
    return cluster.state_machines[node_id].commands  # type: ignore[attr-defined, no-any-return]


def log_length(node: RaftNode) -> int:
    log = node._running_core().log
    return log.last_index - log.first_index + 1


async def apply_many(cluster: MemoryCluster, count: int, prefix: str = "c") -> None:
    leader = await cluster.wait_for_leader()
    async with trio.open_nursery() as nursery:
        for worker in range(4):

            async def run(worker: int = worker) -> None:
                for i in range(worker, count, 4):
                    await leader.apply(f"{prefix}{i}".encode())

            nursery.start_soon(run)


async def converge(cluster: MemoryCluster) -> None:
    await cluster.apply(b"final")
    leader = await cluster.wait_for_leader()
    await cluster.wait_applied(leader.status().commit_index)
    reference = commands(cluster, leader.id)
    for node_id in cluster.running:
        assert commands(cluster, node_id) == reference, node_id
    cluster.check_logs()


async def test_follower_far_behind_receives_a_snapshot(autojump_clock: object) -> None:
    """Reference: §7. A follower whose next entry was compacted away gets InstallSnapshot."""
    async with open_memory_cluster(3, seed=3, **SMALL) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        await cluster.crash(follower)
        await apply_many(cluster, 200)
        assert leader.status().snapshot_index >= 150
        assert leader._running_core().log.first_index > 100
        node = await cluster.start(follower)
        with trio.fail_after(10):
            await converge(cluster)
        status = node.status()
        assert status.snapshot_index > 100  # it was caught up by a snapshot, not the log
        assert len(commands(cluster, follower)) == 201


async def test_new_node_catches_up_from_snapshot_plus_log(autojump_clock: object) -> None:
    """Reference: §7. A node that never ran starts from the snapshot and the log after it."""
    async with open_memory_cluster(3, seed=4, start=False, **SMALL) as cluster:
        for node_id in ("n1", "n2"):
            await cluster.start(node_id)
        await apply_many(cluster, 150)
        node = await cluster.start("n3")
        with trio.fail_after(10):
            await converge(cluster)
        assert node.status().snapshot_index > 0
        assert commands(cluster, "n3")[:150] == commands(cluster, "n1")[:150]


async def test_lost_chunks_are_resent_and_the_transfer_resumes(autojump_clock: object) -> None:
    """Reference: Figure 13. Chunks travel one at a time; a lost one is sent again."""
    network = MemoryNetwork(seed=5)
    async with open_memory_cluster(3, seed=5, network=network, **SMALL) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        await cluster.crash(follower)
        await apply_many(cluster, 300, prefix="a-long-command-so-the-snapshot-has-many-chunks-")
        network.set_faults(drop_rate=0.3)
        await cluster.start(follower)
        with trio.fail_after(60):
            await cluster.wait_until(lambda: cluster.node(follower).status().snapshot_index >= 250)
        network.set_faults(drop_rate=0.0)
        with trio.fail_after(10):
            await converge(cluster)


async def test_snapshot_during_partitions(autojump_clock: object) -> None:
    """Reference: §7. Snapshots and compaction interleave with partitions and leader changes."""
    async with open_memory_cluster(5, seed=6, **SMALL) as cluster:
        for round_number in range(4):
            leader = await cluster.wait_for_leader()
            others = [i for i in cluster.node_ids if i != leader.id]
            cut = others[round_number % len(others)]
            cluster.network.partition([n for n in cluster.node_ids if n != cut], [cut])
            await apply_many(cluster, 60, prefix=f"r{round_number}-")
            cluster.network.isolate(leader.id)
            with trio.fail_after(10):
                await cluster.wait_until(
                    lambda leader=leader: any(
                        n.status().role is Role.LEADER and n.id != leader.id
                        for n in cluster.running.values()
                    )
                )
            cluster.network.heal()
        with trio.fail_after(20):
            await converge(cluster)
        assert all(n.status().snapshot_index > 0 for n in cluster.running.values())


async def test_every_node_restarted_at_once_recovers_everything(autojump_clock: object) -> None:
    """Term, vote, log, snapshot and state survive a whole-cluster restart."""
    async with open_memory_cluster(3, seed=7, **SMALL) as cluster:
        await apply_many(cluster, 95)
        leader = await cluster.wait_for_leader()
        await cluster.wait_applied(leader.status().commit_index)
        before = {i: cluster.node(i).status() for i in cluster.node_ids}
        reference = list(commands(cluster, leader.id))
        for node_id in cluster.node_ids:
            await cluster.crash(node_id)
        for node_id in cluster.node_ids:
            await cluster.start(node_id)
        for node_id in cluster.node_ids:
            status = cluster.node(node_id).status()
            assert status.term == before[node_id].term
            assert status.last_log_index == before[node_id].last_log_index
            assert status.snapshot_index == before[node_id].snapshot_index
            # Restored from the snapshot before anything is replayed.
            restored = commands(cluster, node_id)
            assert status.snapshot_index > 0
            assert restored and restored == reference[: len(restored)]
        with trio.fail_after(10):
            await converge(cluster)
        assert commands(cluster, leader.id)[: len(reference)] == reference


async def test_snapshot_on_demand_compacts_the_log(autojump_clock: object) -> None:
    async with open_memory_cluster(
        3, seed=8, snapshot_threshold=10_000, trailing_entries=3
    ) as cluster:
        await apply_many(cluster, 50)
        leader = await cluster.wait_for_leader()
        assert leader.status().snapshot_index == 0
        index = await leader.snapshot()
        assert index == leader.status().last_applied
        assert leader.status().snapshot_index == index
        assert leader._running_core().log.first_index == index - 3 + 1
        assert await leader.snapshot() == index  # nothing new: the same snapshot


async def test_memory_holds_only_the_unsnapshotted_log(autojump_clock: object) -> None:
    """A long-running node's log does not grow with the number of commands ever applied."""
    async with open_memory_cluster(3, seed=9, **SMALL) as cluster:
        await apply_many(cluster, 1000)
        leader = await cluster.wait_for_leader()
        await cluster.wait_applied(leader.status().commit_index)
        bound = SMALL["snapshot_threshold"] + SMALL["trailing_entries"] + 10
        for node in cluster.running.values():
            assert log_length(node) <= bound, node.id
        storage = cluster.storages[leader.id]
        assert len(storage.entries) <= bound


async def test_the_snapshot_threshold_counts_the_commands_of_batch_entries(
    autojump_clock: object,
) -> None:
    """A batch entry holds many commands: the state machine's state (and the log's bytes)
    grow with commands, not entries, so snapshots are taken by commands applied."""
    async with open_memory_cluster(3, seed=56, **SMALL) as cluster:
        leader = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        body = msgpack.packb([f"b{i}".encode() for i in range(25)])
        response = await client.request(
            cluster.address_of(leader.id), "apply_batch", body, timeout=5
        )
        assert response.ok
        index = leader.status().commit_index
        assert index < SMALL["snapshot_threshold"]  # far fewer entries than the threshold
        await converge(cluster)  # applies one more command, after which the snapshot is saved
        assert leader.status().snapshot_index >= index


async def test_the_log_behind_a_snapshot_keeps_at_most_trailing_bytes(
    autojump_clock: object,
) -> None:
    """Batch entries are large: what a snapshot leaves behind is bounded in bytes too, or a
    node would keep ``trailing_entries`` whole batches (up to a GiB) in memory."""
    settings = dict(SMALL, trailing_entries=1000, trailing_bytes=3000)
    async with open_memory_cluster(3, seed=57, **settings) as cluster:
        leader = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        for batch in range(12):
            body = msgpack.packb([b"%d-%d-" % (batch, i) + bytes(100) for i in range(25)])
            response = await client.request(
                cluster.address_of(leader.id), "apply_batch", body, timeout=5
            )
            assert response.ok
        await converge(cluster)
        for node in cluster.running.values():
            log = node._running_core().log
            snapshot_index = node.status().snapshot_index
            assert snapshot_index >= 10, node.id
            behind = [log.entry(i) for i in range(log.first_index, snapshot_index + 1)]
            assert sum(len(entry.data) for entry in behind) <= 3000, node.id
            assert behind, node.id  # a whole entry fits: one is kept


async def test_a_node_whose_snapshot_is_ahead_of_its_stored_log_restarts_and_appends(
    autojump_clock: object,
) -> None:
    """A follower may apply committed entries before its own write of them is durable, and
    snapshot them: a crash then can leave the snapshot durable and the log write torn, so the
    stored log ends before the snapshot's index. On restart only the snapshot counts, and the
    stale stored entries must go before anything is appended after the snapshot; before
    that, the next append failed ("gap in the log") and took the node down, at every
    restart. (Found by the randomized fault test, seed 2737, in one schedule of ~60.)"""
    # The leader keeps its whole log, so the restarted follower is sent entries after its
    # snapshot, not a newer snapshot (which would replace its stored log anyway).
    settings = {**SMALL, "trailing_entries": 10_000}
    async with open_memory_cluster(3, seed=5, **settings) as cluster:
        await apply_many(cluster, 100)
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        await cluster.wait_applied(leader.status().commit_index)
        # Everyone stops, so no leader remembers what the follower had acknowledged: its
        # torn write below then loses only what it could not have acknowledged.
        for node_id in cluster.node_ids:
            await cluster.crash(node_id)
        storage = cluster.storages[follower]
        assert storage.snapshot is not None and storage.snapshot.index > storage.first_index
        # The torn write: the stored log ends two entries before the snapshot's index.
        del storage.entries[storage.snapshot.index - 1 - storage.first_index :]
        assert storage.first_index + len(storage.entries) - 1 == storage.snapshot.index - 2
        for node_id in cluster.node_ids:
            await cluster.start(node_id)
        with trio.fail_after(10):
            await apply_many(cluster, 60, prefix="after")
            await converge(cluster)
        assert commands(cluster, follower)[-1] == b"final"
        # Restarted once more, it still loads: a contiguous log after its snapshot.
        await cluster.restart(follower)
        with trio.fail_after(10):
            await converge(cluster)
