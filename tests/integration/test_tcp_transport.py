"""TcpTransport over real TCP on 127.0.0.1 (port 0): delivery, refusal of bad input, reconnects."""

from __future__ import annotations

import logging
import random
import socket
import struct
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import all_tasks, open_fds, record_os_writes, unused_port

from tinyraft_trio._config import parse_address
from tinyraft_trio._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from tinyraft_trio._core._types import Entry, EntryKind, NodeId
from tinyraft_trio._transport import TcpTransport, TransportStatistics
from tinyraft_trio._wire import PROTOCOL_VERSION, FrameDecoder, Handshake, encode_frame

CLUSTER = "test-cluster"
LOGGER = "tinyraft_trio.transport"


def every_message(term: int = 3) -> list[Message]:
    return [
        RequestVote(term=term, candidate_id="a", last_log_index=4, last_log_term=2, pre_vote=True),
        RequestVoteResponse(term=term, vote_granted=True),
        AppendEntries(
            term=term,
            leader_id="a",
            prev_log_index=4,
            prev_log_term=2,
            entries=(
                Entry(term=term, index=5, kind=EntryKind.NOOP),
                Entry(term=term, index=6, data=b"x" * 100_000),
            ),
            leader_commit=4,
        ),
        AppendEntries(
            term=term, leader_id="a", prev_log_index=6, prev_log_term=3, entries=(), leader_commit=6
        ),
        AppendEntriesResponse(term=term, success=False, reject_index=4, conflict_index=2),
        TimeoutNow(term=term, leader_id="a"),
    ]


def heartbeat(n: int) -> AppendEntries:
    """A numbered message, to check order and identity."""
    return AppendEntries(
        term=1, leader_id="a", prev_log_index=0, prev_log_term=0, entries=(), leader_commit=n
    )


class Node:
    """Runs one TcpTransport in its own cancel scope and records what it receives."""

    def __init__(
        self, node_id: NodeId, book: dict[NodeId, str], listen: str = "127.0.0.1:0", **kw: Any
    ) -> None:
        kw.setdefault("cluster_id", CLUSTER)
        kw.setdefault("rng", random.Random(7))
        self.node_id = node_id
        self.book = book
        self.transport = TcpTransport(listen=listen, **kw)
        self.received: list[tuple[NodeId, Message]] = []
        self.gone: list[NodeId] = []
        self.settled: list[int] = []
        """How many messages had been delivered at each ``settle`` call."""
        self._changed = trio.Event()
        self._scope = trio.CancelScope()
        self._finished = trio.Event()

    def deliver(self, sender: NodeId, message: Message) -> None:
        self.received.append((sender, message))
        self._changed.set()

    def peer_gone(self, sender: NodeId) -> None:
        self.gone.append(sender)
        self._changed.set()

    def settle(self) -> None:
        self.settled.append(len(self.received))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                await self.transport.serve(
                    self.node_id,
                    self.deliver,
                    self.book.get,
                    peer_gone=self.peer_gone,
                    settle=self.settle,
                    task_status=task_status,
                )
        finally:
            self._finished.set()

    async def start(self, nursery: trio.Nursery) -> Node:
        await nursery.start(self.run)
        self.book[self.node_id] = self.transport.listen_address
        return self

    async def stop(self) -> None:
        self._scope.cancel()
        await self._finished.wait()

    def send(self, to: NodeId, message: Message) -> None:
        self.transport.send_nowait(to, message)

    def from_(self, sender: NodeId) -> list[Message]:
        return [message for who, message in self.received if who == sender]

    async def wait_for(self, count: int, sender: NodeId | None = None) -> None:
        while len(self.received if sender is None else self.from_(sender)) < count:
            self._changed = trio.Event()
            await self._changed.wait()

    def stats(self) -> TransportStatistics:
        return self.transport.statistics()


async def start_nodes(nursery: trio.Nursery, *ids: NodeId, **kw: Any) -> list[Node]:
    book: dict[NodeId, str] = {}
    return [await Node(node_id, book, **kw).start(nursery) for node_id in ids]


