"""The in-memory network: delivery through the real codec, faults, partitions and crashes.

Every test runs in virtual time (pytest-trio's ``autojump_clock``). Trio's scheduler is
randomized, so tests assert outcomes (what arrived, when, how often), never interleavings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from tinyraft_trio._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from tinyraft_trio._core._types import Entry, EntryKind
from tinyraft_trio._transport import Transport, TransportStatistics
from tinyraft_trio._wire import ProtocolError
from tinyraft_trio.testing._network import MemoryNetwork, MemoryTransport, NetworkStatistics

SETTLE = 100.0
"""Virtual seconds that are plenty for every message in flight to arrive."""

_sending: list[str] = []
"""Ids of the fake nodes inside a ``send_nowait`` call right now (to catch re-entrant delivery)."""


def _beat(n: int) -> AppendEntriesResponse:
    """A small message whose ``match_index`` numbers it."""
    return AppendEntriesResponse(term=1, success=True, match_index=n)


class Node:
    """A fake node: serves a transport and records what it receives."""

    def __init__(self, network: MemoryNetwork, node_id: str) -> None:
        self.network = network
        self.node_id = node_id
        self.transport = network.transport(node_id)
        self.scope = trio.CancelScope()
        self.received: list[tuple[float, str, Message]] = []

    def deliver(self, sender: str, message: Message) -> None:
        assert not _sending, "delivered re-entrantly inside send_nowait"
        self.received.append((trio.current_time(), sender, message))

    def send(self, to: str, message: Message) -> None:
        _sending.append(self.node_id)
        try:
            self.transport.send_nowait(to, message)
        finally:
            _sending.pop()

    def messages(self, sender: str | None = None) -> list[Message]:
        return [m for _, s, m in self.received if sender is None or s == sender]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            await self.transport.serve(
                self.node_id, self.deliver, lambda _peer: None, task_status=task_status
            )

    def crash(self) -> None:
        self.scope.cancel()

    async def restart(self, nursery: trio.Nursery) -> None:
        self.transport = self.network.transport(self.node_id)
        self.scope = trio.CancelScope()
        await nursery.start(self.run)


@asynccontextmanager
async def open_nodes(
    network: MemoryNetwork, *node_ids: str
) -> AsyncIterator[tuple[trio.Nursery, dict[str, Node]]]:
    """Serve one fake node per id; cancel them all on exit."""
    nodes = {node_id: Node(network, node_id) for node_id in node_ids}
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await nursery.start(node.run)
        yield nursery, nodes
        nursery.cancel_scope.cancel()


def _numbers(messages: list[Message]) -> list[int]:
    return [m.match_index for m in messages if isinstance(m, AppendEntriesResponse)]


def test_memory_transport_is_a_transport() -> None:
    transport: Transport = MemoryNetwork().transport("a")
    assert isinstance(transport, MemoryTransport)


async def test_every_message_type_is_delivered_through_the_codec(
    autojump_clock: trio.testing.MockClock,
) -> None:
    messages: list[Message] = [
        RequestVote(term=3, candidate_id="a", last_log_index=7, last_log_term=2),
        RequestVote(
            term=4,
            candidate_id="a",
            last_log_index=7,
            last_log_term=2,
            pre_vote=True,
            transfer=True,
        ),
        RequestVoteResponse(term=3, vote_granted=True),
        RequestVoteResponse(term=4, vote_granted=False, pre_vote=True),
        AppendEntries(
            term=3,
            leader_id="a",
            prev_log_index=6,
            prev_log_term=2,
            entries=(
                Entry(term=3, index=7, kind=EntryKind.NOOP),
                Entry(term=3, index=8, data=b"set x 1"),
                Entry(term=3, index=9, kind=EntryKind.CONFIG, data=b"\x00\xff"),
            ),
            leader_commit=6,
        ),
        AppendEntries(
            term=3, leader_id="a", prev_log_index=9, prev_log_term=3, entries=(), leader_commit=9
        ),
        AppendEntriesResponse(term=3, success=True, match_index=9),
        AppendEntriesResponse(
            term=3, success=False, reject_index=6, conflict_index=4, conflict_term=2
        ),
        TimeoutNow(term=3, leader_id="a"),
    ]
    network = MemoryNetwork()
    async with open_nodes(network, "a", "b", "c") as (_, nodes):
        for message in messages:
            nodes["a"].send("b", message)
            nodes["c"].send("b", message)
            nodes["b"].send("a", message)
        await trio.sleep(SETTLE)
        # Decoded copies, equal in value, not the objects that were sent.
        assert nodes["b"].messages("a") == messages
        assert nodes["b"].messages("c") == messages
        assert nodes["a"].messages("b") == messages
        assert all(m is not o for m, o in zip(nodes["b"].messages("a"), messages, strict=True))
        assert nodes["c"].messages() == []
    stats = network.statistics()
    assert stats == NetworkStatistics(sent=27, delivered=27, dropped=0, duplicated=0)
    assert nodes["a"].transport.statistics() == TransportStatistics(
        messages_sent=9, messages_received=9
    )
    assert nodes["b"].transport.statistics() == TransportStatistics(
        messages_sent=9, messages_received=18
    )


async def test_zero_delay_delivery_is_prompt_and_never_reentrant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    async with open_nodes(network, "a", "b") as (_, nodes):
        start = trio.current_time()
        nodes["a"].send("b", _beat(1))
        assert nodes["b"].received == []  # not inside send_nowait
        while not nodes["b"].received:
            await trio.lowlevel.checkpoint()
        assert trio.current_time() == start


async def test_fifo_per_link_without_reorder(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=7, delay=(0.01, 1.0))
    async with open_nodes(network, "a", "b", "c") as (_, nodes):
        for i in range(300):
            nodes["a"].send("c", _beat(i))
            nodes["b"].send("c", _beat(1000 + i))
            if i % 10 == 0:
                await trio.sleep(0.05)
        await trio.sleep(SETTLE)
    assert _numbers(nodes["c"].messages("a")) == list(range(300))
    assert _numbers(nodes["c"].messages("b")) == list(range(1000, 1300))


async def test_reorder_lets_messages_overtake(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=7, delay=(0.01, 1.0), reorder=True)
    async with open_nodes(network, "a", "b") as (_, nodes):
        for i in range(300):
            nodes["a"].send("b", _beat(i))
        await trio.sleep(SETTLE)
    received = _numbers(nodes["b"].messages("a"))
    assert sorted(received) == list(range(300))
    assert received != list(range(300))
    # Each copy arrives at its own time, so arrival order is delivery-time order.
    times = [t for t, _, _ in nodes["b"].received]
    assert times == sorted(times)


@pytest.mark.parametrize("reorder", [False, True])
async def test_virtual_delay_is_respected(
    autojump_clock: trio.testing.MockClock, reorder: bool
) -> None:
    low, high = 0.5, 2.0
    network = MemoryNetwork(seed=3, delay=(low, high), reorder=reorder)
    sent_at: dict[int, float] = {}
    async with open_nodes(network, "a", "b") as (_, nodes):
        for i in range(100):
            sent_at[i] = trio.current_time()
            nodes["a"].send("b", _beat(i))
            await trio.sleep(0.1)
        await trio.sleep(SETTLE)
    assert len(nodes["b"].received) == 100
    latencies = []
    for at, _, message in nodes["b"].received:
        assert isinstance(message, AppendEntriesResponse)
        latency = at - sent_at[message.match_index]
        assert low - 1e-9 <= latency <= high + 1e-9
        latencies.append(latency)
    # Drawn over the range, not pinned to one end.
    assert min(latencies) < low + 0.5 * (high - low) < max(latencies)


async def test_partition_blocks_both_ways_and_heal_restores(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    async with open_nodes(network, "a", "b", "c") as (_, nodes):

        async def exchange(tag: int) -> None:
            for node in nodes.values():
                node.received.clear()
            for sender in nodes.values():
                for to in nodes:
                    if to != sender.node_id:
                        sender.send(to, _beat(tag))
            await trio.sleep(SETTLE)

        def heard(node_id: str) -> set[str]:
            return {sender for _, sender, _ in nodes[node_id].received}

        network.partition({"a", "b"}, ["c"])
        assert network.can_reach("a", "b") and network.can_reach("b", "a")
        assert not network.can_reach("a", "c") and not network.can_reach("c", "b")
        await exchange(1)
        assert heard("a") == {"b"}
        assert heard("b") == {"a"}
        assert heard("c") == set()

        # Nodes named in no group are cut off from everyone.
        network.partition({"a", "b"})
        await exchange(2)
        assert heard("a") == {"b"} and heard("c") == set()

        network.heal()
        await exchange(3)
        assert heard("a") == {"b", "c"}
        assert heard("c") == {"a", "b"}

        network.isolate("b")
        assert network.can_reach("a", "c") and not network.can_reach("a", "b")
        await exchange(4)
        assert heard("a") == {"c"}
        assert heard("b") == set()
        assert heard("c") == {"a"}

        network.heal()
        await exchange(5)
        assert heard("b") == {"a", "c"}


def test_partition_arguments_are_checked() -> None:
    network = MemoryNetwork()
    with pytest.raises(TypeError):
        network.partition("ab", {"c"})
    with pytest.raises(ValueError, match="more than one group"):
        network.partition({"a", "b"}, {"b", "c"})
    with pytest.raises(ValueError):
        MemoryNetwork(drop_rate=1.5)
    with pytest.raises(ValueError):
        network.set_faults(delay=(2.0, 1.0))
    assert network.can_reach("a", "a")


async def test_partition_loses_messages_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(delay=(1.0, 1.0))
    async with open_nodes(network, "a", "b") as (_, nodes):
        nodes["a"].send("b", _beat(1))
        nodes["b"].send("a", _beat(2))
        await trio.sleep(0.5)
        network.isolate("a")
        await trio.sleep(0.2)
        network.heal()  # healed before arrival: nothing was cut off at delivery time
        await trio.sleep(1.0)
        assert _numbers(nodes["b"].messages()) == [1]
        assert _numbers(nodes["a"].messages()) == [2]
        # A partition that starts while a message is in flight loses it.
        nodes["a"].send("b", _beat(3))
        network.isolate("b")
        await trio.sleep(SETTLE)
        network.heal()
        assert _numbers(nodes["b"].messages()) == [1]
        assert _numbers(nodes["a"].messages()) == [2]
    assert network.statistics() == NetworkStatistics(sent=3, delivered=2, dropped=1)


async def test_message_to_a_node_that_is_not_serving_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    late = Node(network, "late")
    async with open_nodes(network, "a") as (nursery, nodes):
        nodes["a"].send("late", _beat(1))
        nodes["a"].send("nobody", _beat(2))
        await trio.sleep(SETTLE)
        await nursery.start(late.run)
        nodes["a"].send("late", _beat(3))
        # The late node can send now that it is up.
        late.transport.send_nowait("a", _beat(4))
        await trio.sleep(SETTLE)
        assert _numbers(late.messages()) == [3]
        assert _numbers(nodes["a"].messages()) == [4]
        assert nodes["a"].transport.statistics() == TransportStatistics(
            messages_sent=1, messages_received=1, messages_dropped=2
        )
    assert network.statistics() == NetworkStatistics(sent=4, delivered=2, dropped=2)


async def test_crash_discards_messages_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(delay=(1.0, 1.0))
    async with open_nodes(network, "a", "b") as (nursery, nodes):
        for i in range(5):
            nodes["a"].send("b", _beat(i))
        await trio.sleep(0.5)
        nodes["b"].crash()
        await trio.sleep(0.1)
        # Down: sends to it, and its own sends, are dropped.
        nodes["a"].send("b", _beat(10))
        old_b = nodes["b"].transport
        old_b.send_nowait("a", _beat(11))
        assert old_b.statistics().messages_dropped == 1

        await nodes["b"].restart(nursery)
        nodes["a"].send("b", _beat(20))
        await trio.sleep(SETTLE)
        assert _numbers(nodes["b"].messages()) == [20]
        assert nodes["a"].messages() == []
        assert nodes["b"].transport.statistics() == TransportStatistics(messages_received=1)
    assert network.statistics() == NetworkStatistics(sent=8, delivered=1, dropped=7)


async def test_replaced_transport_is_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(delay=(1.0, 1.0))
    async with open_nodes(network, "a", "b") as (nursery, nodes):
        nodes["a"].send("b", _beat(1))
        old = nodes["b"]
        # A "restart" whose old serve() has not been cancelled yet still loses the old
        # transport's traffic, in flight or new.
        new = Node(network, "b")
        await nursery.start(new.run)
        old.transport.send_nowait("a", _beat(2))
        nodes["a"].send("b", _beat(3))
        await trio.sleep(SETTLE)
        assert old.messages() == []
        assert _numbers(new.messages()) == [3]
        assert nodes["a"].messages() == []


async def test_serve_checks_its_arguments(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    transport = network.transport("a")
    with pytest.raises(ValueError):
        await transport.serve("b", lambda _s, _m: None, lambda _p: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, "a", lambda _s, _m: None, lambda _p: None)
        with pytest.raises(RuntimeError):
            await transport.serve("a", lambda _s, _m: None, lambda _p: None)
        nursery.cancel_scope.cancel()


async def _count_delivered(network: MemoryNetwork, count: int) -> list[int]:
    async with open_nodes(network, "a", "b") as (_, nodes):
        for i in range(count):
            nodes["a"].send("b", _beat(i))
        await trio.sleep(SETTLE)
    return _numbers(nodes["b"].messages())


async def test_drop_rate(autojump_clock: trio.testing.MockClock) -> None:
    assert await _count_delivered(MemoryNetwork(drop_rate=0.0), 500) == list(range(500))
    network = MemoryNetwork(drop_rate=1.0)
    assert await _count_delivered(network, 500) == []
    assert network.statistics() == NetworkStatistics(sent=500, dropped=500)

    network = MemoryNetwork(seed=11, drop_rate=0.5)
    delivered = await _count_delivered(network, 2000)
    assert 800 <= len(delivered) <= 1200
    stats = network.statistics()
    assert stats.delivered == len(delivered)
    assert stats.sent == stats.delivered + stats.dropped == 2000


async def test_same_seed_same_drop_pattern(autojump_clock: trio.testing.MockClock) -> None:
    first = await _count_delivered(MemoryNetwork(seed=42, drop_rate=0.3), 500)
    again = await _count_delivered(MemoryNetwork(seed=42, drop_rate=0.3), 500)
    other = await _count_delivered(MemoryNetwork(seed=43, drop_rate=0.3), 500)
    assert first == again
    assert first != other


async def test_duplicates(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(duplicate_rate=1.0, delay=(0.1, 0.5))
    assert await _count_delivered(network, 50) == [i for i in range(50) for _ in (0, 1)]
    assert network.statistics() == NetworkStatistics(sent=50, delivered=100, duplicated=50)

    network = MemoryNetwork(seed=5, duplicate_rate=0.5, reorder=True, delay=(0.1, 0.5))
    delivered = await _count_delivered(network, 1000)
    stats = network.statistics()
    assert 400 <= stats.duplicated <= 600
    assert len(delivered) == stats.delivered == 1000 + stats.duplicated
    assert set(delivered) == set(range(1000))


async def test_set_faults_changes_later_messages(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(drop_rate=1.0)
    async with open_nodes(network, "a", "b") as (_, nodes):
        nodes["a"].send("b", _beat(1))
        network.set_faults(drop_rate=0.0, delay=(2.0, 2.0))
        start = trio.current_time()
        nodes["a"].send("b", _beat(2))
        await trio.sleep(SETTLE)
        [(at, _, message)] = nodes["b"].received
        assert _numbers([message]) == [2]
        assert at - start == pytest.approx(2.0)


async def test_oversized_message_fails_loudly(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(max_frame_bytes=64)
    big = AppendEntries(
        term=1,
        leader_id="a",
        prev_log_index=0,
        prev_log_term=0,
        entries=(Entry(term=1, index=1, data=b"x" * 100),),
        leader_commit=0,
    )
    async with open_nodes(network, "a", "b") as (_, nodes):
        with pytest.raises(ProtocolError):
            nodes["a"].send("b", big)


async def test_rng_is_seeded_and_shared(autojump_clock: trio.testing.MockClock) -> None:
    assert MemoryNetwork(seed=9).rng.random() == MemoryNetwork(seed=9).rng.random()
    # A fault-free network draws nothing, so a simulation sharing the RNG is undisturbed.
    network = MemoryNetwork(seed=9)
    state = network.rng.getstate()
    await _count_delivered(network, 10)
    assert network.rng.getstate() == state


async def test_a_failing_deliver_fails_the_receivers_serve(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    sender = network.transport("a")
    receiver = network.transport("b")

    def explode(_sender: str, _message: Message) -> None:
        raise KeyError("boom")

    with pytest.RaisesGroup(KeyError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(sender.serve, "a", lambda _s, _m: None, lambda _p: None)
            await nursery.start(receiver.serve, "b", explode, lambda _p: None)
            sender.send_nowait("b", _beat(1))
            await trio.sleep_forever()


async def test_counters_balance_under_random_faults(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(
        seed=1, drop_rate=0.2, delay=(0.0, 0.3), duplicate_rate=0.2, reorder=True
    )
    rng = network.rng
    ids = ["a", "b", "c", "d", "e"]
    async with open_nodes(network, *ids) as (nursery, nodes):
        for step in range(2000):
            sender, to = rng.sample(ids, 2)
            nodes[sender].send(to, _beat(step))
            roll = rng.random()
            if roll < 0.01:
                network.partition(*(ids[:2], ids[2:]))
            elif roll < 0.02:
                network.isolate(rng.choice(ids))
            elif roll < 0.04:
                network.heal()
            elif roll < 0.05:
                victim = nodes[rng.choice(ids)]
                victim.crash()
                await trio.lowlevel.checkpoint()
                await victim.restart(nursery)
            if step % 7 == 0:
                await trio.sleep(0.05)
        await trio.sleep(SETTLE)
        received = sum(len(node.received) for node in nodes.values())
    stats = network.statistics()
    assert stats.sent == 2000
    assert stats.delivered == received > 0
    assert stats.dropped > 0 and stats.duplicated > 0
    assert stats.sent + stats.duplicated == stats.delivered + stats.dropped
