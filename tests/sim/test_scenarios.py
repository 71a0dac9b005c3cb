"""Scripted fault scenarios on simulated 3- and 5-node clusters, in virtual time.

Each test drives a whole cluster (RaftNode drivers, the real wire codec, the in-memory network)
through one scenario from the paper, and asserts outcomes: who leads, in which term, what was
committed, what was discarded, and that every node ends with the same state machine. The
cluster's observer checks Election Safety, Leader Completeness and State Machine Safety as the
nodes run, so a violation anywhere fails the test that provoked it.

Trio's scheduler is randomized, so the tests assert outcomes and bounds, not interleavings.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from tinyraft_trio import (
    LeadershipLostError,
    NodeClosedError,
    NotLeaderError,
    RaftError,
    RaftNode,
    Role,
)
from tinyraft_trio._core._messages import Message
from tinyraft_trio._core._types import Entry, HardState, NodeId
from tinyraft_trio._storage import MemoryStorage
from tinyraft_trio.testing import MemoryCluster, MemoryNetwork, open_memory_cluster

ELECTION_TIMEOUT = 0.5
HEARTBEAT = 0.1
TIMING: dict[str, Any] = {"election_timeout": ELECTION_TIMEOUT, "heartbeat_interval": HEARTBEAT}
ELECTION_DEADLINE = 3 * ELECTION_TIMEOUT + 2 * HEARTBEAT
"""A crashed leader's followers time out within 2 election timeouts of its last heartbeat; one
failed pre-vote round more is allowed for."""
STEP_DOWN_DEADLINE = 2 * ELECTION_TIMEOUT + HEARTBEAT
"""Check-quorum looks every election timeout at contact within the last election timeout."""
SETTLE_DEADLINE = 20 * ELECTION_TIMEOUT
TEST_DEADLINE = 60.0
"""Virtual seconds any one test may take: a hang fails the test instead of spinning forever."""

_Test = TypeVar("_Test", bound=Callable[..., Awaitable[None]])


def _bounded(seconds: float = TEST_DEADLINE) -> Callable[[_Test], _Test]:
    """Run the decorated test under ``trio.fail_after(seconds)`` (virtual time)."""

    def decorate(test: _Test) -> _Test:
        @functools.wraps(test)
        async def bounded(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return bounded  # type: ignore[return-value]

    return decorate


# ---------------------------------------------------------------------------------------- helpers


def _commands(cluster: MemoryCluster, node_id: str) -> list[bytes]:
    commands: list[bytes] = cluster.state_machines[node_id].commands  # type: ignore[attr-defined]
    return commands


async def _leader_among(cluster: MemoryCluster, node_ids: Iterable[str]) -> RaftNode:
    """Wait until one of ``node_ids`` is a running leader; the newest such leader."""
    ids = list(node_ids)

    def find() -> RaftNode | None:
        leaders = [
            cluster.node(i)
            for i in ids
            if i in cluster.running and cluster.node(i).status().role is Role.LEADER
        ]
        return max(leaders, key=lambda node: node.status().term) if leaders else None

    await cluster.wait_until(lambda: find() is not None)
    leader = find()
    assert leader is not None
    return leader


async def _settle(cluster: MemoryCluster, command: bytes = b"settle") -> RaftNode:
    """Commit ``command`` and wait until every running node applied the whole log."""
    with trio.fail_after(SETTLE_DEADLINE):
        await cluster.apply(command)
        leader = await cluster.wait_for_leader()
        target = leader.status().last_log_index
        await cluster.wait_applied(target)
    return leader


def _assert_converged(cluster: MemoryCluster) -> list[bytes]:
    """Every running node holds the same log and applied the same commands; return them."""
    cluster.check_logs()
    statuses = [node.status() for node in cluster.running.values()]
    assert len({s.last_log_index for s in statuses}) == 1, statuses
    assert len({s.last_applied for s in statuses}) == 1, statuses
    histories = {node_id: _commands(cluster, node_id) for node_id in cluster.running}
    first = next(iter(histories.values()))
    for node_id, history in histories.items():
        assert history == first, f"{node_id} applied a different history"
    return first


def _terms(cluster: MemoryCluster) -> dict[str, int]:
    return {node_id: node.status().term for node_id, node in cluster.running.items()}


async def _propose_and_record(
    node: RaftNode, command: bytes, outcomes: dict[bytes, object]
) -> None:
    """Call ``node.apply(command)`` and record its result or the RaftError it raised."""
    try:
        outcomes[command] = await node.apply(command)
    except RaftError as exc:
        outcomes[command] = exc


# --------------------------------------------------------------------------- 1. first election


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [3, 5])
@_bounded()
async def test_first_election_elects_one_leader_that_everyone_follows(
    size: int, seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: §5.2. A fresh cluster elects exactly one leader; the others follow it in
    its term, and with heartbeats flowing nobody starts another election."""
    async with open_memory_cluster(size, seed=seed, **TIMING) as cluster:
        with trio.fail_after(10 * ELECTION_TIMEOUT):
            leader = await cluster.wait_for_leader()
            await cluster.wait_until(
                lambda: all(n.status().leader_id == leader.id for n in cluster.running.values())
            )
        term = leader.status().term
        assert term >= 1
        for _ in range(2):
            statuses = [node.status() for node in cluster.running.values()]
            assert [s.id for s in statuses if s.role is Role.LEADER] == [leader.id]
            assert all(s.role is Role.FOLLOWER for s in statuses if s.id != leader.id)
            assert {s.term for s in statuses} == {term}
            assert {s.leader_id for s in statuses} == {leader.id}
            # Nothing happens for a while: the leader's heartbeats keep everyone quiet.
            await trio.sleep(10 * ELECTION_TIMEOUT)
        assert cluster.checker.leaders[term] == leader.id
        assert max(cluster.checker.leaders) == term


