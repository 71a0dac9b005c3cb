"""Requests and responses over real TCP on 127.0.0.1 (port 0): RpcClient against TcpTransport."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from support import all_tasks, open_fds, unused_port

from tinyraft_trio._config import parse_address
from tinyraft_trio._core._messages import AppendEntries, Message, TimeoutNow
from tinyraft_trio._core._types import NodeId
from tinyraft_trio._rpc import (
    Request,
    RequestStarter,
    Response,
    RpcClient,
    TransportError,
    open_rpc_client,
)
from tinyraft_trio._transport import TcpTransport
from tinyraft_trio._wire import PROTOCOL_VERSION, FrameDecoder, Handshake, encode_frame

CLUSTER = "test-cluster"


def heartbeat(n: int) -> AppendEntries:
    return AppendEntries(
        term=1, leader_id="a", prev_log_index=0, prev_log_term=0, entries=(), leader_commit=n
    )


Handler = Callable[[str, Request], Awaitable[Response]]


async def echo(requester: str, request: Request) -> Response:
    """Answers with the requester, the method and the body."""
    body = f"{requester}:{request.method}:".encode() + request.body
    return Response(request_id=request.request_id, ok=True, body=body)


class Server:
    """Runs one TcpTransport with a request handler, in its own cancel scope."""

    def __init__(
        self,
        node_id: NodeId = "srv",
        handler: Handler | None = echo,
        listen: str = "127.0.0.1:0",
        starter: RequestStarter | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("cluster_id", CLUSTER)
        kw.setdefault("rng", random.Random(3))
        self.node_id = node_id
        self.handler = handler
        self.starter = starter
        self.transport = TcpTransport(listen=listen, **kw)
        self.book: dict[NodeId, str] = {}
        self.received: list[tuple[NodeId, Message]] = []
        self._changed = trio.Event()
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self.address = ""

    def deliver(self, sender: NodeId, message: Message) -> None:
        self.received.append((sender, message))
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.received) < count:
            self._changed = trio.Event()
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                await self.transport.serve(
                    self.node_id,
                    self.deliver,
                    self.book.get,
                    handle_request=self.handler,
                    start_request=self.starter,
                    task_status=task_status,
                )
        finally:
            self._finished.set()

    async def start(self, nursery: trio.Nursery) -> Server:
        await nursery.start(self.run)
        self.address = self.transport.listen_address
        return self

    async def stop(self) -> None:
        self._scope.cancel()
        await self._finished.wait()


async def test_a_served_handler_answers_a_client() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server().start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                response = await client.request(server.address, "get", b"key", timeout=5)
                assert response.ok
                assert response.body == b"cli:get:key"
                assert client.client_id == "cli"
            nursery.cancel_scope.cancel()


async def test_concurrent_requests_share_one_connection_and_get_their_own_answers() -> None:
    rng = random.Random(5)

    async def jittery(requester: str, request: Request) -> Response:
        await trio.sleep(rng.random() * 0.01)  # answer out of order
        return await echo(requester, request)

    results: dict[int, Response] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=jittery).start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:

                async def ask(n: int) -> None:
                    results[n] = await client.request(
                        server.address, "m", str(n).encode(), timeout=5
                    )

                async with trio.open_nursery() as requests:
                    for n in range(300):
                        requests.start_soon(ask, n)
                    await trio.sleep(0.001)
                    assert client.statistics().connections == 1
                stats = client.statistics()
                assert stats.connections == 1
                assert stats.connects == 1
                assert stats.pending_requests == 0
            nursery.cancel_scope.cancel()
    assert {n: r.body for n, r in results.items()} == {n: f"cli:m:{n}".encode() for n in range(300)}
    assert all(r.ok for r in results.values())


async def test_a_slow_handler_does_not_block_other_requests_on_the_connection() -> None:
    release = trio.Event()

    async def handler(requester: str, request: Request) -> Response:
        if request.method == "slow":
            await release.wait()
        return await echo(requester, request)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=handler).start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                slow: list[Response] = []

                async def ask_slow() -> None:
                    slow.append(await client.request(server.address, "slow", b"", timeout=5))

                async with trio.open_nursery() as requests:
                    requests.start_soon(ask_slow)
                    for n in range(5):
                        fast = await client.request(server.address, "fast", b"%d" % n, timeout=5)
                        assert fast.body == b"cli:fast:%d" % n
                    assert slow == []
                    release.set()
                assert slow[0].body == b"cli:slow:"
                assert client.statistics().connects == 1
            nursery.cancel_scope.cancel()


async def test_a_handler_exception_fails_only_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(requester: str, request: Request) -> Response:
        if request.method == "boom":
            raise KeyError("no such thing")
        if request.method == "bad":
            return "not a response"  # type: ignore[return-value]
        if request.method == "huge":
            return Response(request_id=request.request_id, ok=True, body=b"x" * 5000)
        if request.method == "misnumbered":
            return Response(request_id=request.request_id + 1, ok=True, body=b"fixed")
        return await echo(requester, request)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=handler, max_frame_bytes=4096).start(nursery)
            async with open_rpc_client(
                client_id="cli", cluster_id=CLUSTER, max_frame_bytes=4096
            ) as client:
                boom = await client.request(server.address, "boom", b"", timeout=5)
                assert boom == Response(
                    request_id=boom.request_id, ok=False, body=b"internal error: KeyError"
                )
                bad = await client.request(server.address, "bad", b"", timeout=5)
                assert (bad.ok, bad.body) == (False, b"internal error: invalid response")
                huge = await client.request(server.address, "huge", b"", timeout=5)
                assert not huge.ok
                assert huge.body.startswith(b"response too large: ")
                fixed = await client.request(server.address, "misnumbered", b"", timeout=5)
                assert (fixed.ok, fixed.body) == (True, b"fixed")
                ok = await client.request(server.address, "after", b"", timeout=5)
                assert (ok.ok, ok.body) == (True, b"cli:after:")
                assert client.statistics().connects == 1
            assert server.transport.statistics().connections_rejected == 0
            nursery.cancel_scope.cancel()
    failures = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "request handler failed" in r.getMessage()
    ]
    assert len(failures) == 1
    assert "KeyError" in failures[0].getMessage()
    assert failures[0].exc_info is not None


async def test_without_a_handler_requests_get_no_handler() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=None).start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                response = await client.request(server.address, "join", b"", timeout=5)
                assert (response.ok, response.body) == (False, b"no handler")
            nursery.cancel_scope.cancel()


async def test_a_server_restart_fails_pending_requests_and_the_next_one_reconnects() -> None:
    hanging = 0
    all_hanging = trio.Event()

    async def handler(requester: str, request: Request) -> Response:
        nonlocal hanging
        if request.method == "hang":
            hanging += 1
            if hanging == 3:
                all_hanging.set()
            await trio.sleep_forever()
        return await echo(requester, request)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=handler).start(nursery)
            address = server.address
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                failures: list[TransportError] = []

                async def hang() -> None:
                    with pytest.raises(TransportError) as info:
                        await client.request(address, "hang", b"", timeout=30)
                    failures.append(info.value)

                async with trio.open_nursery() as requests:
                    for _ in range(3):
                        requests.start_soon(hang)
                    await all_hanging.wait()
                    assert client.statistics().pending_requests == 3
                    start = trio.current_time()
                    await server.stop()
                assert trio.current_time() - start < 1.0  # not the 30 s timeout
                assert len(failures) == 3
                assert all(f.address == address for f in failures)
                assert address in str(failures[0])
                assert client.statistics().connections == 0

                restarted = await Server(handler=handler, listen=address).start(nursery)
                response = await client.request(restarted.address, "again", b"", timeout=5)
                assert response.body == b"cli:again:"
                assert client.statistics().connects == 2
            nursery.cancel_scope.cancel()


async def test_an_unreachable_address_fails_quickly() -> None:
    address = f"127.0.0.1:{unused_port()}"
    with trio.fail_after(5):
        async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
            start = trio.current_time()
            with pytest.raises(TransportError, match="cannot connect") as info:
                await client.request(address, "get", b"", timeout=30)
            assert trio.current_time() - start < 1.0
            assert info.value.address == address
            assert str(info.value).startswith(f"request to {address} failed: ")
            assert client.statistics().connections == 0


async def test_a_timeout_raises_and_the_late_response_is_discarded() -> None:
    release = trio.Event()

    async def handler(requester: str, request: Request) -> Response:
        if request.method == "late":
            await release.wait()
        return await echo(requester, request)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=handler).start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                start = trio.current_time()
                with pytest.raises(TransportError, match="may or may not have been carried out"):
                    await client.request(server.address, "late", b"", timeout=0.2)
                assert 0.2 <= trio.current_time() - start < 1.0
                release.set()
                # The late answer arrives and is dropped; the connection keeps working.
                response = await client.request(server.address, "next", b"", timeout=5)
                assert response.body == b"cli:next:"
                assert client.statistics().connects == 1
                assert client.statistics().pending_requests == 0
            nursery.cancel_scope.cancel()


async def test_the_timeout_covers_a_handshake_that_never_comes() -> None:
    with trio.fail_after(5), socket.socket() as black_hole:
        # Listening but never accepting: connects succeed, handshakes never finish.
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(10)
        address = f"127.0.0.1:{black_hole.getsockname()[1]}"
        async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
            start = trio.current_time()
            with pytest.raises(TransportError, match=r"no response within 0\.2 s"):
                await client.request(address, "get", b"", timeout=0.2)
            assert trio.current_time() - start < 1.0


async def test_a_node_of_another_cluster_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server().start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id="elsewhere") as client:
                with pytest.raises(TransportError, match="closed the connection during the"):
                    await client.request(server.address, "get", b"", timeout=5)
            assert server.transport.statistics().connections_rejected == 1
            assert any("'elsewhere'" in r.getMessage() for r in caplog.records)
            nursery.cancel_scope.cancel()


async def fake_server(replies: list[bytes], *, task_status: trio.TaskStatus[str]) -> None:
    """Accepts one connection; after each receive sends the next reply, then lingers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    async with listener:
        host, port = listener.socket.getsockname()[:2]
        task_status.started(f"{host}:{port}")
        stream = await listener.accept()
        async with stream:
            for reply in replies:
                await stream.receive_some(65536)
                await stream.send_all(reply)
            await trio.sleep_forever()


