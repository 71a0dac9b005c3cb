"""RpcClient sends "apply"/"submit"/"query" requests queued behind a busy connection as one
batch."""

from __future__ import annotations

import math

import msgpack
import pytest
import trio
import trio.testing
from test_rpc import CLUSTER, Server

from tinyraft_trio._batching import (
    MAX_BATCH_REQUESTS,
    decode_batch_answer,
    decode_batch_body,
    encode_batch_answer,
    encode_batch_body,
    encode_batch_frame,
    new_batch_packer,
)
from tinyraft_trio._rpc import (
    Request,
    Response,
    RpcClient,
    TransportError,
    _Batch,
    _Call,
    _Connection,
    open_rpc_client,
)
from tinyraft_trio._wire import FrameDecoder, encode_frame


class BatchServer:
    """A handler that answers each command of a batch with ``answer(body)``; records methods."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.batch_sizes: list[int] = []

    @staticmethod
    def answer(body: bytes) -> tuple[bool, bytes]:
        return True, b"done:" + body

    async def handle(self, requester: str, request: Request) -> Response:
        self.methods.append(request.method)
        await trio.lowlevel.checkpoint()
        if request.method.endswith("_batch"):
            bodies = decode_batch_body(request.body)
            assert bodies is not None
            self.batch_sizes.append(len(bodies))
            answers = [self.answer(body) for body in bodies]
            oks, results = [ok for ok, _ in answers], [result for _, result in answers]
            body = encode_batch_answer(oks, results)
            return Response(request_id=request.request_id, ok=True, body=body)
        ok, body = self.answer(request.body)
        return Response(request_id=request.request_id, ok=ok, body=body)


async def ask_many(
    address: str, method: str, count: int, **client_kw: object
) -> dict[int, Response | TransportError]:
    """``count`` concurrent requests; each one's answer (or error) by its number."""
    results: dict[int, Response | TransportError] = {}
    async with open_rpc_client(client_id="cli", cluster_id=CLUSTER, **client_kw) as client:  # type: ignore[arg-type]

        async def ask(n: int) -> None:
            try:
                results[n] = await client.request(address, method, b"%d" % n, timeout=5)
            except TransportError as exc:
                results[n] = exc

        async with trio.open_nursery() as requests:
            for n in range(count):
                requests.start_soon(ask, n)
        assert client.statistics().pending_requests == 0
    return results


@pytest.mark.parametrize("method", ["apply", "submit", "query"])
async def test_requests_queued_behind_a_busy_connection_go_as_batches(method: str) -> None:
    server_logic = BatchServer()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=server_logic.handle).start(nursery)
            results = await ask_many(server.address, method, 3000)
            nursery.cancel_scope.cancel()
    assert {n: r.body for n, r in results.items() if isinstance(r, Response)} == {
        n: b"done:%d" % n for n in range(3000)
    }
    assert f"{method}_batch" in server_logic.methods
    assert len(server_logic.methods) < 300
    assert max(server_logic.batch_sizes) <= MAX_BATCH_REQUESTS


async def test_other_methods_are_never_batched() -> None:
    server_logic = BatchServer()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=server_logic.handle).start(nursery)
            results = await ask_many(server.address, "status", 200)
            nursery.cancel_scope.cancel()
    assert server_logic.methods == ["status"] * 200
    assert all(isinstance(r, Response) and r.ok for r in results.values())


async def test_a_batch_refused_as_a_whole_gives_each_caller_the_refusal() -> None:
    async def refuse(requester: str, request: Request) -> Response:
        await trio.lowlevel.checkpoint()
        return Response(request_id=request.request_id, ok=False, body=b"no leader here")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=refuse).start(nursery)
            results = await ask_many(server.address, "apply", 500)
            nursery.cancel_scope.cancel()
    assert all(
        isinstance(r, Response) and not r.ok and r.body == b"no leader here"
        for r in results.values()
    )


async def test_a_malformed_batch_answer_fails_each_caller_as_unknown() -> None:
    async def garble(requester: str, request: Request) -> Response:
        await trio.lowlevel.checkpoint()
        body = msgpack.packb(["not", "pairs"]) if request.method == "apply_batch" else b"one"
        return Response(request_id=request.request_id, ok=True, body=body)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=garble).start(nursery)
            results = await ask_many(server.address, "apply", 500)
            nursery.cancel_scope.cancel()
    failed = [r for r in results.values() if isinstance(r, TransportError)]
    assert failed, "some requests should have gone in a batch"
    assert all("answer to a batch is malformed" in r.reason for r in failed)
    assert all(r.body == b"one" for r in results.values() if isinstance(r, Response))