async def idle_connection(nursery: trio.Nursery) -> tuple[Node, Node]:
    """Nodes "a" and "b", with a's connection to b open and its sender waiting for work."""
    a, b = await start_nodes(nursery, "a", "b")
    a.send("b", heartbeat(0))
    await b.wait_for(1)
    await trio.testing.wait_all_tasks_blocked()
    return a, b


# -- Delivery ---------------------------------------------------------------------------------


async def test_two_transports_exchange_every_message_type_both_ways() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b")
            for message in every_message(3):
                a.send("b", message)
            for message in every_message(4):
                b.send("a", message)
            await b.wait_for(6)
            await a.wait_for(6)
            assert b.received == [("a", m) for m in every_message(3)]
            assert a.received == [("b", m) for m in every_message(4)]
            await trio.testing.wait_all_tasks_blocked()  # the senders count after their writes
            assert a.stats() == TransportStatistics(messages_sent=6, messages_received=6)
            assert b.stats() == TransportStatistics(messages_sent=6, messages_received=6)
            nursery.cancel_scope.cancel()


async def test_three_transports_all_pairs_in_order() -> None:
    ids = ("a", "b", "c")
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nodes = dict(zip(ids, await start_nodes(nursery, *ids), strict=True))
            for round_ in range(50):
                for sender in ids:
                    for to in ids:
                        if to != sender:
                            nodes[sender].send(to, heartbeat(round_))
                await trio.lowlevel.checkpoint()
            for node in nodes.values():
                await node.wait_for(100)
            for to, node in nodes.items():
                for sender in ids:
                    if sender != to:
                        assert node.from_(sender) == [heartbeat(n) for n in range(50)]
            nursery.cancel_scope.cancel()


async def test_many_messages_keep_their_order_and_go_out_in_few_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = 0
    original = trio.SocketStream.send_all

    async def counting_send_all(self: trio.SocketStream, data: Any) -> None:
        nonlocal writes
        writes += 1
        await original(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting_send_all)
    direct_writes = record_os_writes(monkeypatch)
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await idle_connection(nursery)
            writes = 0
            # On an idle connection: the first written at once, the rest in one write.
            for n in range(1, 2000):
                a.send("b", heartbeat(n))
            await b.wait_for(2000)
            assert b.from_("a") == [heartbeat(n) for n in range(2000)]
            await trio.testing.wait_all_tasks_blocked()  # a's sender counts after its write
            assert a.stats().messages_sent == 2000
            assert writes + len(direct_writes) <= 3
            nursery.cancel_scope.cancel()


async def test_each_burst_of_messages_is_settled_once_before_the_next_read() -> None:
    """The node does the work a burst of messages left once per burst (``settle``), and
    before the reader waits again, so none of it waits for the next message."""
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await idle_connection(nursery)
            for n in range(1, 2000):
                a.send("b", heartbeat(n))
            await b.wait_for(2000)
            assert b.settled[-1] == 2000  # settled before the reader waited again
            assert b.settled == sorted(b.settled)
            bursts = len(set(b.settled))
            assert 2 <= bursts <= 100, b.settled  # many messages per burst, not one each
            nursery.cancel_scope.cancel()


async def test_a_message_to_an_idle_connection_is_written_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No sender wakeup for a lone message: send_nowait writes it to the socket itself."""
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await idle_connection(nursery)
            written = record_os_writes(monkeypatch)
            a.send("b", heartbeat(1))
            assert written == [encode_frame(heartbeat(1))]  # before any task ran
            await b.wait_for(2)
            assert b.from_("a") == [heartbeat(0), heartbeat(1)]
            await trio.testing.wait_all_tasks_blocked()
            assert a.stats().messages_sent == 2
            nursery.cancel_scope.cancel()


async def test_a_frame_the_socket_takes_in_part_is_finished_first_by_the_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rest of a partly written frame goes out before any message queued after it."""
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await idle_connection(nursery)
            record_os_writes(monkeypatch, take=5)
            a.send("b", heartbeat(1))  # 5 bytes written, the rest left to the sender
            monkeypatch.undo()
            for n in range(2, 50):
                a.send("b", heartbeat(n))
            await b.wait_for(50)
            assert b.from_("a") == [heartbeat(n) for n in range(50)]
            await trio.testing.wait_all_tasks_blocked()  # a's sender counts after its write
            assert a.stats().messages_sent == 50
            nursery.cancel_scope.cancel()