def handshake(cluster_id: str = CLUSTER, node_id: str = "srv") -> bytes:
    return encode_frame(
        Handshake(protocol_version=PROTOCOL_VERSION, cluster_id=cluster_id, node_id=node_id)
    )


async def test_the_client_checks_the_node_handshake() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(fake_server, [handshake("other")])
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                with pytest.raises(TransportError, match="belongs to cluster 'other'"):
                    await client.request(address, "get", b"", timeout=5)
            nursery.cancel_scope.cancel()


async def test_a_node_sending_more_than_its_handshake_is_refused() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nasty = handshake() + encode_frame(TimeoutNow(term=1, leader_id="x"))
            address = await nursery.start(fake_server, [nasty])
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                with pytest.raises(TransportError, match="sent a TimeoutNow before any request"):
                    await client.request(address, "get", b"", timeout=5)
            nursery.cancel_scope.cancel()


async def test_a_node_answering_garbage_fails_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            replies = [handshake(), encode_frame(TimeoutNow(term=1, leader_id="x"))]
            address = await nursery.start(fake_server, replies)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                with pytest.raises(TransportError, match="expected a Response, got TimeoutNow"):
                    await client.request(address, "get", b"", timeout=5)
                assert client.statistics().connections == 0
            nursery.cancel_scope.cancel()
    assert any(
        r.levelno == logging.WARNING and "expected a Response" in r.getMessage()
        for r in caplog.records
    )