async def test_a_lost_connection_fails_every_caller_of_a_batch() -> None:
    arrived = trio.Event()

    async def hang(requester: str, request: Request) -> Response:
        if request.method == "apply_batch":
            arrived.set()
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await Server(handler=hang).start(nursery)

            async def stop_when_a_batch_arrives() -> None:
                await arrived.wait()
                await server.stop()

            nursery.start_soon(stop_when_a_batch_arrives)
            results = await ask_many(server.address, "apply", 500)
            nursery.cancel_scope.cancel()
    assert all(isinstance(r, TransportError) for r in results.values())


def unwatched_batch(connection: _Connection, request_id: int, max_frame_bytes: int) -> _Batch:
    """An "apply" batch that no deadline timer watches (no deadline, no client running)."""
    return _Batch(
        connection,
        "apply",
        request_id,
        max_frame_bytes=max_frame_bytes,
        packer=new_batch_packer(),
        deadline=math.inf,
        watch=lambda item: None,
    )


def queued_batch(count: int) -> tuple[_Connection, _Batch, list[_Call]]:
    """A connection with a batch of ``count`` "apply" calls queued, as ``request`` leaves it."""
    connection = _Connection("127.0.0.1:1", math.inf)
    batch = unwatched_batch(connection, 77, max_frame_bytes=1 << 20)
    connection.batches["apply"] = batch
    connection.calls[77] = batch
    calls = [_Call(math.inf, connection, n, frame=None) for n in range(count)]
    for n, call in enumerate(calls):
        assert batch.add(call, b"%d" % n)
    return connection, batch, calls


def decode_frame(frame: bytes) -> Request:
    (request,) = FrameDecoder(1 << 20).feed(frame)
    assert isinstance(request, Request)
    return request


def test_callers_that_gave_up_before_their_batch_is_written_are_left_out() -> None:
    connection, batch, calls = queued_batch(4)
    for call in calls[1::2]:
        call.finished = True  # what giving up (cancellation or deadline) does to a call
    request = decode_frame(batch.encode())
    assert (request.request_id, request.method) == (77, "apply_batch")
    assert decode_batch_body(request.body) == [b"0", b"2"]
    assert "apply" not in connection.batches  # encoded: later requests start a new batch
    answers = encode_batch_answer([True, False], [b"zero", b"two"])
    batch.finish(Response(request_id=77, ok=True, body=answers))
    assert [(c.response.ok, c.response.body) for c in calls[::2]] == [  # type: ignore[union-attr]
        (True, b"zero"),
        (False, b"two"),
    ]


def test_batch_answers_round_trip_and_malformed_ones_are_refused() -> None:
    body = encode_batch_answer([True, False, True], [b"a", b"", b"c"])
    assert decode_batch_answer(body, 3) == ([True, False, True], [b"a", b"", b"c"])
    for malformed in (
        body,  # decoded for another count below
        msgpack.packb([[True, False], [b"a"]]),  # lengths differ
        msgpack.packb([[True, 1], [b"a", b"b"]]),  # an ok that is not a bool
        msgpack.packb([[True, True], [b"a", "b"]]),  # a body that is not bytes
        msgpack.packb([[True, b"a"], [True, b"b"]]),  # pairs, not two arrays
        msgpack.packb([[True, True]]),
        b"\xc1",  # not msgpack
    ):
        assert decode_batch_answer(malformed, 2) is None, malformed


def test_a_batch_left_with_one_caller_goes_as_a_plain_request() -> None:
    _, batch, calls = queued_batch(3)
    calls[0].finished = calls[2].finished = True
    request = decode_frame(batch.encode())
    assert (request.request_id, request.method, request.body) == (77, "apply", b"1")
    batch.finish(Response(request_id=77, ok=True, body=b"plain"))
    assert calls[1].response == Response(request_id=77, ok=True, body=b"plain")


def test_a_batch_whose_callers_all_gave_up_is_not_sent() -> None:
    connection, batch, calls = queued_batch(2)
    for call in calls:
        call.finished = True
    assert batch.encode() == b""
    assert connection.calls == {} and connection.batches == {}
    assert batch.finished  # and the deadline timer need not keep it until its deadline


