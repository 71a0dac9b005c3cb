"""Linearizable reads (ReadIndex, §6.4) and exactly-once client sessions (§6.3), simulated."""

from __future__ import annotations

import msgpack
import pytest
import trio
import trio.testing

from tinyraft_trio import LeadershipLostError, NodeClosedError, NotLeaderError, RaftError, Role
from tinyraft_trio._sessions import (
    SNAPSHOT_FORMAT,
    SessionTable,
    encode_command,
    unwrap_snapshot,
    wrap_snapshot,
)
from tinyraft_trio.examples.kv import KeyValueStore, get_query, put_command
from tinyraft_trio.testing import (
    MemoryCluster,
    MemoryNetwork,
    RecordingStateMachine,
    open_memory_cluster,
)


def kv(cluster: MemoryCluster, node_id: str) -> KeyValueStore:
    machine = cluster.state_machines[node_id]
    assert isinstance(machine, KeyValueStore)
    return machine


async def test_leader_and_follower_reads_see_every_completed_write(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=51, state_machine_factory=KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        followers = [n for n in cluster.running.values() if n.id != leader.id]
        for i in range(20):
            await leader.apply(put_command("k", str(i)))
            # A follower may not have applied the write yet; its read must still see it.
            assert await followers[i % 2].query(get_query("k")) == str(i)
            assert await leader.query(get_query("k")) == str(i)


async def test_an_isolated_old_leader_never_serves_a_stale_read(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=52, state_machine_factory=KeyValueStore) as cluster:
        old = await cluster.wait_for_leader()
        await old.apply(put_command("k", "old"))
        cluster.network.isolate(old.id)
        with trio.fail_after(10):
            await cluster.wait_until(
                lambda: any(
                    n.status().role is Role.LEADER and n.id != old.id
                    for n in cluster.running.values()
                )
            )
        new = next(n for n in cluster.leaders() if n.id != old.id)
        await new.apply(put_command("k", "new"))
        with trio.move_on_after(10) as waited:
            with pytest.raises((LeadershipLostError, NotLeaderError)):
                await old.query(get_query("k"))
        # Either it failed, or it is still blocked when we stop waiting: never "old".
        assert waited.cancelled_caught or old.status().role is not Role.LEADER


async def test_stale_reads_skip_the_barrier(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=53, state_machine_factory=KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.apply(put_command("k", "v"))
        follower = next(n for n in cluster.running.values() if n.id != leader.id)
        cluster.network.isolate(follower.id)
        await trio.sleep(5)
        assert await follower.query(get_query("k"), stale=True) in ("v", None)
        with pytest.raises((NotLeaderError, LeadershipLostError)):
            await follower.query(get_query("k"))


async def submit(
    cluster: MemoryCluster, node_id: str, client: str, sequence: int, command: bytes
) -> list[object]:
    rpc = cluster.network.client(client)
    response = await rpc.request(
        cluster.address_of(node_id),
        "submit",
        msgpack.packb([client, sequence, command]),
        timeout=10,
    )
    answer: list[object] = msgpack.unpackb(response.body)
    return answer


async def test_a_retried_command_is_applied_once(autojump_clock: object) -> None:
    async with open_memory_cluster(3, seed=54) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        first = await submit(cluster, leader.id, "c1", 1, b"once")
        again = await submit(cluster, follower, "c1", 1, b"once")  # a retry, via a follower
        assert first == ["ok", 1]
        assert again == ["ok", 1, cluster.address_of(leader.id)]  # forwarded: names the leader
        assert await submit(cluster, leader.id, "c1", 2, b"twice") == ["ok", 2]
        await cluster.wait_applied(leader.status().commit_index)
        for machine in cluster.state_machines.values():
            assert isinstance(machine, RecordingStateMachine)
            assert machine.commands == [b"once", b"twice"]


async def test_sessions_survive_snapshots_and_restarts(autojump_clock: object) -> None:
    async with open_memory_cluster(
        3, seed=55, snapshot_threshold=10, trailing_entries=2
    ) as cluster:
        leader = await cluster.wait_for_leader()
        assert await submit(cluster, leader.id, "c1", 1, b"once") == ["ok", 1]
        for i in range(30):
            await cluster.apply(f"filler {i}".encode())
        assert leader.status().snapshot_index > 1
        for node_id in list(cluster.running):
            await cluster.crash(node_id)
        for node_id in cluster.node_ids:
            await cluster.start(node_id)
        leader = await cluster.wait_for_leader()
        assert await submit(cluster, leader.id, "c1", 1, b"once") == ["ok", 1]
        await cluster.apply(b"last")
        await cluster.wait_applied(leader.status().commit_index)
        for machine in cluster.state_machines.values():
            assert isinstance(machine, RecordingStateMachine)
            assert machine.commands.count(b"once") <= 1  # restored from the snapshot, once


def test_session_table_expires_idle_clients_by_log_time() -> None:
    table = SessionTable(timeout_ms=1000)
    machine = RecordingStateMachine()
    outcome, ran = table.apply(encode_command("a", 1, 0, 10_000, b"x"), machine)
    assert (outcome, ran) == (("ok", 1), True)
    assert table.apply(encode_command("a", 1, 0, 10_500, b"x"), machine) == (("ok", 1), False)
    table.apply(encode_command("b", 1, 0, 12_000, b"y"), machine)  # a's session expires
    assert len(table) == 1
    assert table.apply(encode_command("a", 1, 0, 12_001, b"x"), machine)[1] is True


@pytest.mark.parametrize("size", [0, 255, 256, 65_535, 65_536, 300_000])
def test_a_wrapped_snapshot_is_the_msgpack_array_and_unwraps(size: int) -> None:
    """``wrap_snapshot`` builds the bytes around the state machine's snapshot instead of
    packing it again; the result must be exactly what msgpack makes of the array, for each
    bin header size."""
    sessions = SessionTable(timeout_ms=1000)
    sessions.apply(encode_command("c1", 1, 0, 10_000, b"x"), RecordingStateMachine())
    user = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wrapped = wrap_snapshot(sessions, user)
    assert wrapped == msgpack.packb([SNAPSHOT_FORMAT, sessions.snapshot(), user])
    restored = SessionTable(timeout_ms=1000)
    assert unwrap_snapshot(wrapped, restored) == user
    assert restored.snapshot() == sessions.snapshot()


async def test_lease_reads_skip_the_round_but_never_read_stale(autojump_clock: object) -> None:
    """read_mode="lease": no heartbeat round while the lease holds; after losing the
    majority the old leader's lease runs out before anyone else can lead."""
    async with open_memory_cluster(
        3, seed=56, state_machine_factory=KeyValueStore, read_mode="lease"
    ) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.apply(put_command("k", "v1"))
        await trio.sleep(1)  # heartbeats acknowledged: the lease holds
        sent = cluster.network.statistics().sent
        for _ in range(20):
            assert await leader.query(get_query("k")) == "v1"
        assert cluster.network.statistics().sent - sent < 10  # no round per read
        cluster.network.isolate(leader.id)
        with trio.fail_after(10):
            await cluster.wait_until(
                lambda: any(
                    n.status().role is Role.LEADER and n.id != leader.id
                    for n in cluster.running.values()
                )
            )
        new = next(n for n in cluster.leaders() if n.id != leader.id)
        await new.apply(put_command("k", "v2"))
        with trio.move_on_after(5):
            with pytest.raises((LeadershipLostError, NotLeaderError)):
                assert await leader.query(get_query("k")) != "v1"


async def test_a_read_waiting_for_the_new_leaders_no_op_ends_when_the_node_stops() -> None:
    """A read on a new leader waits for its no-op to commit; if the node stops meanwhile the
    read fails with NodeClosedError. (It used to spin: a stopped node's events stay set.)

    Real time, not a MockClock: a spinning task never lets virtual time pass, so the
    deadline below would never fire and the test would hang instead of failing.
    """
    network = MemoryNetwork(seed=61, delay=(0.05, 0.05))
    with trio.fail_after(10):
        async with open_memory_cluster(
            3, seed=61, network=network, state_machine_factory=KeyValueStore
        ) as cluster:
            await cluster.wait_until(lambda: bool(cluster.leaders()))
            leader = cluster.leaders()[0]
            network.isolate(leader.id)  # its no-op, still in flight, is lost
            assert leader.status().commit_index < leader.status().last_log_index
            outcome: list[BaseException] = []

            async def read() -> None:
                try:
                    await leader.query(get_query("k"))
                except RaftError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked(0.01)
                with trio.fail_after(2):
                    await cluster.crash(leader.id)
            assert len(outcome) == 1 and isinstance(outcome[0], NodeClosedError)