async def test_raft_messages_and_requests_share_an_inbound_connection() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server().start(nursery)
            host, port = parse_address(server.address, field_name="address")
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    handshake(node_id="a")
                    + encode_frame(heartbeat(1))
                    + encode_frame(Request(request_id=7, method="join", body=b"me"))
                    + encode_frame(heartbeat(2))
                    + encode_frame(Request(request_id=8, method="status", body=b""))
                )
                decoder = FrameDecoder(65536)
                received: list[Any] = []
                while len(received) < 3:
                    received += decoder.feed(await stream.receive_some(65536))
                await server.wait_for(2)
            assert received[0] == Handshake(
                protocol_version=PROTOCOL_VERSION, cluster_id=CLUSTER, node_id="srv"
            )
            assert sorted(received[1:], key=lambda r: r.request_id) == [
                Response(request_id=7, ok=True, body=b"a:join:me"),
                Response(request_id=8, ok=True, body=b"a:status:"),
            ]
            assert server.received == [("a", heartbeat(1)), ("a", heartbeat(2))]
            assert server.transport.statistics().messages_received == 2
            nursery.cancel_scope.cancel()


async def test_a_response_on_an_inbound_connection_is_refused() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server().start(nursery)
            host, port = parse_address(server.address, field_name="address")
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    handshake(node_id="a") + encode_frame(Response(request_id=1, ok=True, body=b""))
                )
                while await stream.receive_some(65536):
                    pass  # until the server closes it
            assert server.transport.statistics().connections_rejected == 1
            nursery.cancel_scope.cancel()


