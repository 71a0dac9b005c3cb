"""Requests to any node: a follower forwards a command to its leader (simulated cluster)."""

from __future__ import annotations

import msgpack
import trio

from tinyraft_trio import RaftNode
from tinyraft_trio._batching import decode_batch_answer
from tinyraft_trio._core._types import EntryKind
from tinyraft_trio._rpc import Request, Response
from tinyraft_trio.testing import MemoryCluster, RecordingStateMachine, open_memory_cluster


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
            kind, position, *hint = msgpack.unpackb(response.body)
            assert kind == "ok"
            # A follower that forwarded it names the leader, so a client can go there next.
            assert hint == ([] if node_id == leader.id else [cluster.address_of(leader.id)])
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


def batch_answers(response: Response) -> list[list[object]]:
    """A batch answer's per-command answers, each decoded."""
    assert response.ok, response.body
    answers = decode_batch_answer(response.body)
    assert answers is not None
    return [msgpack.unpackb(body) for body in answers[1]]


async def test_a_batch_is_carried_out_command_by_command_in_order(autojump_clock: object) -> None:
    """Reference: ``_batching``: one answer per command, each as if it had come alone."""
    async with open_memory_cluster(3, seed=46) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        client = cluster.network.client("client-1")
        first = msgpack.packb([b"a", b"b", b"c"])
        response = await client.request(
            cluster.address_of(leader.id), "apply_batch", first, timeout=5
        )
        assert batch_answers(response) == [["ok", 1], ["ok", 2], ["ok", 3]]
        # A follower forwards the whole batch to its leader.
        second = msgpack.packb([b"d", b"e"])
        response = await client.request(
            cluster.address_of(follower), "apply_batch", second, timeout=5
        )
        hint = cluster.address_of(leader.id)
        assert batch_answers(response) == [["ok", 4, hint], ["ok", 5, hint]]
        await cluster.wait_applied(leader.status().commit_index)
        for machine in cluster.state_machines.values():
            assert machine.commands == [b"a", b"b", b"c", b"d", b"e"]  # type: ignore[attr-defined]


class _RaisesOnBoom(RecordingStateMachine):
    """Raises (applying nothing) for the command ``b"boom"``."""

    def apply(self, command: bytes) -> object:
        if command == b"boom":
            raise ValueError("boom refused")
        return super().apply(command)


