"""A node whose disk fails stops taking part and never acknowledges what it did not write."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest
import trio

from tinyraft_trio import LeadershipLostError, Role, StorageFailedError
from tinyraft_trio._core._types import Entry, HardState, Index
from tinyraft_trio._storage import MemoryStorage
from tinyraft_trio.testing import open_memory_cluster


class FailingDisk(MemoryStorage):
    """MemoryStorage that raises ENOSPC from persist once ``full`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    async def persist(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        if self.full:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.ENOSPC, "No space left on device")
        await super().persist(hard_state=hard_state, first_index=first_index, entries=entries)


async def test_leader_with_a_full_disk_steps_down_and_reports_it(autojump_clock: object) -> None:
    disks: dict[str, FailingDisk] = {}

    def make_disk(node_id: str) -> FailingDisk:
        disks[node_id] = FailingDisk()
        return disks[node_id]

    async with open_memory_cluster(3, seed=11, storage_factory=make_disk) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.apply(b"before")
        disks[leader.id].full = True
        # Followers may still commit it (the leader sends before its own fsync, §10.2.1),
        # so the caller learns that the outcome is unknown.
        with pytest.raises(LeadershipLostError):
            await leader.apply(b"maybe written")
        status = leader.status()
        assert status.role is Role.FOLLOWER
        assert status.storage_error is not None and "No space" in status.storage_error
        with pytest.raises(StorageFailedError):
            await leader.apply(b"refused")
        # The others elect a new leader and go on without it.
        with trio.fail_after(10):
            await cluster.wait_until(
                lambda: any(
                    n.status().role is Role.LEADER and n.id != leader.id
                    for n in cluster.running.values()
                )
            )
        new_leader = next(n for n in cluster.leaders() if n.id != leader.id)
        await new_leader.apply(b"after")
        assert leader.status().role is Role.FOLLOWER  # it stays out of the cluster


async def test_follower_with_a_full_disk_never_acknowledges(autojump_clock: object) -> None:
    disks: dict[str, FailingDisk] = {}

    def make_disk(node_id: str) -> FailingDisk:
        disks[node_id] = FailingDisk()
        return disks[node_id]

    async with open_memory_cluster(3, seed=12, storage_factory=make_disk) as cluster:
        leader = await cluster.wait_for_leader()
        followers = [i for i in cluster.node_ids if i != leader.id]
        for follower in followers:
            disks[follower].full = True
        # No follower can persist: nothing more may commit, however long we wait.
        with trio.move_on_after(5), pytest.raises(LeadershipLostError):
            # The leader loses its quorum (check-quorum) before anything commits.
            await leader.apply(b"cannot commit")
        for follower in followers:
            status = cluster.node(follower).status()
            assert status.storage_error is not None
            assert status.last_log_index >= 0
        assert leader.status().commit_index < leader.status().last_log_index