async def test_unknown_peer_and_oversized_message_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b", max_frame_bytes=4096)
            a.send("nobody", heartbeat(0))
            assert a.stats().messages_dropped == 1
            huge = AppendEntries(
                term=1,
                leader_id="a",
                prev_log_index=0,
                prev_log_term=0,
                entries=(Entry(term=1, index=1, data=b"x" * 5000),),
                leader_commit=0,
            )
            a.send("b", huge)
            a.send("b", heartbeat(1))
            await b.wait_for(1)
            assert b.received == [("a", heartbeat(1))]
            assert a.stats().messages_dropped == 2
            assert any("exceed max_frame_bytes" in r.getMessage() for r in caplog.records)
            nursery.cancel_scope.cancel()


def test_send_nowait_before_serve_drops() -> None:
    transport = TcpTransport(listen="127.0.0.1:0", cluster_id=CLUSTER)
    transport.send_nowait("b", heartbeat(0))
    assert transport.statistics().messages_dropped == 1
    assert transport.listen_address == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "nowhere"}, "listen: expected 'host:port'"),
        ({"cluster_id": ""}, "cluster_id"),
        ({"max_frame_bytes": 10}, "max_frame_bytes"),
        ({"max_queued_messages": 0}, "max_queued_messages"),
        ({"handshake_timeout": 0}, "handshake_timeout"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"listen": "127.0.0.1:0", "cluster_id": CLUSTER, **kwargs}
    with pytest.raises(ValueError, match=message):
        TcpTransport(**arguments)


async def test_serving_twice_is_refused() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            (a,) = await start_nodes(nursery, "a")
            with pytest.raises(RuntimeError, match="already serving"):
                await a.transport.serve("a", a.deliver, a.book.get)
            nursery.cancel_scope.cancel()


# -- Refusing bad peers -----------------------------------------------------------------------


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
    ]


async def test_wrong_cluster_is_refused_while_a_good_peer_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b")
            stranger = await Node("x", a.book, cluster_id="another-cluster").start(nursery)
            with LogWatch("cannot connect to 'b'") as refused:
                stranger.send("b", heartbeat(99))
                await refused.wait()
            assert b.stats().connections_rejected >= 1
            a.send("b", heartbeat(1))
            await b.wait_for(1)
            assert b.received == [("a", heartbeat(1))]
            assert stranger.stats().messages_sent == 0
            rejections = [w for w in warnings_in(caplog) if w.startswith("rejected connection")]
            assert len(rejections) >= 1
            assert "'another-cluster'" in rejections[0] and "127.0.0.1:" in rejections[0]
            # The stranger's side explains the refusal too.
            assert any("cannot connect to 'b'" in w for w in warnings_in(caplog))
            nursery.cancel_scope.cancel()


async def test_peer_answering_with_another_node_id_is_not_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b")
            a.book["c"] = a.book["b"]  # a stale address book: "c" now points at b
            with LogWatch("the peer says it is node 'b'") as refused:
                a.send("c", heartbeat(0))
                await refused.wait()
            assert b.received == []
            nursery.cancel_scope.cancel()