async def test_requests_per_connection_are_bounded() -> None:
    running = 0
    most = 0
    release = trio.Event()
    four_running = trio.Event()

    async def handler(requester: str, request: Request) -> Response:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 4:
            four_running.set()
        try:
            await release.wait()
        finally:
            running -= 1
        return await echo(requester, request)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=handler, max_concurrent_requests=4).start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                answers: list[Response] = []

                async def ask(n: int) -> None:
                    answers.append(await client.request(server.address, "m", b"", timeout=5))

                async with trio.open_nursery() as requests:
                    for n in range(20):
                        requests.start_soon(ask, n)
                    await four_running.wait()
                    await trio.sleep(0.05)  # time for a fifth to start, were it allowed
                    assert running == 4
                    release.set()
            assert most == 4
            assert len(answers) == 20
            nursery.cancel_scope.cancel()


async def test_a_starter_answers_later_and_leaves_other_requests_to_the_handler() -> None:
    """What the starter takes it answers (from any task, in any order); the rest goes to
    the handler. Each taken request holds its connection's token until answered."""
    taken: list[tuple[Request, Callable[[Response], None]]] = []
    two_taken = trio.Event()

    def starter(requester: str, request: Request, reply: Callable[[Response], None]) -> bool:
        if request.method != "later":
            return False
        taken.append((request, reply))
        if len(taken) == 2:
            two_taken.set()
        return True

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=echo, starter=starter, max_concurrent_requests=2).start(
                nursery
            )
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                answers: dict[bytes, Response] = {}

                async def ask(method: str, body: bytes) -> None:
                    answers[body] = await client.request(server.address, method, body, timeout=5)

                async with trio.open_nursery() as requests:
                    requests.start_soon(ask, "later", b"1")
                    requests.start_soon(ask, "later", b"2")
                    await two_taken.wait()
                    # Both tokens are held: a third request waits for one.
                    requests.start_soon(ask, "now", b"3")
                    await trio.sleep(0.05)
                    assert b"3" not in answers
                    for request, reply in reversed(taken):
                        reply(
                            Response(
                                request_id=request.request_id, ok=True, body=b"late " + request.body
                            )
                        )
                assert answers[b"1"].body == b"late 1"
                assert answers[b"2"].body == b"late 2"
                assert answers[b"3"].body == b"cli:now:3"
            nursery.cancel_scope.cancel()


async def test_a_starter_that_raises_leaves_the_request_to_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def starter(requester: str, request: Request, reply: Callable[[Response], None]) -> bool:
        raise RuntimeError("bug in the starter")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=echo, starter=starter).start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                answer = await client.request(server.address, "m", b"x", timeout=5)
            assert answer.body == b"cli:m:x"
            assert "request starter failed" in caplog.text
            nursery.cancel_scope.cancel()


async def test_leaving_the_client_context_leaves_no_task_or_socket() -> None:
    hanging = trio.Event()

    async def handler(requester: str, request: Request) -> Response:
        if request.method == "hang":
            hanging.set()
            await trio.sleep_forever()
        return await echo(requester, request)

    fds_before = open_fds()
    tasks_before = all_tasks()
    failures: list[TransportError] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            servers = [await Server(node_id, handler).start(nursery) for node_id in ("s1", "s2")]
            async with trio.open_nursery() as outside:
                async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                    for server in servers:
                        await client.request(server.address, "get", b"", timeout=5)
                    assert client.statistics().connections == 2

                    async def left_waiting() -> None:
                        # A request from a task outside the client's context.
                        with pytest.raises(TransportError) as info:
                            await client.request(servers[0].address, "hang", b"", timeout=30)
                        failures.append(info.value)

                    outside.start_soon(left_waiting)
                    await hanging.wait()
                assert not any(name.startswith("tinyraft rpc") for name in all_tasks())
            assert "the RPC client was closed" in str(failures[0])
            with pytest.raises(TransportError, match="not running"):
                await client.request(servers[0].address, "get", b"", timeout=5)
            for server in servers:
                await server.stop()
    assert all_tasks() == tasks_before
    if fds_before is not None:
        assert open_fds() == fds_before