def test_a_full_batch_takes_no_more() -> None:
    connection = _Connection("127.0.0.1:1", math.inf)
    batch = unwatched_batch(connection, 1, max_frame_bytes=4096)
    call = _Call(math.inf, connection, 2, frame=None)
    assert not batch.add(call, b"x" * 4000)  # beyond the frame's room
    assert batch.add(call, b"x" * 3000)
    assert not batch.add(call, b"x" * 1000)
    batch = unwatched_batch(connection, 3, max_frame_bytes=1 << 20)
    assert all(batch.add(call, b"") for _ in range(MAX_BATCH_REQUESTS))
    assert not batch.add(call, b"")  # beyond the count


@pytest.mark.parametrize(
    ("count", "size"), [(2, 0), (3, 10), (15, 300), (16, 4096), (1000, 1024), (2, 70_000)]
)
def test_a_batch_frame_is_byte_for_byte_the_plainly_encoded_one(count: int, size: int) -> None:
    """The frame built around the packer's buffer is what encoding the batch body and then
    the request gives (array and bin headers of every size), and the packer is left empty
    for the next batch."""
    packer = new_batch_packer()
    for request_id, method in ((5, "apply_batch"), (2**40 + 1, "query_batch")):
        bodies = [bytes([n % 256]) * (size + n % 3) for n in range(count)]
        expected = encode_frame(
            Request(request_id=request_id, method=method, body=encode_batch_body(bodies))
        )
        assert encode_batch_frame(request_id, method, bodies, packer) == expected
        assert len(packer.getbuffer()) == 0


def test_a_batch_that_cannot_be_packed_leaves_the_packer_empty() -> None:
    packer = new_batch_packer()
    with pytest.raises(TypeError):
        encode_batch_frame(1, "apply_batch", [b"a", object()], packer)  # type: ignore[list-item]
    assert len(packer.getbuffer()) == 0
    frame = encode_batch_frame(2, "apply_batch", [b"b", b"c"], packer)
    assert decode_frame(frame).body == encode_batch_body([b"b", b"c"])


async def test_each_caller_in_a_batch_expires_at_its_own_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The deadline timer watches a batch, not each of its callers, yet each caller's request
    times out at its own deadline: callers joining with later deadlines than the first (the
    usual case), with the same, and with an earlier one; none of them is then sent."""
    client = RpcClient(client_id="cli", cluster_id=CLUSTER)
    connection = _Connection("127.0.0.1:1", math.inf)
    offsets = [1.0, 3.0, 0.5, 2.0, 2.0, 5.0]
    woke: dict[int, tuple[float, bool]] = {}
    start = trio.current_time()

    async def wait(n: int, call: _Call) -> None:
        await call.wait()
        woke[n] = (trio.current_time() - start, call.timed_out)

    async with trio.open_nursery() as nursery:
        for n, offset in enumerate(offsets):
            call = _Call(start + offset, connection, 0, frame=None)
            client._join_batch(connection, "apply", call, b"%d" % n, nursery)
            nursery.start_soon(wait, n, call)
        await trio.sleep(max(offsets) + 1)
        nursery.cancel_scope.cancel()  # the timer's task sleeps on
    assert woke == {n: (pytest.approx(offset), True) for n, offset in enumerate(offsets)}
    (batch,) = connection.calls.values()
    assert isinstance(batch, _Batch) and batch.finished
    assert batch.encode() == b""


async def test_an_answered_batch_leaves_the_deadline_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once its answer came, a batch is no longer the timer's: the timer then has nothing
    left to wait for (rather than holding the batch until its deadline)."""
    client = RpcClient(client_id="cli", cluster_id=CLUSTER)
    connection = _Connection("127.0.0.1:1", math.inf)
    async with trio.open_nursery() as nursery:
        calls = [_Call(trio.current_time() + 10, connection, 0, frame=None) for _ in range(3)]
        for n, call in enumerate(calls):
            client._join_batch(connection, "apply", call, b"%d" % n, nursery)
        (batch,) = connection.calls.values()
        assert isinstance(batch, _Batch)
        frame = batch.encode()
        request_id = decode_frame(frame).request_id
        body = encode_batch_answer([True] * 3, [b"a", b"b", b"c"])
        batch.finish(Response(request_id=request_id, ok=True, body=body))
        assert [call.response.body for call in calls] == [b"a", b"b", b"c"]  # type: ignore[attr-defined]
        assert client._deadlines._earliest() == math.inf
        nursery.cancel_scope.cancel()