class LogWatch(logging.Handler):
    """Wakes a test when the transport logs a WARNING containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def __enter__(self) -> LogWatch:
        logging.getLogger(LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger(LOGGER).removeHandler(self)

    async def wait(self) -> None:
        await self.seen.wait()


def handshake(
    node_id: str = "raw", cluster_id: str = CLUSTER, version: int = PROTOCOL_VERSION
) -> bytes:
    return encode_frame(Handshake(protocol_version=version, cluster_id=cluster_id, node_id=node_id))


def frame_of(value: Any) -> bytes:
    body: bytes = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def body_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def raw_exchange(address: str, data: bytes, *, linger: float = 1.0) -> tuple[bytes, str]:
    """Send ``data`` on a raw connection; return what came back before the peer closed it
    (or ``linger`` passed), and this end's address as the peer sees it."""
    host, port = parse_address(address, field_name="address")
    stream = await trio.open_tcp_stream(host, port)
    local = "{}:{}".format(*stream.socket.getsockname()[:2])
    received = b""
    async with stream:
        with trio.move_on_after(linger):
            try:
                await stream.send_all(data)
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:
                pass  # closed with our bytes unread: the kernel answers with a reset
    return received, local


BAD_INPUT = [
    ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds max_frame_bytes"),
    ("oversized header", struct.pack(">I", 2**31), "frame of 2147483648 bytes exceeds"),
    ("garbage frame", b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1", "malformed msgpack"),
    ("not a handshake first", encode_frame(heartbeat(0)), "expected a Handshake first"),
    ("wrong version", handshake(version=2), "protocol version 2 is not supported"),
    ("wrong cluster", handshake(cluster_id="elsewhere"), "belongs to cluster 'elsewhere'"),
    ("bad handshake field", frame_of([0, 1, CLUSTER, 7]), "Handshake field node_id"),
    ("second handshake", handshake() + handshake(), "a second Handshake"),
    ("unknown type", handshake() + frame_of([99, 1]), "unknown message type 99"),
    ("wrong field", handshake() + frame_of([5, "one", "a"]), "TimeoutNow field term"),
    ("truncated msgpack", handshake() + body_frame(frame_of([5, 1, "a"])[4:-1]), "incomplete"),
    ("oversized after handshake", handshake() + struct.pack(">I", 5000), "frame of 5000 bytes"),
    (
        "bad entries",
        handshake() + frame_of([3, 1, "a", 0, 0, [[1, 2, 0, b""]], 0, 0]),
        "entries[0] index: expected 1",
    ),
]


@pytest.mark.parametrize(
    ("data", "reason"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
async def test_bad_input_closes_only_that_connection(
    data: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b", max_frame_bytes=4096)
            a.send("b", heartbeat(0))
            await b.wait_for(1)
            reply, local = await raw_exchange(b.transport.listen_address, data, linger=1.5)
            # The connection was closed by b (not by the linger timeout), and all b ever
            # wrote to it is its own handshake, if ours was acceptable.
            assert b.stats().connections_rejected == 1
            replied = FrameDecoder(4096).feed(reply)
            assert replied in ([], [Handshake(protocol_version=1, cluster_id=CLUSTER, node_id="b")])
            warnings = warnings_in(caplog)
            assert len(warnings) == 1, warnings
            assert warnings[0].startswith(f"rejected connection from {local}: ")
            assert reason in warnings[0]
            assert "\n" not in warnings[0]
            # The established connection from a, and new ones, still work.
            a.send("b", heartbeat(1))
            await b.wait_for(2)
            assert b.received == [("a", heartbeat(0)), ("a", heartbeat(1))]
            assert all(message != heartbeat(99) for _, message in b.received)
            nursery.cancel_scope.cancel()


async def test_silent_connection_is_closed_after_the_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            (b,) = await start_nodes(nursery, "b", handshake_timeout=0.2)
            start = trio.current_time()
            reply, local = await raw_exchange(b.transport.listen_address, b"", linger=1.5)
            assert reply == b""
            assert trio.current_time() - start < 1.0
            assert b.stats().connections_rejected == 1
            assert warnings_in(caplog) == [
                f"rejected connection from {local}: no handshake within 0.2 s"
            ]
            nursery.cancel_scope.cancel()


async def test_closing_before_the_handshake_is_not_a_rejection() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b")
            host, port = parse_address(b.transport.listen_address, field_name="b")
            stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()  # a health check, say
            a.send("b", heartbeat(0))
            await b.wait_for(1)
            assert b.stats().connections_rejected == 0
            nursery.cancel_scope.cancel()


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(buffer) - 1)) if buffer else 0
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set" and buffer:
            buffer[position] = draw(st.integers(0, 255))
        elif action == "insert":
            buffer[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif buffer:
            del buffer[position]
    return bytes(buffer)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    valid = [encode_frame(message) for message in every_message(2)]
    valid[2] = encode_frame(heartbeat(5))  # keep examples small
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            parts.append(draw(st.binary(max_size=64)))
        else:
            parts.append(_mutate(draw(st.sampled_from(valid)), draw))
    return b"".join(parts)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hostile_streams(), with_handshake=st.booleans())
async def test_random_and_mutated_frames_never_hurt_a_good_peer(
    data: bytes, with_handshake: bool
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b", max_frame_bytes=4096)
            payload = (handshake() if with_handshake else b"") + data
            await raw_exchange(b.transport.listen_address, payload, linger=0.1)
            assert b.stats().connections_rejected <= 1
            # Whatever the raw peer managed to deliver came from it, validated.
            for sender, message in b.received:
                assert sender == "raw"
                assert isinstance(
                    message,
                    RequestVote
                    | RequestVoteResponse
                    | AppendEntries
                    | AppendEntriesResponse
                    | TimeoutNow,
                )
            a.send("b", heartbeat(1))
            await b.wait_for(1, sender="a")
            assert b.from_("a") == [heartbeat(1)]
            nursery.cancel_scope.cancel()


# -- Unreachable, slow and restarted peers ------------------------------------------------------


async def test_reconnects_after_the_peer_restarts_on_the_same_port() -> None:
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b")
            a.send("b", heartbeat(0))
            await b.wait_for(1)
            address = b.transport.listen_address
            await b.stop()
            b2 = await Node("b", a.book, listen=address).start(nursery)
            assert b2.transport.listen_address == address
            # Raft retries what matters; so does this test, until one message gets through.
            n = 1
            while not b2.received:
                a.send("b", heartbeat(n))
                n += 1
                with trio.move_on_after(0.05):
                    await b2.wait_for(1)
            # From then on the new connection carries everything, in order.
            first = b2.received[0][1]
            assert isinstance(first, AppendEntries)
            for m in range(n, n + 20):
                a.send("b", heartbeat(m))
            await b2.wait_for(21)
            assert b2.from_("a")[1:] == [heartbeat(m) for m in range(n, n + 20)]
            # b2 answers over its own outbound connection.
            b2.send("a", heartbeat(7))
            await a.wait_for(1)
            nursery.cancel_scope.cancel()


async def test_a_peer_whose_connection_closes_is_reported_gone() -> None:
    """The hint behind fast failover: a peer's process exiting closes its connections."""
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            a, b, c = await start_nodes(nursery, "a", "b", "c")
            a.send("b", heartbeat(0))
            await b.wait_for(1)
            # A connection that only carried requests (c's RPC client) is no Raft peer's.
            await c.transport.request(b.transport.listen_address, "x", b"", timeout=1)
            await c.stop()
            await trio.testing.wait_all_tasks_blocked(0.05)  # b has seen c's connection close
            assert b.gone == []
            await a.stop()
            while not b.gone:
                b._changed = trio.Event()
                await b._changed.wait()
            assert b.gone == ["a"]
            nursery.cancel_scope.cancel()


async def test_refused_peer_does_not_delay_others() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b", max_queued_messages=10)
            a.book["dead"] = f"127.0.0.1:{unused_port()}"
            start = trio.current_time()
            for n in range(100):
                a.send("dead", heartbeat(n))
                a.send("b", heartbeat(n))
                await trio.lowlevel.checkpoint()
            await b.wait_for(100)
            assert trio.current_time() - start < 0.5
            assert b.from_("a") == [heartbeat(n) for n in range(100)]
            # The dead peer's queue holds the newest 10; the 90 before them were dropped.
            assert a.stats().messages_dropped == 90
            nursery.cancel_scope.cancel()


async def test_peer_that_never_answers_does_not_delay_others() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b", handshake_timeout=0.3)
            # Listening but never accepting: connects succeed, handshakes never finish.
            with socket.socket() as black_hole:
                black_hole.bind(("127.0.0.1", 0))
                black_hole.listen(100)
                a.book["slow"] = f"127.0.0.1:{black_hole.getsockname()[1]}"
                for n in range(50):
                    a.send("slow", heartbeat(n))
                    a.send("b", heartbeat(n))
                    await trio.sleep(0.001)
                await b.wait_for(50)
                assert b.from_("a") == [heartbeat(n) for n in range(50)]
            nursery.cancel_scope.cancel()


async def test_queue_for_an_unreachable_peer_keeps_the_newest_messages() -> None:
    port = unused_port()
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            (a,) = await start_nodes(nursery, "a", max_queued_messages=10)
            a.book["late"] = f"127.0.0.1:{port}"
            for n in range(100):
                a.send("late", heartbeat(n))
            await trio.sleep(0.1)  # a few refused attempts
            late = await Node("late", a.book, listen=f"127.0.0.1:{port}").start(nursery)
            await late.wait_for(10)
            assert late.from_("a") == [heartbeat(n) for n in range(90, 100)]
            await trio.testing.wait_all_tasks_blocked()  # a's sender counts after its write
            assert a.stats().messages_dropped == 90
            assert a.stats().messages_sent == 10
            nursery.cancel_scope.cancel()


async def test_peer_without_address_is_dropped_at_connect_time() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b")
            address = a.book["b"]
            a.send("b", heartbeat(0))
            del a.book["b"]  # forgotten before the sender connected
            a.send("b", heartbeat(1))
            assert a.stats().messages_dropped == 1
            await trio.sleep(0.05)
            a.book["b"] = address
            a.send("b", heartbeat(2))
            await b.wait_for(1)
            # heartbeat(0) was queued, but its sender found no address when it ran.
            assert b.received == [("a", heartbeat(2))]
            assert a.stats().messages_dropped == 2
            nursery.cancel_scope.cancel()


# -- Shutdown -----------------------------------------------------------------------------------


async def test_cancelling_serve_closes_everything_promptly() -> None:
    fds_before = open_fds()
    tasks_before = all_tasks()
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b, c = await start_nodes(nursery, "a", "b", "c")
            a.book["dead"] = f"127.0.0.1:{unused_port()}"
            for sender, to in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b"), ("a", "dead")]:
                {"a": a, "b": b, "c": c}[sender].send(to, heartbeat(0))
            await b.wait_for(2)
            await a.wait_for(1)
            await c.wait_for(1)
            addresses = [node.transport.listen_address for node in (a, b, c)]
            assert any(name.startswith("tinyraft sender to dead@") for name in all_tasks())
            start = trio.current_time()
            for node in (a, b, c):
                await node.stop()
            assert trio.current_time() - start < 0.5
            # The message for the dead peer was still queued: dropped when serve ended.
            assert a.stats().messages_dropped == 1
    # Every task serve started has finished (the nursery above could exit) ...
    assert all_tasks() == tasks_before
    # ... and every socket is closed: nobody listens any more, no descriptor leaked.
    for address in addresses:
        host, port = parse_address(address, field_name="address")
        with pytest.raises(OSError):
            await trio.open_tcp_stream(host, port)
    if fds_before is not None:
        assert open_fds() == fds_before


async def test_serve_can_run_again_after_cancellation() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, "a", "b")
            await a.stop()
            assert a.transport.listen_address == "127.0.0.1:0"
            a2 = Node("a", a.book)
            a2.transport = a.transport  # the same transport object, served again
            await a2.start(nursery)
            a2.send("b", heartbeat(0))
            await b.wait_for(1)
            nursery.cancel_scope.cancel()