async def test_a_transport_sends_requests_to_another() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            a = await Server("a").start(nursery)
            b = await Server("b").start(nursery)
            response = await a.transport.request(b.address, "join", b"a-addr", timeout=5)
            assert response == Response(
                request_id=response.request_id, ok=True, body=b"a:join:a-addr"
            )
            back = await b.transport.request(a.address, "hello", b"", timeout=5)
            assert back.body == b"b:hello:"
            # Raft messages still go on their own connections and arrive as before.
            b.book["a"] = a.address
            b.transport.send_nowait("a", heartbeat(3))
            await a.wait_for(1)
            assert a.received == [("b", heartbeat(3))]
            await a.stop()
            with pytest.raises(TransportError, match="not serving"):
                await a.transport.request(b.address, "join", b"", timeout=5)
            nursery.cancel_scope.cancel()


async def test_a_forwarding_handler_uses_its_own_transport() -> None:
    """A follower forwards to the leader from inside its handler (the join/command path)."""
    leader_address = ""

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            follower: Server

            async def forward(requester: str, request: Request) -> Response:
                answer = await follower.transport.request(
                    leader_address, request.method, request.body, timeout=5
                )
                return Response(request_id=request.request_id, ok=answer.ok, body=answer.body)

            leader = await Server("leader").start(nursery)
            leader_address = leader.address
            follower = await Server("follower", handler=forward).start(nursery)
            async with open_rpc_client(client_id="cli", cluster_id=CLUSTER) as client:
                response = await client.request(follower.address, "apply", b"x", timeout=5)
            assert (response.ok, response.body) == (True, b"follower:apply:x")
            nursery.cancel_scope.cancel()


async def test_invalid_requests_are_refused_before_sending() -> None:
    with trio.fail_after(5):
        async with open_rpc_client(
            client_id="cli", cluster_id=CLUSTER, max_frame_bytes=4096
        ) as client:
            with pytest.raises(ValueError, match="method"):
                await client.request("127.0.0.1:1", "", b"", timeout=1)
            with pytest.raises(ValueError, match="method"):
                await client.request("127.0.0.1:1", "ü", b"", timeout=1)
            with pytest.raises(ValueError, match="method"):
                await client.request("127.0.0.1:1", "m" * 65, b"", timeout=1)
            with pytest.raises(TypeError, match="body"):
                await client.request("127.0.0.1:1", "m", "text", timeout=1)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="timeout"):
                await client.request("127.0.0.1:1", "m", b"", timeout=0)
            with pytest.raises(ValueError, match="address"):
                await client.request("nowhere", "m", b"", timeout=1)
            with pytest.raises(ValueError, match="max_frame_bytes"):
                await client.request("127.0.0.1:1", "m", b"x" * 5000, timeout=1)
            assert client.statistics().connections == 0


def test_invalid_client_arguments() -> None:
    with pytest.raises(ValueError, match="client_id"):
        RpcClient(client_id="", cluster_id=CLUSTER)
    with pytest.raises(ValueError, match="cluster_id"):
        RpcClient(client_id="c", cluster_id="x" * 129)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        RpcClient(client_id="c", cluster_id=CLUSTER, max_frame_bytes=10)
    with pytest.raises(ValueError, match="max_concurrent_requests"):
        TcpTransport(listen="127.0.0.1:0", cluster_id=CLUSTER, max_concurrent_requests=0)


async def test_a_client_not_opened_or_closed_refuses_requests() -> None:
    client = RpcClient(client_id="c", cluster_id=CLUSTER)
    with pytest.raises(TransportError, match="not running"):
        await client.request("127.0.0.1:1", "m", b"", timeout=1)
    async with open_rpc_client(client_id="c", cluster_id=CLUSTER) as client:
        await client.aclose()
        with pytest.raises(TransportError, match="not running"):
            await client.request("127.0.0.1:1", "m", b"", timeout=1)


async def test_an_exception_in_the_client_block_comes_out_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with open_rpc_client(client_id="c", cluster_id=CLUSTER):
            raise KeyError("mine")
