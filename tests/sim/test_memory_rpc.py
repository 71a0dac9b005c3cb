"""Requests and responses on the in-memory network, in virtual time (``autojump_clock``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from tinyraft_trio._core._messages import AppendEntriesResponse, Message
from tinyraft_trio._rpc import Request, Response, TransportError
from tinyraft_trio.testing._network import MemoryNetwork, MemoryRpcClient, NetworkStatistics

Handler = Callable[[str, Request], Awaitable[Response]]


async def echo(requester: str, request: Request) -> Response:
    body = f"{requester}:{request.method}:".encode() + request.body
    return Response(request_id=request.request_id, ok=True, body=body)


def address_of(node_id: str) -> str:
    return f"{node_id}.sim:7000"


class Node:
    """A fake node: serves a memory transport at its address with a request handler."""

    def __init__(self, network: MemoryNetwork, node_id: str, handler: Handler | None) -> None:
        self.network = network
        self.node_id = node_id
        self.handler = handler
        self.transport = network.transport(node_id, address_of(node_id))
        self.scope = trio.CancelScope()
        self.received: list[tuple[str, Message]] = []

    def deliver(self, sender: str, message: Message) -> None:
        self.received.append((sender, message))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            await self.transport.serve(
                self.node_id,
                self.deliver,
                lambda _peer: None,
                handle_request=self.handler,
                task_status=task_status,
            )

    def crash(self) -> None:
        self.scope.cancel()

    async def restart(self, nursery: trio.Nursery) -> None:
        self.transport = self.network.transport(self.node_id)  # keeps its address
        self.scope = trio.CancelScope()
        await nursery.start(self.run)


@asynccontextmanager
async def open_nodes(
    network: MemoryNetwork, *node_ids: str, handler: Handler | None = echo
) -> AsyncIterator[tuple[trio.Nursery, dict[str, Node]]]:
    nodes = {node_id: Node(network, node_id, handler) for node_id in node_ids}
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await nursery.start(node.run)
        yield nursery, nodes
        nursery.cancel_scope.cancel()


async def timed(request: Awaitable[Response]) -> tuple[float, Response | str]:
    """How long ``request`` took (virtual seconds) and its response or error reason."""
    start = trio.current_time()
    try:
        outcome: Response | str = await request
    except TransportError as exc:
        outcome = exc.reason
    return trio.current_time() - start, outcome


TIMED_OUT = "no response within 5 s (the request may or may not have been carried out)"


async def test_request_and_response_each_take_the_network_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(delay=(1.5, 1.5))
    client = network.client("cli")
    async with open_nodes(network, "a", "b") as (_, nodes):
        elapsed, response = await timed(client.request(address_of("a"), "get", b"k", timeout=5))
        assert elapsed == pytest.approx(3.0)
        assert isinstance(response, Response)
        assert (response.ok, response.body) == (True, b"cli:get:k")
        # A node asks another: the handler sees the node's id.
        elapsed, response = await timed(
            nodes["b"].transport.request(address_of("a"), "join", b"b", timeout=5)
        )
        assert elapsed == pytest.approx(3.0)
        assert isinstance(response, Response)
        assert response.body == b"b:join:b"
    assert client.client_id == "cli"
    assert nodes["a"].transport.address == address_of("a")
    # Requests are not Raft messages: the message counters did not move.
    assert network.statistics() == NetworkStatistics()


async def test_concurrent_requests_each_get_their_own_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=3, delay=(0.1, 2.0))
    client = network.client("cli")
    answers: dict[int, bytes] = {}
    async with open_nodes(network, "a") as _:

        async def ask(n: int) -> None:
            response = await client.request(address_of("a"), "m", b"%d" % n, timeout=10)
            answers[n] = response.body

        async with trio.open_nursery() as requests:
            for n in range(50):
                requests.start_soon(ask, n)
    assert answers == {n: b"cli:m:%d" % n for n in range(50)}


async def test_a_partition_makes_the_request_time_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(delay=(0.1, 0.1))
    client = network.client("cli")
    async with open_nodes(network, "a", "b") as (_, nodes):
        network.partition({"a"}, {"b", "cli"})
        assert await timed(client.request(address_of("a"), "m", b"", timeout=5)) == (5, TIMED_OUT)
        elapsed, outcome = await timed(
            nodes["b"].transport.request(address_of("a"), "m", b"", timeout=5)
        )
        assert (elapsed, outcome) == (5, TIMED_OUT)
        # Same side of the partition: fine.
        _, response = await timed(client.request(address_of("b"), "m", b"", timeout=5))
        assert isinstance(response, Response)
        network.heal()
        network.isolate("cli")
        assert await timed(client.request(address_of("b"), "m", b"", timeout=5)) == (5, TIMED_OUT)
        network.heal()
        _, response = await timed(client.request(address_of("a"), "m", b"", timeout=5))
        assert isinstance(response, Response) and response.ok


async def test_a_partition_while_the_request_is_handled_loses_the_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled = trio.Event()

    async def slow(requester: str, request: Request) -> Response:
        await trio.sleep(1)
        handled.set()
        return await echo(requester, request)

    network = MemoryNetwork()
    client = network.client("cli")
    async with open_nodes(network, "a", handler=slow) as (nursery, _):

        async def split_while_handling() -> None:
            await trio.sleep(0.5)
            network.isolate("a")

        nursery.start_soon(split_while_handling)
        assert await timed(client.request(address_of("a"), "m", b"", timeout=5)) == (5, TIMED_OUT)
        assert handled.is_set()  # it was carried out: the caller cannot know


async def test_drop_rate_one_loses_every_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(drop_rate=1.0)
    client = network.client("cli")
    async with open_nodes(network, "a"):
        assert await timed(client.request(address_of("a"), "m", b"", timeout=5)) == (5, TIMED_OUT)
        network.set_faults(drop_rate=0.0)
        _, response = await timed(client.request(address_of("a"), "m", b"", timeout=5))
        assert isinstance(response, Response)


async def test_a_lost_response_times_out_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    calls = 0

    async def drop_my_answer(requester: str, request: Request) -> Response:
        nonlocal calls
        calls += 1
        network.set_faults(drop_rate=1.0)  # the request got here; the response will not
        return await echo(requester, request)

    client = network.client("cli")
    async with open_nodes(network, "a", handler=drop_my_answer):
        assert await timed(client.request(address_of("a"), "m", b"", timeout=5)) == (5, TIMED_OUT)
    assert calls == 1


async def test_an_address_nobody_serves_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(delay=(1, 1))
    client = network.client("cli")
    refused = "connection refused (nothing serves it)"
    assert await timed(client.request("nowhere:1", "m", b"", timeout=5)) == (0, refused)
    async with open_nodes(network, "a") as (_, nodes):
        nodes["a"].crash()
        await trio.testing.wait_all_tasks_blocked()
        assert await timed(client.request(address_of("a"), "m", b"", timeout=5)) == (0, refused)
        # A node that is not serving cannot send requests either.
        with pytest.raises(TransportError, match="not serving"):
            await nodes["a"].transport.request(address_of("a"), "m", b"", timeout=5)


async def test_the_handler_runs_in_the_server_and_dies_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled = trio.Event()

    async def long(requester: str, request: Request) -> Response:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            cancelled.set()
            raise
        return await echo(requester, request)

    network = MemoryNetwork()
    client = network.client("cli")
    async with open_nodes(network, "a", handler=long) as (nursery, nodes):

        async def crash_soon() -> None:
            await trio.sleep(1)
            nodes["a"].crash()

        nursery.start_soon(crash_soon)
        assert await timed(client.request(address_of("a"), "m", b"", timeout=5)) == (5, TIMED_OUT)
        assert cancelled.is_set()
        # Restarted (a new transport for the same id), it answers at its address again.
        nodes["a"].handler = echo
        await nodes["a"].restart(nursery)
        _, response = await timed(client.request(address_of("a"), "m", b"", timeout=5))
        assert isinstance(response, Response) and response.body == b"cli:m:"


async def test_a_requesting_node_that_stops_fails_its_waiting_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never(requester: str, request: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    network = MemoryNetwork()
    async with (
        open_nodes(network, "a", handler=never) as (nursery, _),
        open_nodes(network, "b") as (_, nodes),
    ):

        async def stop_b() -> None:
            await trio.sleep(1)
            nodes["b"].crash()

        nursery.start_soon(stop_b)
        elapsed, outcome = await timed(
            nodes["b"].transport.request(address_of("a"), "m", b"", timeout=5)
        )
        assert (elapsed, outcome) == (1, "the requesting node stopped")


async def test_handler_errors_and_a_missing_handler_answer_not_ok(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing(requester: str, request: Request) -> Response:
        raise RuntimeError("bug")

    network = MemoryNetwork()
    client = network.client("cli")
    async with open_nodes(network, "a", handler=failing), open_nodes(network, "b", handler=None):
        response = await client.request(address_of("a"), "m", b"", timeout=5)
        assert (response.ok, response.body) == (False, b"internal error: RuntimeError")
        response = await client.request(address_of("b"), "m", b"", timeout=5)
        assert (response.ok, response.body) == (False, b"no handler")
    assert any(
        r.levelno == logging.WARNING and "request handler failed" in r.getMessage()
        for r in caplog.records
    )


async def test_requests_go_through_the_codec(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(max_frame_bytes=1024)
    client = network.client("cli")

    async def big_answer(requester: str, request: Request) -> Response:
        return Response(request_id=request.request_id, ok=True, body=b"x" * 2000)

    async with open_nodes(network, "a", handler=big_answer):
        with pytest.raises(ValueError, match="max_frame_bytes"):
            await client.request(address_of("a"), "m", b"x" * 2000, timeout=5)
        with pytest.raises(ValueError, match="method"):
            await client.request(address_of("a"), "ü", b"", timeout=5)
        with pytest.raises(TypeError, match="body"):
            await client.request(address_of("a"), "m", "text", timeout=5)  # type: ignore[arg-type]
        response = await client.request(address_of("a"), "m", b"", timeout=5)
        assert not response.ok and response.body.startswith(b"response too large")


async def run_schedule(seed: int) -> list[tuple[float, Response | str]]:
    """Sequential requests through a lossy, jittery network; their timings and outcomes."""
    network = MemoryNetwork(seed=seed, drop_rate=0.3, delay=(0.01, 2.0))
    client: MemoryRpcClient = network.client("cli")
    outcomes = []
    async with open_nodes(network, "a", "b") as (_, nodes):
        for n in range(30):
            if n % 3 == 0:
                request = nodes["b"].transport.request(address_of("a"), "m", b"%d" % n, timeout=5)
            else:
                request = client.request(address_of("b"), "m", b"%d" % n, timeout=5)
            elapsed, outcome = await timed(request)
            if isinstance(outcome, Response):
                outcome = Response(request_id=0, ok=outcome.ok, body=outcome.body)
            # Rounded: the clock's absolute time differs between runs, and so do the last bits.
            outcomes.append((round(elapsed, 9), outcome))
    return outcomes


async def test_a_seed_replays_the_same_requests(autojump_clock: trio.testing.MockClock) -> None:
    first = await run_schedule(seed=11)
    assert any(outcome == TIMED_OUT for _, outcome in first)
    assert any(isinstance(outcome, Response) for _, outcome in first)
    assert await run_schedule(seed=11) == first
    assert await run_schedule(seed=12) != first


async def test_raft_messages_flow_alongside_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(delay=(0.5, 0.5))
    async with open_nodes(network, "a", "b") as (_, nodes):
        beat = AppendEntriesResponse(term=1, success=True, match_index=4)
        nodes["a"].transport.send_nowait("b", beat)
        response = await nodes["a"].transport.request(address_of("b"), "m", b"", timeout=5)
        assert response.body == b"a:m:"
        assert nodes["b"].received == [("a", beat)]
    assert network.statistics() == NetworkStatistics(sent=1, delivered=1)