# ---------------------------------------------------------------- 2. re-election after a crash


@pytest.mark.parametrize("size", [3, 5])
@_bounded()
async def test_leader_crash_elects_new_leader_and_old_one_rejoins_as_follower(
    size: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: §5.2, §5.3. When the leader crashes a new one is elected in a higher term
    within a few election timeouts; the old leader, restarted from its storage, rejoins as a
    follower and catches up to the same state machine."""
    async with open_memory_cluster(size, seed=20 + size, **TIMING) as cluster:
        old = await cluster.wait_for_leader()
        for i in range(5):
            await cluster.apply(b"before-%d" % i)
        old_id, old_term = old.id, old.status().term

        await cluster.crash(old_id)
        crashed_at = trio.current_time()
        with trio.fail_after(ELECTION_DEADLINE):
            new = await cluster.wait_for_leader()
        # The crash closed the leader's connections: its followers campaigned within a
        # heartbeat interval, without waiting out the election timeout.
        assert trio.current_time() - crashed_at < ELECTION_TIMEOUT
        new_term = new.status().term
        assert new.id != old_id
        assert new_term > old_term
        for i in range(5):
            await new.apply(b"after-%d" % i)

        rejoined = await cluster.start(old_id)
        with trio.fail_after(2 * ELECTION_TIMEOUT):
            await cluster.wait_until(
                lambda: (
                    rejoined.status().leader_id == new.id
                    and rejoined.status().last_applied >= new.status().commit_index
                )
            )
        status = rejoined.status()
        assert status.role is Role.FOLLOWER
        assert status.term == new_term
        assert new.status().role is Role.LEADER
        expected = [b"before-%d" % i for i in range(5)] + [b"after-%d" % i for i in range(5)]
        assert _commands(cluster, old_id) == expected
        await _settle(cluster, b"after-rejoin")
        assert _assert_converged(cluster) == [*expected, b"after-rejoin"]
        assert new.status().term == new_term  # the rejoin disturbed nobody


# ------------------------------------------------------------ 3. leader isolated, then healed


@pytest.mark.parametrize("size", [3, 5])
@_bounded()
async def test_isolated_leader_steps_down_and_its_uncommitted_entries_are_discarded(
    size: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: §5.3, §5.4, dissertation §6.2 (check-quorum). A leader cut off from
    everyone steps down within about two election timeouts, failing its pending callers with
    LeadershipLostError; the others elect a new leader and keep committing; after the heal the
    old leader's uncommitted entries are overwritten and never applied anywhere."""
    async with open_memory_cluster(size, seed=30 + size, **TIMING) as cluster:
        old = await cluster.wait_for_leader()
        for i in range(3):
            await cluster.apply(b"committed-%d" % i)
        await _settle(cluster)
        old_term = old.status().term
        committed = old.status().commit_index
        assert old.status().last_log_index == committed

        cluster.network.isolate(old.id)
        isolated_at = trio.current_time()
        outcomes: dict[bytes, object] = {}
        lost = [b"lost-%d" % i for i in range(5)]
        async with trio.open_nursery() as nursery:
            for command in lost:
                nursery.start_soon(_propose_and_record, old, command, outcomes)
            with trio.fail_after(STEP_DOWN_DEADLINE):
                await cluster.wait_until(lambda: old.status().role is not Role.LEADER)
        assert trio.current_time() - isolated_at >= ELECTION_TIMEOUT - HEARTBEAT
        status = old.status()
        assert status.role is Role.FOLLOWER
        assert status.term == old_term  # nobody reached it, and pre-vote keeps it there
        assert status.commit_index == committed
        assert status.last_log_index == committed + len(lost)  # appended, never committed
        assert set(outcomes) == set(lost)
        for command, outcome in outcomes.items():
            assert isinstance(outcome, LeadershipLostError), (command, outcome)
        with pytest.raises(NotLeaderError):
            await old.apply(b"lost-after-step-down")

        with trio.fail_after(ELECTION_DEADLINE):
            new = await _leader_among(cluster, [i for i in cluster.node_ids if i != old.id])
        assert new.status().term > old_term
        for i in range(3):
            await new.apply(b"majority-%d" % i)
        assert old.status().commit_index == committed

        cluster.network.heal()
        await _settle(cluster, b"healed")
        history = _assert_converged(cluster)
        assert history == [
            *(b"committed-%d" % i for i in range(3)),
            b"settle",
            *(b"majority-%d" % i for i in range(3)),
            b"healed",
        ]
        assert old.status().role is Role.FOLLOWER
        assert old.status().leader_id == new.id


# ---------------------------------------------------------- 4. a minority partition is stuck


@pytest.mark.parametrize("minority_has_leader", [True, False], ids=["with-leader", "followers"])
@_bounded()
async def test_minority_partition_cannot_commit(
    minority_has_leader: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: §5.3, §5.4.1. On 5 nodes, two cut off from the other three never commit:
    no apply there succeeds and their commit index stays put, while the majority side elects
    (if needed) and keeps committing. The minority's commands are never applied."""
    async with open_memory_cluster(5, seed=40 + minority_has_leader, **TIMING) as cluster:
        leader = await cluster.wait_for_leader()
        await _settle(cluster, b"base")
        others = [i for i in cluster.node_ids if i != leader.id]
        minority = [leader.id, others[0]] if minority_has_leader else others[:2]
        majority = [i for i in cluster.node_ids if i not in minority]
        frozen = {i: cluster.node(i).status().commit_index for i in minority}
        majority_commit = cluster.node(majority[0]).status().commit_index

        cluster.network.partition(minority, majority)
        outcomes: dict[bytes, object] = {}

        async def keep_trying(node_id: str) -> None:
            node = cluster.node(node_id)
            for attempt in range(12):
                await _propose_and_record(
                    node, b"minority-%s-%d" % (node_id.encode(), attempt), outcomes
                )
                await trio.sleep(ELECTION_TIMEOUT / 2)

        written: list[bytes] = []

        async def majority_writer() -> None:
            for i in range(10):
                with trio.fail_after(ELECTION_DEADLINE):
                    writer = await _leader_among(cluster, majority)
                command = b"majority-%d" % i
                await writer.apply(command)
                written.append(command)
                await trio.sleep(ELECTION_TIMEOUT / 2)

        async with trio.open_nursery() as nursery:
            for node_id in minority:
                nursery.start_soon(keep_trying, node_id)
            nursery.start_soon(majority_writer)

        assert len(outcomes) == 12 * len(minority)
        for command, outcome in outcomes.items():
            assert isinstance(outcome, NotLeaderError | LeadershipLostError), (command, outcome)
        for node_id in minority:
            assert cluster.node(node_id).status().commit_index == frozen[node_id], node_id
        assert written == [b"majority-%d" % i for i in range(10)]
        assert cluster.node(majority[0]).status().commit_index >= majority_commit + 10

        cluster.network.heal()
        await _settle(cluster, b"healed")
        history = _assert_converged(cluster)
        assert history == [b"base", *written, b"healed"]


# ------------------------------------------------------------------------------- 5. Figure 8

FIG8_DELAY = 0.01
"""Every message takes exactly this long, so a new leader's messages can be cut off in flight."""


@pytest.mark.parametrize("old_entry_committed", [False, True], ids=["fig8-d", "fig8-e"])
@_bounded()
async def test_figure_8_old_term_entry_on_a_majority_is_not_committed_by_counting(
    old_entry_committed: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: §5.4.2, Figure 8. Driven on 5 nodes with partitions and crashes:

    (a) S1 leads term T1 and replicates entry X (index k+1) to S2 only, then crashes;
    (b) S3-S5 elect "S5" in T2; it appends its own entry at k+1 and crashes before sending it;
    (c) S1 (or S2, the other holder of X) wins T3 and copies X to S3 and S4, which acknowledge
        it in T3: the leader knows X (of term T1) is on a majority, while its own T3 entry is
        on no other node. X must not be committed by counting replicas;
    (d) then S5 (last term T2 beats T1) can win with S2 and S4 and overwrite X, so X must never
        have been applied anywhere;
    (e) if instead the T3 entry reaches a majority, X is committed and applied, and S5 cannot
        win any more.

    Entries travel one per AppendEntries (``max_entries_per_append=1``) and every message takes
    exactly FIG8_DELAY, so the leader's T3 entry can be cut off after X was acknowledged.
    Safety is checked throughout; in the end every node has the same state machine.
    """
    network = MemoryNetwork(seed=8, delay=(FIG8_DELAY, FIG8_DELAY))
    async with open_memory_cluster(
        5, seed=80 + old_entry_committed, network=network, max_entries_per_append=1, **TIMING
    ) as cluster:
        storages = cluster.storages

        def log_of(node_id: str) -> list[tuple[int, bytes]]:
            """(term, data) of the entries after the common prefix, as persisted."""
            return [(e.term, e.data) for e in storages[node_id].entries[k:]]

        first = await cluster.wait_for_leader()
        await _settle(cluster, b"base")
        k = first.status().last_log_index
        s1 = first.id
        s2, *rest = (i for i in cluster.node_ids if i != s1)
        x = b"X"

        # (a) S1 replicates X to S2 alone, then crashes.
        network.partition([s1, s2], rest)
        x_outcome: dict[bytes, object] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_propose_and_record, first, x, x_outcome)
            await trio.sleep(HEARTBEAT)
            await cluster.crash(s1)
        assert isinstance(x_outcome[x], LeadershipLostError)  # outcome unknown to the client
        t1 = storages[s1].entries[k].term
        assert log_of(s1) == log_of(s2) == [(t1, x)]
        assert all(log_of(i) == [] for i in rest)

        # (b) S3..S5 elect "S5"; it is cut off the moment it wins, so its entry stays its own.
        with trio.fail_after(ELECTION_DEADLINE):
            s5_node = await _leader_among(cluster, rest)
        network.isolate(s5_node.id)
        s5 = s5_node.id
        s3, s4 = (i for i in rest if i != s5)
        t2 = s5_node.status().term
        assert t2 > t1
        await trio.sleep(HEARTBEAT)
        assert log_of(s5) == [(t2, b"")]  # its no-op
        assert log_of(s3) == log_of(s4) == []
        await cluster.crash(s5)

        # (c) S1 restarts; S1 or S2 (only they hold X) wins T3. Its first message to S2 would
        # carry its T3 no-op, so S2 is cut off at once; S3 and S4 lack X, refuse the first
        # probe, then get X alone, acknowledge it, and are cut off before the no-op arrives.
        network.partition([s1, s2, s3, s4])
        await cluster.start(s1)
        with trio.fail_after(4 * ELECTION_DEADLINE):
            leader3 = await _leader_among(cluster, [s1, s2, s3, s4])
        a = leader3.id
        assert a in (s1, s2)
        b = s2 if a == s1 else s1
        network.partition([a, s3, s4], [b])
        t3 = leader3.status().term
        assert t3 > t2
        # probe -> refusal -> X -> acknowledgement: four one-way trips; the no-op is the fifth.
        await trio.sleep(4.5 * FIG8_DELAY)
        if not old_entry_committed:
            network.partition([a], [b, s3, s4])
            await trio.sleep(HEARTBEAT)
            assert log_of(a) == [(t1, x), (t3, b"")]
            assert log_of(b) == log_of(s3) == log_of(s4) == [(t1, x)]  # X on 4 of 5
            # The leader heard S3 and S4 acknowledge X in T3, but only entries of its own term
            # are committed by counting replicas.
            for node in cluster.running.values():
                assert node.status().commit_index <= k, node.id  # restarted nodes: 0
            assert all(x not in _commands(cluster, i) for i in cluster.running)
        else:
            with trio.fail_after(ELECTION_TIMEOUT):
                await cluster.wait_until(lambda: leader3.status().last_applied >= k + 2)
            assert log_of(a) == log_of(s3) == log_of(s4) == [(t1, x), (t3, b"")]
            assert _commands(cluster, a)[-1] == x
            network.partition([a], [b, s3, s4])
        await cluster.crash(a)

        # (d)/(e) S5 restarts and, with S2 and S4, holds a majority.
        network.partition([s5, b, s4], [s3])
        await cluster.start(s5)
        with trio.fail_after(4 * ELECTION_DEADLINE):
            winner = await _leader_among(cluster, [s5, b, s4])
        assert winner.status().term > t3
        if old_entry_committed:
            # (e) S4 holds the committed T3 entry; S5's log lacks it, so S5 cannot win.
            assert winner.id == s4
        else:
            # (d) S5's last term T2 beats T1: S5 wins and overwrites X everywhere it reaches.
            assert winner.id == s5
            with trio.fail_after(SETTLE_DEADLINE):
                await cluster.wait_applied(k + 2, [s5, b, s4])
            assert log_of(b)[0] == log_of(s4)[0] == (t2, b"")
            assert all(x not in _commands(cluster, i) for i in cluster.running)

        network.heal()
        await cluster.start(a)
        await _settle(cluster, b"final")
        history = _assert_converged(cluster)
        assert len(cluster.running) == 5
        if old_entry_committed:
            assert history == [b"base", x, b"final"]
        else:
            assert history == [b"base", b"final"]


# ------------------------------------------------------------- 6. divergent logs are repaired


@_bounded()
async def test_long_divergent_suffixes_are_repaired_in_few_round_trips(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reference: §5.3 (log repair, and the conflict-term optimisation at its end). Two old
    leaders each leave a long uncommitted suffix of their own term on themselves and one
    follower, while the others commit as many entries past the divergence point. After the
    heal every log converges to the committed history, and the repair takes a few AppendEntries
    round trips per follower, not one per divergent or missing entry."""
    suffix = 200
    async with open_memory_cluster(5, seed=6, **TIMING) as cluster:
        network = cluster.network
        l1 = await cluster.wait_for_leader()
        await _settle(cluster, b"base")
        base = l1.status().last_log_index
        f1, *rest = (i for i in cluster.node_ids if i != l1.id)
        swallowed: dict[bytes, object] = {}
        committed: dict[bytes, object] = {}

        # T1: l1 and f1 gather `suffix` entries nobody else will see; the other three elect
        # l2 and commit as many entries of T2 at the same indexes.
        network.partition([l1.id, f1], rest)
        async with trio.open_nursery() as nursery:
            for i in range(suffix):
                nursery.start_soon(_propose_and_record, l1, b"t1-lost-%d" % i, swallowed)
            with trio.fail_after(ELECTION_DEADLINE):
                l2 = await _leader_among(cluster, rest)
            for i in range(suffix):
                nursery.start_soon(_propose_and_record, l2, b"t2-%d" % i, committed)
        assert all(not isinstance(o, RaftError) for o in committed.values())

        # T2: l2 and one follower gather another suffix, cut off from everyone else.
        f2, g = (i for i in rest if i != l2.id)
        network.partition([l1.id, f1], [l2.id, f2], [g])
        async with trio.open_nursery() as nursery:
            for i in range(suffix):
                nursery.start_soon(_propose_and_record, l2, b"t2-lost-%d" % i, swallowed)
            with trio.fail_after(STEP_DOWN_DEADLINE):
                await cluster.wait_until(lambda: not cluster.leaders())
        assert len(swallowed) == 2 * suffix
        assert all(isinstance(o, LeadershipLostError) for o in swallowed.values())
        lengths = {i: node.status().last_log_index for i, node in cluster.running.items()}
        assert lengths[l1.id] == lengths[f1] == base + suffix
        assert lengths[g] == base + 1 + suffix  # T2's no-op, then the committed commands
        assert lengths[l2.id] == lengths[f2] == base + 1 + 2 * suffix

        before = network.statistics().sent
        network.heal()
        with trio.fail_after(ELECTION_DEADLINE):
            leader = await cluster.wait_for_leader()
        await _settle(cluster, b"final")
        messages = network.statistics().sent - before
        history = _assert_converged(cluster)
        assert history[0] == b"base"
        assert sorted(history[1 : 1 + suffix]) == sorted(committed)
        assert history[-1] == b"final"
        # Only the T2 suffix can survive, all of it or none: it commits if the new leader holds
        # it; g can also win (its last term beats T1's holders) and then it is discarded.
        t2_lost = [b"t2-lost-%d" % i for i in range(suffix)]
        if leader.id in (l2.id, f2):
            assert sorted(history[1 + suffix : -1]) == sorted(t2_lost)
        else:
            assert leader.id == g
            assert history[1 + suffix : -1] == []
        # From the heal to convergence (election included): backing up one entry per round
        # trip would take over `suffix` AppendEntries for each of l1 and f1 (or g) alone.
        assert messages < suffix, messages


# ----------------------------------------------------------------------------------- 7. pre-vote


@pytest.mark.parametrize("size", [3, 5])
@_bounded()
async def test_prevote_keeps_a_rejoining_node_from_disrupting_the_leader(
    size: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: dissertation §9.6 (pre-vote). A follower cut off for ten election timeouts
    keeps timing out, but its failed pre-votes never raise its term; when it comes back the
    leader stays leader and no term changes anywhere."""
    async with open_memory_cluster(size, seed=70 + size, **TIMING) as cluster:
        leader = await cluster.wait_for_leader()
        await _settle(cluster, b"before")
        term = leader.status().term
        straggler = cluster.node(next(i for i in cluster.node_ids if i != leader.id))
        assert straggler.status().term == term

        cluster.network.isolate(straggler.id)
        await trio.sleep(10 * ELECTION_TIMEOUT)
        status = straggler.status()
        assert status.leader_id is None  # its election timer did fire
        assert status.term == term
        assert status.role is Role.FOLLOWER
        await leader.apply(b"during")

        cluster.network.heal()
        with trio.fail_after(2 * HEARTBEAT):
            await cluster.wait_until(lambda: straggler.status().leader_id == leader.id)
        await trio.sleep(5 * ELECTION_TIMEOUT)
        assert leader.status().role is Role.LEADER
        assert set(_terms(cluster).values()) == {term}
        assert max(cluster.checker.leaders) == term
        await _settle(cluster, b"after")
        assert _assert_converged(cluster) == [b"before", b"during", b"after"]


# ------------------------------------------------------------------------------- 8. check-quorum


@pytest.mark.parametrize("size", [3, 5])
@_bounded()
async def test_check_quorum_steps_down_a_cut_off_leader(
    size: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: dissertation §6.2 (check-quorum). A leader on the minority side of a
    partition (alone of 3, or with one follower of 5) becomes a follower within about two
    election timeouts, in its own term, knowing no leader."""
    async with open_memory_cluster(size, seed=90 + size, **TIMING) as cluster:
        leader = await cluster.wait_for_leader()
        await _settle(cluster)
        term = leader.status().term
        others = [i for i in cluster.node_ids if i != leader.id]
        minority = [leader.id, *others[: (size - 1) // 2 - 1]]
        majority = [i for i in cluster.node_ids if i not in minority]
        cluster.network.partition(minority, majority)
        cut_at = trio.current_time()
        with trio.fail_after(STEP_DOWN_DEADLINE):
            await cluster.wait_until(lambda: leader.status().role is not Role.LEADER)
        assert trio.current_time() - cut_at >= ELECTION_TIMEOUT - HEARTBEAT
        status = leader.status()
        assert status.role is Role.FOLLOWER
        assert status.term == term
        assert status.leader_id is None
        for node_id in minority:
            assert cluster.node(node_id).status().role is Role.FOLLOWER
        with trio.fail_after(ELECTION_DEADLINE):
            new = await _leader_among(cluster, majority)
        assert new.status().term > term


# ---------------------------------------------------------------------- 9. leader stickiness


class _OneWayNetwork(MemoryNetwork):
    """A MemoryNetwork that can also block single directed links."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.blocked: set[tuple[str, str]] = set()

    def can_reach(self, a: str, b: str) -> bool:
        return (a, b) not in self.blocked and super().can_reach(a, b)


@_bounded()
async def test_follower_that_cannot_hear_the_leader_does_not_depose_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reference: dissertation §4.2.3 (leader stickiness), §9.6. A follower that stops hearing
    a healthy leader (one-way loss) times out and asks for votes, but the others, which hear
    the leader, ignore it: the leader and the term survive, and it rejoins when the link heals."""
    network = _OneWayNetwork(seed=9)
    async with open_memory_cluster(3, seed=9, network=network, **TIMING) as cluster:
        leader = await cluster.wait_for_leader()
        await _settle(cluster, b"before")
        term = leader.status().term
        deaf = cluster.node(next(i for i in cluster.node_ids if i != leader.id))

        network.blocked.add((leader.id, deaf.id))
        await trio.sleep(10 * ELECTION_TIMEOUT)
        assert deaf.status().leader_id is None  # it timed out and campaigned (pre-vote)
        await leader.apply(b"during")
        assert leader.status().role is Role.LEADER
        assert set(_terms(cluster).values()) == {term}

        network.blocked.clear()
        with trio.fail_after(2 * HEARTBEAT):
            await cluster.wait_until(lambda: deaf.status().leader_id == leader.id)
        await _settle(cluster, b"after")
        assert set(_terms(cluster).values()) == {term}
        assert max(cluster.checker.leaders) == term
        assert _assert_converged(cluster) == [b"before", b"during", b"after"]


@pytest.mark.parametrize("size", [3, 5])
@_bounded()
async def test_restarted_follower_does_not_depose_a_healthy_leader(
    size: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: §5.2, dissertation §4.2.3. A follower crashed for a while (the cluster
    commits without it) and restarted from its storage rejoins under the same leader, in the
    same term, and catches up."""
    async with open_memory_cluster(size, seed=100 + size, **TIMING) as cluster:
        leader = await cluster.wait_for_leader()
        await _settle(cluster, b"before")
        term = leader.status().term
        follower_id = next(i for i in cluster.node_ids if i != leader.id)
        await cluster.crash(follower_id)
        for i in range(5):
            await leader.apply(b"while-down-%d" % i)
            await trio.sleep(ELECTION_TIMEOUT)
        follower = await cluster.start(follower_id)
        with trio.fail_after(2 * HEARTBEAT):
            await cluster.wait_until(lambda: follower.status().leader_id == leader.id)
        await trio.sleep(5 * ELECTION_TIMEOUT)
        assert leader.status().role is Role.LEADER
        assert set(_terms(cluster).values()) == {term}
        await _settle(cluster, b"after")
        assert _assert_converged(cluster) == [
            b"before",
            *(b"while-down-%d" % i for i in range(5)),
            b"after",
        ]


# --------------------------------------------------------------- 10. many concurrent applies


@_bounded()
async def test_concurrent_applies_are_batched_and_applied_everywhere_in_one_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reference: §5.3, dissertation §10.2 (batching and pipelining). 500 concurrent applies
    through the leader of 5 all succeed at distinct positions, every node applies all of them
    in the same order, and far fewer messages than one AppendEntries per command per follower
    cross the network."""
    count = 500
    async with open_memory_cluster(5, seed=10, **TIMING) as cluster:
        leader = await cluster.wait_for_leader()
        before = cluster.network.statistics().sent
        results: dict[bytes, object] = {}
        with trio.fail_after(5 * ELECTION_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(_propose_and_record, leader, b"cmd-%d" % i, results)
        sent = cluster.network.statistics().sent - before
        assert len(results) == count
        positions = sorted(results.values())  # type: ignore[type-var]
        assert positions == list(range(1, count + 1)), "every apply succeeds at its own position"
        leader_history = _commands(cluster, leader.id)
        for command, position in results.items():
            assert leader_history[position - 1] == command  # type: ignore[operator]
        with trio.fail_after(5 * ELECTION_TIMEOUT):
            await cluster.wait_applied(leader.status().last_applied)
        history = _assert_converged(cluster)
        assert sorted(history) == sorted(b"cmd-%d" % i for i in range(count))
        assert sent < count * 4 // 10, f"{sent} messages for {count} commands"


# -------------------------------------------------------------------- 11. a lossy network


@pytest.mark.parametrize("size", [3, 5])
@_bounded(300.0)
async def test_lossy_reordering_duplicating_network_still_commits(
    size: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Reference: §5.3, dissertation §3.2 (messages may be lost, delayed, duplicated and
    reordered). With 20% loss, delays up to 50 ms, reordering and duplicates, 100 sequential
    writes commit and every node applies the same history."""
    network = MemoryNetwork(
        seed=11 + size, drop_rate=0.2, delay=(0.0, 0.05), duplicate_rate=0.1, reorder=True
    )
    writes = [b"w-%d" % i for i in range(100)]
    async with open_memory_cluster(size, seed=11 + size, network=network, **TIMING) as cluster:
        retried = 0
        with trio.fail_after(200 * ELECTION_TIMEOUT):
            for command in writes:
                while True:
                    try:
                        await cluster.apply(command)
                    except LeadershipLostError:
                        retried += 1  # outcome unknown: the command may land twice
                        continue
                    break
            leader = await cluster.wait_for_leader()
            await cluster.wait_applied(leader.status().last_applied)
        assert network.statistics().dropped > 0
        assert network.statistics().duplicated > 0
        history = _assert_converged(cluster)
        first_seen = list(dict.fromkeys(c for c in history if c.startswith(b"w-")))
        assert first_seen == writes
        assert len(history) <= len(writes) + retried


# ------------------------------------------------------------------------ 12. node shutdown


def _descendants(task: trio.lowlevel.Task) -> set[trio.lowlevel.Task]:
    found: set[trio.lowlevel.Task] = set()
    pending = [task]
    while pending:
        current = pending.pop()
        for nursery in current.child_nurseries:
            for child in nursery.child_tasks:
                if child not in found:
                    found.add(child)
                    pending.append(child)
    return found


@_bounded()
async def test_crashing_a_node_ends_all_its_tasks_and_fails_pending_applies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reference: §5.1 (a crashed server stops; clients learn nothing more from it). Crashing
    the leader returns at once, fails its pending apply() with LeadershipLostError (the
    command is in the log: its outcome is unknown), and leaves no task of that node behind;
    closing the cluster leaves no task at all."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    tasks_before = len(_descendants(root))
    async with open_memory_cluster(3, seed=12, start=False, **TIMING) as cluster:
        run_tasks: dict[str, trio.lowlevel.Task] = {}
        this_task = trio.lowlevel.current_task()
        for node_id in cluster.node_ids:
            present = _descendants(this_task)
            await cluster.start(node_id)
            new_roots = [
                t
                for t in _descendants(this_task) - present
                if t.parent_nursery is not None and t.parent_nursery.parent_task is this_task
            ]
            assert len(new_roots) == 1
            run_tasks[node_id] = new_roots[0]
        leader = await cluster.wait_for_leader()
        await _settle(cluster)
        leader_tasks = _descendants(run_tasks[leader.id])
        # transport, timer, ready loop, applier, the leader scope with 2 replicators + watch
        assert len(leader_tasks) >= 8, leader_tasks

        cluster.network.isolate(leader.id)
        outcome: dict[bytes, object] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_propose_and_record, leader, b"pending", outcome)
            await trio.sleep(HEARTBEAT)
            assert outcome == {}  # cannot commit: it is still waiting
            crash_at = trio.current_time()
            with trio.fail_after(HEARTBEAT):
                await cluster.crash(leader.id)
            assert trio.current_time() == crash_at
        assert isinstance(outcome[b"pending"], LeadershipLostError)
        alive = _descendants(root)
        assert not (leader_tasks | {run_tasks[leader.id]}) & alive
        with pytest.raises(NodeClosedError):
            await leader.apply(b"after-crash")
        with pytest.raises(NodeClosedError):
            leader.status()
        survivors = [run_tasks[i] for i in cluster.running]
        assert all(t in alive for t in survivors)
    assert not _descendants(trio.lowlevel.current_task())
    assert len(_descendants(root)) == tasks_before


async def test_followers_learn_a_commit_soon_even_between_heartbeats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The commit index alone waits only briefly for entries to ride on (``_COMMIT_LINGER``),
    not for the next heartbeat: with heartbeats a second apart, followers apply within a few
    network round trips of the leader."""
    async with open_memory_cluster(
        3, seed=52, election_timeout=5.0, heartbeat_interval=1.0
    ) as cluster:
        leader = await cluster.wait_for_leader()
        await cluster.wait_applied(leader.status().commit_index)
        await leader.apply(b"one")
        applied_at = trio.current_time()
        await cluster.wait_applied(leader.status().commit_index)
        assert trio.current_time() - applied_at < 0.1


class _ReplicatorSteps(trio.abc.Instrument):
    """Counts the task steps of the leaders' replicator tasks."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._replicate_to"):
            self.steps += 1


async def test_the_leader_answers_its_followers_without_waking_its_replicators(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A follower's answer, the entries it lets through and the news of a higher commit
    index are all dealt with in the task that delivered the answer: under a stream of
    writes the replicator tasks, whose task switches would cost more than the sending,
    sleep. (They wake for heartbeats, a second apart here, and for commit news that waited
    ``_COMMIT_LINGER`` in vain.)"""
    async with open_memory_cluster(
        3, seed=54, election_timeout=5.0, heartbeat_interval=1.0
    ) as cluster:
        leader = await cluster.wait_for_leader()
        await cluster.wait_applied(leader.status().commit_index)
        counter = _ReplicatorSteps()
        trio.lowlevel.add_instrument(counter)
        try:
            started = trio.current_time()
            for number in range(100):
                await leader.apply(f"c{number}".encode())
            elapsed = trio.current_time() - started
        finally:
            trio.lowlevel.remove_instrument(counter)
        await cluster.wait_applied(leader.status().commit_index)
        # Two replicators: a step each per heartbeat and at most one linger per write
        # would be 200+; what remains is the heartbeats and the last write's commit news.
        assert elapsed < 1.0
        assert counter.steps <= 6, counter.steps


async def test_a_follower_hearing_its_leader_does_not_move_its_timer_per_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each message from the leader pushes the election deadline back, but the timer's
    scope only catches up when it expires (about once per election timeout): moving a
    Trio deadline for every AppendEntries cost a follower more than the message did.
    The timer still fires once the leader falls silent."""
    async with open_memory_cluster(3, seed=55, election_timeout=1.0) as cluster:
        leader = await cluster.wait_for_leader()
        await cluster.wait_applied(leader.status().commit_index)
        follower = next(n for n in cluster.running.values() if n is not leader)
        term = follower.status().term
        scope_deadlines, election_deadlines = set(), set()
        started = trio.current_time()
        for number in range(200):
            await leader.apply(f"c{number}".encode())
            await trio.sleep(0.005)
            scope = follower._timer_scope
            assert scope is not None
            scope_deadlines.add(scope.deadline)
            election_deadlines.add(follower._election_deadline)
        elapsed = trio.current_time() - started
        assert follower.status().term == term  # no election while the leader is heard
        assert len(election_deadlines) > 150  # pushed back by (nearly) every write
        # The scope moves when it expires (once per election timeout) and when a new
        # random deadline comes before its own (a new lowest draw: about ln(200) = 5.3
        # times in 200 draws); before, it moved for every message.
        assert elapsed < 2.0
        assert len(scope_deadlines) <= 20, len(scope_deadlines)

        await cluster.crash(leader.id)
        silenced = trio.current_time()
        await cluster.wait_until(lambda: follower.status().term > term)
        # Campaigning within [1, 2) election timeouts of the last message, as before (or
        # sooner: a follower whose leader's connection closes campaigns at once).
        assert trio.current_time() - silenced < 2.0


WriteReport = Callable[[NodeId, str, Sequence[Entry]], None]


class _ReportingStorage(MemoryStorage):
    """MemoryStorage that reports each write to ``report(node_id, path, entries)`` before
    making it: path "now" for ``persist_now`` (the delivering task's), "loop" for
    ``persist`` (the ready loop's)."""

    def __init__(self, node_id: NodeId, report: WriteReport) -> None:
        super().__init__()
        self.node_id = node_id
        self.report = report

    def persist_now(
        self, *, hard_state: HardState | None, first_index: int | None, entries: Sequence[Entry]
    ) -> bool:
        self.report(self.node_id, "now", entries)
        return super().persist_now(hard_state=hard_state, first_index=first_index, entries=entries)

    async def persist(
        self, *, hard_state: HardState | None, first_index: int | None, entries: Sequence[Entry]
    ) -> None:
        self.report(self.node_id, "loop", entries)
        await super().persist(hard_state=hard_state, first_index=first_index, entries=entries)


async def test_the_leader_sends_new_entries_before_writing_them_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Dissertation §10.2.1: the leader's own write overlaps the followers' round trip, so
    the AppendEntries carrying an entry leaves before the leader's storage is asked to
    write it (a write that may block the event loop)."""
    events: list[tuple[str, NodeId, int]] = []

    def report(node_id: NodeId, path: str, entries: Sequence[Entry]) -> None:
        # Either path: the ready loop's, or the delivering task's once the disk has rested.
        for entry in entries:
            events.append(("persist", node_id, entry.index))

    storage = functools.partial(_ReportingStorage, report=report)
    async with open_memory_cluster(3, seed=53, storage_factory=storage) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.apply(b"first")  # its no-op is written too
        transport = leader._transport
        real_send = transport.send_nowait

        def recording_send(to: NodeId, message: Message) -> None:
            for entry in getattr(message, "entries", ()):
                events.append(("send", to, entry.index))
            real_send(to, message)

        transport.send_nowait = recording_send  # type: ignore[method-assign]
        events.clear()
        for number in range(20):
            await leader.apply(f"c{number}".encode())
        followers = [node_id for node_id in cluster.node_ids if node_id != leader.id]
        persisted = [index for kind, who, index in events if kind == "persist" and who == leader.id]
        assert len(persisted) == 20
        for index in persisted:
            written_at = events.index(("persist", leader.id, index))
            for follower in followers:
                assert ("send", follower, index) in events[:written_at], (index, follower)


async def test_a_leader_at_rest_writes_at_once_and_under_load_shares_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A leader writes new entries in the burst that brought them, right after sending
    them, when its disk has rested since its last write at least as long as that write
    took: a client writing one command at a time saves the ready loop's task switch. Under
    load the ready loop writes, so that requests of one scheduler round from many
    connections share one write: ten arriving at once cost two writes (the first one's,
    made at once, and one for the other nine), not ten."""
    writes: list[tuple[str, int]] = []  # the leader's: ("now" | "loop", entries written)
    leader_id: list[NodeId] = []

    def report(node_id: NodeId, path: str, entries: Sequence[Entry]) -> None:
        if entries and node_id in leader_id:
            writes.append((path, len(entries)))
        autojump_clock.jump(0.002)  # each write takes 2 ms of the virtual clock

    storage = functools.partial(_ReportingStorage, report=report)
    network = MemoryNetwork(seed=54, delay=(0.001, 0.001))
    async with open_memory_cluster(3, seed=54, network=network, storage_factory=storage) as cluster:
        leader = await cluster.wait_for_leader()
        leader_id.append(leader.id)
        address = cluster.address_of(leader.id)
        await leader.apply(b"settled")
        await trio.sleep(0.1)

        writes.clear()
        client = network.client("one-at-a-time")
        for number in range(5):
            response = await client.request(address, "apply", b"%d" % number, timeout=5)
            assert response.ok
            await trio.sleep(0.01)
        assert writes == [("now", 1)] * 5

        writes.clear()
        async with trio.open_nursery() as nursery:
            for number in range(10):
                other = network.client(f"client-{number}")
                nursery.start_soon(
                    functools.partial(other.request, address, "apply", b"x", timeout=5)
                )
        assert writes == [("now", 1), ("loop", 9)]


@pytest.mark.parametrize("seed", [1, 2, 3])
@_bounded(4 * TEST_DEADLINE)
async def test_every_answer_leaves_only_after_what_it_promises_is_persisted(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Figure 2 ("persistent state, updated on stable storage before responding"), checked
    on every message as it is sent, through elections, partitions and divergent logs: a
    granted vote after the vote is stored, a successful AppendEntries answer after the entries
    it reports, and no message in a term not yet stored (pre-votes and their answers carry a
    hypothetical term). Nodes write at once after the transport's burst (``_settle``) and in
    the ready loop (``SimulatedDisk`` takes half the writes inline): both paths are held to it.
    """
    from tinyraft_trio._core._messages import (
        AppendEntriesResponse,
        RequestVote,
        RequestVoteResponse,
    )
    from tinyraft_trio.testing import SimulatedDisk

    disks: dict[NodeId, SimulatedDisk] = {}
    checked = {"acks": 0, "votes": 0}

    def make_disk(node_id: NodeId) -> SimulatedDisk:
        disks[node_id] = SimulatedDisk(random.Random(seed), fsync_delay=(0.0, 0.002))
        return disks[node_id]

    def persisted_last(disk: SimulatedDisk) -> int:
        return disk.first_index + len(disk.entries) - 1

    def check(sender: NodeId, to: NodeId, message: Message) -> None:
        disk = disks[sender]
        stored = disk.hard_state
        if not (isinstance(message, RequestVote | RequestVoteResponse) and message.pre_vote):
            assert message.term <= stored.current_term, (sender, message, stored)
        if isinstance(message, AppendEntriesResponse) and message.success:
            assert message.match_index <= persisted_last(disk), (sender, message)
            checked["acks"] += 1
        granted = isinstance(message, RequestVoteResponse) and message.vote_granted
        if granted and not message.pre_vote:
            assert (stored.current_term, stored.voted_for) == (message.term, to), message
            checked["votes"] += 1
        if isinstance(message, RequestVote) and not message.pre_vote:
            assert (stored.current_term, stored.voted_for) == (message.term, sender), message

    async with open_memory_cluster(3, seed=seed, storage_factory=make_disk, **TIMING) as cluster:
        for node_id in cluster.node_ids:
            transport = cluster.node(node_id)._transport
            real_send = transport.send_nowait

            def checked_send(
                to: NodeId, message: Message, sender: NodeId = node_id, send: Any = real_send
            ) -> None:
                check(sender, to, message)
                send(to, message)

            transport.send_nowait = checked_send  # type: ignore[method-assign]
        for round_number in range(6):
            leader = await _leader_among(cluster, cluster.node_ids)
            outcomes: dict[bytes, object] = {}
            for number in range(20):
                await _propose_and_record(leader, f"r{round_number}c{number}".encode(), outcomes)
            # Cut the leader off while it still takes commands: its uncommitted suffix
            # diverges, and the rest elect a new leader that overwrites it.
            cluster.network.isolate(leader.id)
            for number in range(5):
                with trio.move_on_after(HEARTBEAT):
                    await leader.apply(f"lost{round_number}-{number}".encode())
            others = [node_id for node_id in cluster.node_ids if node_id != leader.id]
            with trio.fail_after(ELECTION_DEADLINE):
                await _leader_among(cluster, others)
            cluster.network.heal()
        await _settle(cluster)
        _assert_converged(cluster)
    assert checked["acks"] > 50 and checked["votes"] >= 3, checked
    assert sum(disk.inline_writes for disk in disks.values()) > 50