class _Replies:
    """Collects a node's replies to requests handed to it directly (``_start_request``)."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self._arrived = trio.Event()

    def reply(self, response: Response) -> None:
        self.responses.append(response)
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.responses) < count:
                await self._arrived.wait()


def entry_kinds(node: RaftNode, first: int) -> list[EntryKind]:
    log = node._running_core().log
    return [log.entry(index).kind for index in range(first, log.last_index + 1)]


def assert_every_node_has(
    cluster: MemoryCluster, first: int, kinds: list[EntryKind], commands: list[bytes]
) -> None:
    """Every running node's log from ``first`` holds entries of ``kinds``, and its state
    machine applied ``commands``, in order."""
    for node_id, node in cluster.running.items():
        assert entry_kinds(node, first) == kinds, node_id
        assert cluster.state_machines[node_id].commands == commands  # type: ignore[attr-defined]


async def test_an_apply_batch_is_one_entry_whose_commands_each_have_their_own_answer(
    autojump_clock: object,
) -> None:
    """Reference: ``EntryKind.BATCH``: one entry for the batch, on every node; each command
    applied in order and answered alone; one that raises does not stop the rest."""
    async with open_memory_cluster(3, seed=53, state_machine_factory=_RaisesOnBoom) as cluster:
        leader = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        first = leader.status().last_log_index + 1
        body = msgpack.packb([b"a", b"boom", b"b", b"c"])
        response = await client.request(
            cluster.address_of(leader.id), "apply_batch", body, timeout=5
        )
        assert batch_answers(response) == [
            ["ok", 1],
            ["error", "ValueError", "boom refused"],
            ["ok", 2],
            ["ok", 3],
        ]
        await cluster.wait_applied(leader.status().commit_index)
        assert_every_node_has(cluster, first, [EntryKind.BATCH], [b"a", b"b", b"c"])
        for node in cluster.running.values():
            assert node._running_core().log.entry(first).data == body


async def test_an_apply_batch_too_large_for_one_entry_is_proposed_command_by_command(
    autojump_clock: object,
) -> None:
    async with open_memory_cluster(3, seed=54) as cluster:
        leader = await cluster.wait_for_leader()
        first = leader.status().last_log_index + 1
        half = b"x" * (leader._command_limit // 2)
        body = msgpack.packb([half, half, b"small"])
        assert len(body) > leader._command_limit
        replies = _Replies()
        request = Request(request_id=3, method="apply_batch", body=body)
        assert leader._start_request("client-1", request, replies.reply)
        await replies.wait_for(1)
        assert batch_answers(replies.responses[0]) == [["ok", 1], ["ok", 2], ["ok", 3]]
        assert entry_kinds(leader, first) == [EntryKind.COMMAND] * 3


async def test_batches_of_many_commands_are_applied_in_order_across_apply_rounds(
    autojump_clock: object,
) -> None:
    """The applier checkpoints after about a thousand commands, even inside a run of batch
    entries; the entries it left for the next round are applied next, once."""
    async with open_memory_cluster(3, seed=55) as cluster:
        leader = await cluster.wait_for_leader()
        replies = _Replies()
        batches = [[f"{b}-{i}".encode() for i in range(700)] for b in range(4)]
        for number, batch in enumerate(batches):
            request = Request(request_id=number, method="apply_batch", body=msgpack.packb(batch))
            assert leader._start_request("client-1", request, replies.reply)
        await replies.wait_for(len(batches))
        machine = cluster.state_machines[leader.id]
        assert machine.commands == [c for batch in batches for c in batch]  # type: ignore[attr-defined]
        positions = [answer[1] for reply in replies.responses for answer in batch_answers(reply)]
        assert positions == list(range(1, 2801))


async def test_a_refused_command_does_not_stop_the_rest_of_its_batch(
    autojump_clock: object,
) -> None:
    async with open_memory_cluster(3, seed=47) as cluster:
        leader = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        address = cluster.address_of(leader.id)
        too_large = b"x" * leader.config.max_frame_bytes
        body = msgpack.packb([b"fine", too_large, b"also fine"])
        # The batch is larger than a frame here, so hand it to the node directly.
        response = await leader._handle_request(
            "client-1", Request(request_id=7, method="apply_batch", body=body)
        )
        answers = batch_answers(response)
        assert answers[0][0] == "ok" and answers[2][0] == "ok"
        assert answers[1][0] == "failed" and "exceeds the limit" in str(answers[1][1])
        submits = msgpack.packb([msgpack.packb(["c1", 1, b"once"]), b"not a submit"])
        response = await client.request(address, "submit_batch", submits, timeout=5)
        assert batch_answers(response) == [["ok", 3], ["failed", "malformed submit request"]]
        for malformed in (b"", msgpack.packb([]), msgpack.packb(["not bytes"])):
            response = await client.request(address, "apply_batch", malformed, timeout=5)
            assert not response.ok and response.body == b"malformed batch request"


async def test_a_submitted_batch_applies_each_numbered_command_once(
    autojump_clock: object,
) -> None:
    """Reference: dissertation §6.3, through batches: a repeat in or across batches."""
    async with open_memory_cluster(3, seed=48) as cluster:
        leader = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        address = cluster.address_of(leader.id)

        def submit(sequence: int, command: bytes) -> bytes:
            return msgpack.packb(["c1", sequence, command, 1])

        first = leader.status().last_log_index + 1
        body = msgpack.packb([submit(1, b"one"), submit(2, b"two"), submit(1, b"one")])
        response = await client.request(address, "submit_batch", body, timeout=5)
        assert batch_answers(response) == [["ok", 1], ["ok", 2], ["ok", 1]]
        body = msgpack.packb([submit(2, b"two"), submit(3, b"three")])
        response = await client.request(address, "submit_batch", body, timeout=5)
        assert batch_answers(response) == [["ok", 2], ["ok", 3]]
        await cluster.wait_applied(leader.status().commit_index)
        # Each batch is one entry.
        kinds = [EntryKind.SESSION_BATCH] * 2
        assert_every_node_has(cluster, first, kinds, [b"one", b"two", b"three"])


async def test_a_deposed_leader_says_unknown_for_each_command_of_a_batch(
    autojump_clock: object,
) -> None:
    async with open_memory_cluster(3, seed=49) as cluster:
        leader = await cluster.wait_for_leader()
        replies: list[Response] = []
        replied = trio.Event()

        def reply(response: Response) -> None:
            replies.append(response)
            replied.set()

        cluster.network.isolate(leader.id)
        request = Request(request_id=1, method="apply_batch", body=msgpack.packb([b"x", b"y"]))
        assert leader._start_request("c", request, reply)
        with trio.fail_after(30):
            await replied.wait()
        assert [answer[0] for answer in batch_answers(replies[0])] == ["unknown", "unknown"]


def query_body(stale: bool) -> bytes:
    body: bytes = msgpack.packb([b"how many", stale])
    return body


async def test_a_query_batch_answers_each_query_after_one_read_barrier(
    autojump_clock: object,
) -> None:
    """Reference: ``_batching`` and dissertation §6.4: the queries of a batch share one
    ReadIndex round, started after the batch arrived; each is answered as if alone."""
    async with open_memory_cluster(3, seed=50) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.node_ids if i != leader.id)
        client = cluster.network.client("client-1")
        for command in (b"a", b"b", b"c"):
            await cluster.apply(command)
        batch = msgpack.packb(
            [query_body(False), b"not a query", query_body(True), query_body(False)]
        )
        rounds = leader._running_core()._read_round
        response = await client.request(
            cluster.address_of(leader.id), "query_batch", batch, timeout=5
        )
        assert batch_answers(response) == [
            ["ok", 3],
            ["failed", "malformed query request"],
            ["ok", 3],
            ["ok", 3],
        ]
        assert leader._running_core()._read_round == rounds + 1
        # A follower asks the leader for the read index once, then answers from its state.
        batch = msgpack.packb([query_body(False), query_body(False)])
        response = await client.request(
            cluster.address_of(follower), "query_batch", batch, timeout=5
        )
        assert batch_answers(response) == [["ok", 3], ["ok", 3]]
        assert leader._running_core()._read_round == rounds + 2
        for malformed in (b"", msgpack.packb([]), msgpack.packb(["not bytes"])):
            response = await client.request(
                cluster.address_of(leader.id), "query_batch", malformed, timeout=5
            )
            assert not response.ok and response.body == b"malformed batch request"


async def test_a_cut_off_leader_refuses_the_linearizable_queries_of_a_batch_only(
    autojump_clock: object,
) -> None:
    """A leader that cannot confirm its leadership answers no linearizable query (§6.4);
    the stale ones of the same batch read its state as it is."""
    async with open_memory_cluster(3, seed=51) as cluster:
        leader = await cluster.wait_for_leader()
        await cluster.apply(b"a")
        cluster.network.isolate(leader.id)
        request = Request(
            request_id=1,
            method="query_batch",
            body=msgpack.packb([query_body(False), query_body(True)]),
        )
        with trio.fail_after(30):
            response = await leader._handle_request("client-1", request)
        linearizable, stale = batch_answers(response)
        assert linearizable[0] in ("unknown", "not_leader"), linearizable
        assert stale == ["ok", 1]


class _NoQueries:
    """A state machine with no ``query`` method (it is optional)."""

    def apply(self, command: bytes) -> object:
        return None

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


async def test_queries_to_a_state_machine_without_query_are_answered_with_the_error(
    autojump_clock: object,
) -> None:
    async with open_memory_cluster(1, seed=52, state_machine_factory=_NoQueries) as cluster:
        node = await cluster.wait_for_leader()
        client = cluster.network.client("client-1")
        address = cluster.address_of(node.id)
        expected = ["error", "TypeError", "this state machine has no query() method"]
        response = await client.request(address, "query", query_body(False), timeout=5)
        assert msgpack.unpackb(response.body) == expected
        batch = msgpack.packb([query_body(True), query_body(False)])
        response = await client.request(address, "query_batch", batch, timeout=5)
        assert batch_answers(response) == [expected, expected]
