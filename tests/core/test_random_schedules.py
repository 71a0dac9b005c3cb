"""Random fault schedules over the mini cluster, with Raft's safety properties checked throughout.

Each seed drives one deterministic run: timeouts, proposals, replication, delivery in any
order, duplicated and lost messages, partitions, crashes and restarts, TimeoutNow, and a
moving clock.
A failure names its seed; rerun with ``-k "seed_17"`` to replay it.
"""

from __future__ import annotations

import random

import pytest

from tinyraft_trio._core._messages import TimeoutNow
from tinyraft_trio._core._types import Index, Role, Term

from .helpers import ELECTION_TIMEOUT, Cluster, Envelope, Match

SEEDS = range(120)


def is_(chosen: Envelope) -> Match:
    """Matches exactly this queued message (not an equal duplicate)."""
    return lambda envelope: envelope is chosen


class Checker:
    """Leader Completeness and commit monotonicity, on top of the cluster's own checks."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        # For each committed index, an upper bound on the term in which it was committed:
        # the term of the first node seen applying it.
        self.commit_term: dict[Index, Term] = {}
        self.last_commit: dict[tuple[str, int], Index] = {}

    def check(self) -> None:
        cluster = self.cluster
        for index in cluster.committed:
            if index not in self.commit_term:
                self.commit_term[index] = max(cluster[n].current_term for n in cluster.ids)
        for node in cluster.up():
            core = cluster[node]
            key = (node, cluster.incarnation[node])
            assert core.commit_index >= self.last_commit.get(key, 0), "commit went back"
            self.last_commit[key] = core.commit_index
            assert core.commit_index <= core.log.last_index
            if core.role is Role.LEADER:
                # Leader Completeness (§5.4): a leader of a later term holds every committed entry.
                for index, entry in cluster.committed.items():
                    if core.current_term > self.commit_term[index]:
                        assert core.log.term_at(index) == entry.term, (node, index)
        cluster.check_log_matching()


def run_schedule(seed: int, steps: int = 400) -> Cluster:
    rng = random.Random(seed)
    size = rng.choice((3, 5))
    ids = [f"n{i}" for i in range(size)]
    cluster = Cluster(
        ids,
        pre_vote=rng.random() < 0.7,
        check_quorum=rng.random() < 0.7,
        max_entries_per_append=rng.choice((1, 2, 64)),
        max_inflight_appends=rng.choice((1, 4)),
    )
    checker = Checker(cluster)
    proposals = 0
    for _ in range(steps):
        action = rng.choices(
            ["deliver", "timeout", "propose", "replicate", "drop", "duplicate", "tick",
             "crash", "restart", "partition", "heal", "check_quorum", "transfer"],
            weights=[40, 4, 8, 12, 3, 2, 6, 1, 2, 1, 2, 2, 1],
        )[0]  # fmt: skip
        up = cluster.up()
        leaders = cluster.leaders_now()
        if action == "deliver" and cluster.queue:
            chosen = rng.choice(cluster.queue[:4])  # mostly in order, sometimes reordered
            cluster.deliver(is_(chosen))
        elif action == "timeout" and up:
            cluster.timeout(rng.choice(up))
        elif action == "propose" and leaders:
            proposals += 1
            cluster.propose(rng.choice(leaders), f"{seed}:{proposals}".encode())
        elif action == "replicate" and leaders:
            cluster.replicate(rng.choice(leaders), heartbeat=rng.random() < 0.5)
        elif action == "drop" and cluster.queue:
            cluster.drop(is_(rng.choice(cluster.queue)))
        elif action == "duplicate" and cluster.queue:
            copy = rng.choice(cluster.queue)
            cluster.queue.append(Envelope(copy.sender, copy.to, copy.message))
        elif action == "tick":
            cluster.now += rng.uniform(0.0, 0.6 * ELECTION_TIMEOUT)
        elif action == "crash" and len(cluster.down) < (size - 1) // 2:
            cluster.crash(rng.choice(up))
        elif action == "restart" and cluster.down:
            cluster.restart(rng.choice(sorted(cluster.down)))
        elif action == "partition":
            cluster.isolate(rng.choice(ids))
        elif action == "heal":
            cluster.heal()
        elif action == "check_quorum" and leaders:
            leader = rng.choice(leaders)
            cluster[leader].check_quorum(cluster.now)
            cluster.flush(leader)
        elif action == "transfer" and leaders:
            leader = rng.choice(leaders)
            target = rng.choice(cluster[leader].peers)
            handover = TimeoutNow(term=cluster[leader].current_term, leader_id=leader)
            cluster.send(leader, target, handover)
        checker.check()
    return settle(cluster, checker)


def settle(cluster: Cluster, checker: Checker) -> Cluster:
    """Heal everything and let the cluster converge: one leader, identical logs."""
    cluster.heal()
    for node in sorted(cluster.down):
        cluster.restart(node)
    cluster.drop()
    for _ in range(3):
        for node in cluster.ids:
            cluster.now += 2 * ELECTION_TIMEOUT
            cluster.timeout(node)
            cluster.stabilize(heartbeat=True)
            checker.check()
            if cluster.leaders_now():
                break
    leaders = cluster.leaders_now()
    assert len(leaders) == 1, leaders
    cluster.stabilize(heartbeat=True)
    cluster.stabilize(heartbeat=True)
    checker.check()
    leader = cluster[leaders[0]]
    for node in cluster.ids:
        core = cluster[node]
        assert core.log.slice(1, 10**9) == leader.log.slice(1, 10**9), node
        assert core.commit_index == leader.commit_index == leader.log.last_index, node
    return cluster


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed_{s}" for s in SEEDS])
def test_random_schedule_keeps_raft_safety_properties(seed: int) -> None:
    """Reference: §5.4 and Figure 3 (Election Safety, Log Matching, Leader Completeness,
    State Machine Safety), under loss, duplication, reordering, partitions, crashes and
    leadership transfers."""
    cluster = run_schedule(seed)
    # The run did something: at least one entry committed on every node.
    assert all(len(cluster.applied[node]) >= 1 for node in cluster.ids)
