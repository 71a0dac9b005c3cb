"""Requests and their responses: the channel for joins, client commands and reads.

Raft's own messages are one-way: each node sends on its own outbound connection per peer.
Some exchanges need an answer on the connection that asked, because the asker (a client
program, or a node that is not a member yet) accepts no connections: a client sending a
command or a read to any node, a node asking to join the cluster. Those travel as a
``Request`` (wire type 8) on a connection the requester opened, and the node writes the
``Response`` (type 9, the same ``request_id``) back on that connection.

``RpcClient`` is the requester's side: one pooled connection per address, requests
multiplexed on it by ``request_id``. The answering side is the transport's
``serve(..., handle_request=...)``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import msgpack
import trio

from ._batching import (
    BATCH_METHOD_OF,
    MAX_BATCH_REQUESTS,
    decode_batch_answer,
    encode_batch_frame,
    new_batch_packer,
)
from ._config import parse_address
from ._exceptions import RaftError
from ._outbox import Outbox
from ._pending import DeadlineTimer, Expiring, PendingCall
from ._receive import SocketReader
from ._wire import (
    MAX_ID_CHARS,
    MAX_METHOD_CHARS,
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    ProtocolError,
    Request,
    Response,
    WireMessage,
    build_response,
    encode_frame,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "Request",
    "RequestHandler",
    "RequestStarter",
    "Response",
    "RpcClient",
    "RpcClientStatistics",
    "TransportError",
    "open_rpc_client",
]

RequestHandler = Callable[[str, Request], Awaitable[Response]]
"""Answers one request: ``(requester id from its handshake, request) -> response``.

The requester id is whatever the other side announced (a node id or a client id); the handler
decides which requests to accept from whom. An exception it raises becomes a
``Response(ok=False, body=b"internal error: <type>")`` and a logged warning.
"""

RequestStarter = Callable[[str, Request, Callable[[Response], None]], bool]
"""Takes a request without a task of its own, if it can: ``(requester, request, reply)``.

Returns False to leave the request to the ``RequestHandler`` (in a task, as usual). Returns
True to answer it later itself, by calling ``reply(response)`` once, from any task (never
calling it, if the node stops first, only leaves the request unanswered). Must not block:
it runs in the connection's reader. The fast path for requests answered by an event that
comes anyway, such as a command's commit.
"""

logger = logging.getLogger("tinyraft_trio.rpc")

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
_FRAME_HEADER_BYTES = 4
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""What a healthy connection expects from the network now and then; handled where met."""
_RECEIVE_BYTES = 64 * 1024
_MAX_REQUEST_ID = 2**63 - 1
_NUMBER_TYPES = (int, float)  # a tuple: isinstance() checks it without building a union
_BATCH_FRAME_OVERHEAD = 256
"""Bytes a batch request's frame takes beyond its items (header, type, id, method)."""
_BATCH_ITEM_OVERHEAD = 5
"""Bytes an item takes in a batch body beyond its own (msgpack's bin header)."""


class TransportError(RaftError):
    """A request could not be delivered, or its response did not arrive in time.

    Causes: the connection was refused or lost, the other side refused the handshake, or the
    timeout passed. Unless the reason says the request was never sent, its outcome is
    unknown: the node may or may not have carried it out.

    Attributes:
        address: the ``"host:port"`` the request was for.
        reason: what went wrong.
    """

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"request to {address} failed: {reason}")
        self.address = address
        self.reason = reason


# -- Argument checks shared by the TCP and memory implementations --------------------------


def check_request(method: object, body: object, timeout: object) -> float:
    """Check ``request()``'s arguments; return the timeout as a float.

    Raises:
        ValueError: the method is not 1..64 ASCII characters, or the timeout not > 0.
        TypeError: the body is not bytes.
    """
    if not isinstance(method, str) or not (
        method in BATCH_METHOD_OF or (0 < len(method) <= MAX_METHOD_CHARS and method.isascii())
    ):
        raise ValueError(f"method: must be 1..{MAX_METHOD_CHARS} ASCII characters, got {method!r}")
    if type(body) is not bytes:
        raise TypeError(f"body: expected bytes, got {type(body).__name__}")
    if not isinstance(timeout, _NUMBER_TYPES) or type(timeout) is bool or not timeout > 0:
        raise ValueError(f"timeout: must be a number > 0, got {timeout!r}")
    return float(timeout)


def check_frame_size(frame: bytes, max_frame_bytes: int, what: str) -> None:
    """Refuse to send a frame the other side would refuse (and close the connection for).

    Raises:
        ValueError: ``frame`` is larger than ``max_frame_bytes`` allows.
    """
    if len(frame) - _FRAME_HEADER_BYTES > max_frame_bytes:
        raise ValueError(
            f"{what} encodes to {len(frame) - _FRAME_HEADER_BYTES} bytes, above "
            f"max_frame_bytes={max_frame_bytes}"
        )


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise ValueError(f"{name}: must be a non-empty string of at most {MAX_ID_CHARS} characters")
    return value


def _check_max_frame_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 2**32 - 1:
        raise ValueError(f"max_frame_bytes: must be an integer in 1024..{2**32 - 1}, got {value!r}")
    return value


def timeout_reason(timeout: float) -> str:
    return f"no response within {timeout:g} s (the request may or may not have been carried out)"


# -- The answering side ------------------------------------------------------------------


def _error_response(request: Request, message: str) -> Response:
    return Response(request_id=request.request_id, ok=False, body=message.encode())


def _response_problem(response: object) -> str | None:
    if not isinstance(response, Response):
        return f"returned {type(response).__name__}, not a Response"
    if type(response.ok) is not bool:
        return f"returned a Response whose ok is {type(response.ok).__name__}, not bool"
    if type(response.body) is not bytes:
        return f"returned a Response whose body is {type(response.body).__name__}, not bytes"
    return None


async def answer_request(
    handler: RequestHandler | None,
    requester: str,
    request: Request,
    *,
    max_frame_bytes: int,
    log: logging.Logger,
) -> bytes:
    """Run ``handler`` on ``request`` and return the encoded Response frame to send back.

    Never raises ``Exception``: without a handler the answer is ``ok=False, b"no handler"``;
    a handler that raises gets an ``ok=False`` answer naming the exception's type, and a
    WARNING on ``log`` with the traceback. Otherwise as ``encode_answer``. Cancellation
    propagates (no answer is sent).
    """
    if handler is None:
        result: object = _error_response(request, "no handler")
    else:
        try:
            result = await handler(requester, request)
        except Exception as exc:
            log.warning(
                "request handler failed on %s request %d from %r: %s: %s",
                request.method,
                request.request_id,
                requester,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            result = _error_response(request, f"internal error: {type(exc).__name__}")
    return encode_answer(result, requester, request, max_frame_bytes=max_frame_bytes, log=log)


def encode_answer(
    result: object,
    requester: str,
    request: Request,
    *,
    max_frame_bytes: int,
    log: logging.Logger,
) -> bytes:
    """Encode a handler's answer to ``request`` as the frame to send back.

    Something other than a valid ``Response`` becomes an ``ok=False`` answer (and a
    WARNING on ``log``). The response's ``request_id`` is always the request's. An answer
    larger than ``max_frame_bytes`` is replaced by an ``ok=False`` one saying so.
    """
    problem = _response_problem(result)
    if problem is not None:
        log.warning(
            "request handler %s for %s request %d from %r",
            problem,
            request.method,
            request.request_id,
            requester,
        )
        response = _error_response(request, "internal error: invalid response")
    else:
        assert isinstance(result, Response)
        response = result
        if response.request_id != request.request_id:
            response = replace(response, request_id=request.request_id)
    frame = encode_frame(response)
    if len(frame) - _FRAME_HEADER_BYTES > max_frame_bytes:
        log.warning(
            "response to %s request %d from %r encodes to %d bytes, above max_frame_bytes=%d",
            request.method,
            request.request_id,
            requester,
            len(frame) - _FRAME_HEADER_BYTES,
            max_frame_bytes,
        )
        frame = encode_frame(
            _error_response(
                request,
                f"response too large: {len(frame) - _FRAME_HEADER_BYTES} bytes "
                f"exceed max_frame_bytes {max_frame_bytes}",
            )
        )
    return frame


async def receive_handshake(
    stream: trio.abc.ReceiveStream, decoder: FrameDecoder
) -> tuple[Handshake, list[WireMessage]] | None:
    """Read until the first frame is complete; return it and any frames after it.

    Returns None if the other side closes the connection first.

    Raises:
        ProtocolError: the first frame is invalid or not a Handshake.
    """
    while True:
        data = await stream.receive_some(_RECEIVE_BYTES)
        if not data:
            return None
        messages = decoder.feed(data)
        if messages:
            first = messages[0]
            if not isinstance(first, Handshake):
                raise ProtocolError(f"expected a Handshake first, got {type(first).__name__}")
            return first, messages[1:]


# -- The requesting side -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RpcClientStatistics:
    """A snapshot of an ``RpcClient``'s state and counters."""

    connections: int = 0
    """Connections in the pool now (open, or being opened)."""
    connects: int = 0
    """Connections opened successfully (handshake done) since the client started."""
    pending_requests: int = 0
    """Requests sent (or about to be) whose response has not arrived."""


class _Call(PendingCall):
    """One request waiting for its response (``response``: a ``Response``)."""

    __slots__ = ("connection", "frame", "request_id")

    def __init__(
        self, deadline: float, connection: _Connection, request_id: int, frame: bytes | None
    ) -> None:
        # PendingCall's fields set here rather than by its __init__: one Python call less
        # for each of the many requests a busy client makes.
        self.deadline = deadline
        self.task = None
        self.response = None
        self.failure = None
        self.finished = False
        self.timed_out = False
        self.connection = connection
        self.request_id = request_id
        self.frame = frame
        """The request's own frame; None for a member of a ``_Batch``."""

    def abandon(self) -> None:
        # Forget the call; if its frame is still queued, it is not sent at all. (A batch
        # leaves out members that were abandoned before it was encoded.)
        if self.frame is not None:
            self.connection.calls.pop(self.request_id, None)
            self.connection.outbox.discard(self.frame)


class _Batch:
    """Requests of one method, queued behind a busy connection, to go as one (``_batching``).

    The connection's writer encodes it only when it takes it, so requests join it until
    then. Its members are ``_Call``s without frames; the batch's answer is split among them.

    The deadline timer watches the batch rather than each member (one entry instead of a
    thousand): the batch's ``deadline`` is its first member's, and members mostly join with
    later deadlines (the same timeout, asked later). When it passes, the batch expires the
    members whose deadlines have passed and is watched again for the earliest of the rest.
    A member joining with an earlier deadline than the batch's is watched on its own.
    """

    __slots__ = (
        "bodies",
        "calls",
        "connection",
        "deadline",
        "finished",
        "method",
        "packer",
        "request_id",
        "room",
        "watch",
    )

    def __init__(
        self,
        connection: _Connection,
        method: str,
        request_id: int,
        max_frame_bytes: int,
        packer: msgpack.Packer,
        deadline: float,
        watch: Callable[[Expiring], None],
    ) -> None:
        self.connection = connection
        self.method = method
        self.request_id = request_id
        self.packer = packer
        """The client's own, for ``encode_batch_frame``."""
        self.deadline = deadline
        """When the timer next looks at the batch: at most the deadline of each member that
        it does not watch on its own."""
        self.finished = False
        """The batch was answered or failed, or none of its members waits any more: the
        timer drops it."""
        self.watch = watch
        """Has the client's deadline timer watch the batch (or a member)."""
        self.calls: list[_Call] = []
        """Invariant: once encoded, exactly the calls sent, in the order sent."""
        self.bodies: list[bytes] = []
        self.room = max_frame_bytes - _BATCH_FRAME_OVERHEAD

    def add(self, call: _Call, body: bytes) -> bool:
        """Take ``call`` (with its request ``body``) if there is room; False if not."""
        cost = len(body) + _BATCH_ITEM_OVERHEAD
        if cost > self.room or len(self.calls) == MAX_BATCH_REQUESTS:
            return False
        self.room -= cost
        self.calls.append(call)
        self.bodies.append(body)
        return True

    def encode(self) -> bytes:
        connection = self.connection
        if connection.batches.get(self.method) is self:
            del connection.batches[self.method]
        if any(call.finished for call in self.calls):
            pairs = zip(self.calls, self.bodies, strict=True)
            kept = [(call, body) for call, body in pairs if not call.finished]
            self.calls = [call for call, _ in kept]
            self.bodies = [body for _, body in kept]
        if not self.calls:
            connection.calls.pop(self.request_id, None)
            self.finished = True  # nothing left to answer: the timer may drop it now
            return b""
        bodies, self.bodies = self.bodies, []
        if len(bodies) == 1:
            return encode_frame(
                Request(request_id=self.request_id, method=self.method, body=bodies[0])
            )
        return encode_batch_frame(
            self.request_id, BATCH_METHOD_OF[self.method], bodies, self.packer
        )

    def __lt__(self, other: Expiring) -> bool:
        return self.deadline < other.deadline

    def expire(self) -> None:
        """Expire the members whose deadlines have passed; watch again for the others."""
        if self.finished:
            return
        now = trio.current_time()
        waiting = []
        for call in self.calls:
            if not call.finished:
                if call.deadline <= now:
                    call.expire()
                else:
                    waiting.append(call)
        if waiting:
            self.deadline = min(call.deadline for call in waiting)
            self.watch(self)
        else:
            self.finished = True

    def finish(self, response: object = None, failure: str | None = None) -> None:
        """Give each member its share of the batch's ``response`` (or the ``failure``)."""
        self.finished = True
        calls = self.calls
        if not isinstance(response, Response) or len(calls) == 1 or not response.ok:
            # A refusal (ok=False) is every member's answer.
            for call in calls:
                call.finish(response, failure)
            return
        answers = decode_batch_answer(response.body, len(calls))
        if answers is None:
            for call in calls:
                call.finish(failure="the node's answer to a batch is malformed")
            return
        request_id = response.request_id
        oks, bodies = answers
        PendingCall.finish_each(
            calls, map(build_response, itertools.repeat(request_id), oks, bodies)
        )


class _Connection:
    """One pooled connection: its pending calls and the frames waiting to be written."""

    __slots__ = ("address", "batches", "calls", "failure", "outbox", "ready", "scope", "usable")

    def __init__(self, address: str, connect_deadline: float) -> None:
        self.address = address
        self.calls: dict[int, _Call | _Batch] = {}
        """Invariant: the calls (and batches) whose request may be on this connection and
        whose caller still waits; each is failed when the connection fails."""
        self.batches: dict[str, _Batch] = {}
        """The batch of each method that requests may still join (queued, not encoded)."""
        self.outbox = Outbox()
        """Frames for the writer task, oldest first."""
        self.ready = trio.Event()
        """Set once the handshake is done or the connection failed, whichever is first."""
        self.failure: str | None = None
        """Why the connection failed; None while it is usable. Set once."""
        self.scope = trio.CancelScope(deadline=connect_deadline)
        """Holds the connection's tasks. Until the handshake is done its deadline is the
        latest deadline of the requests waiting for it; then none."""
        self.usable = False
        """True from the end of the handshake until the connection fails."""

    def fail(self, reason: str) -> None:
        """Fail the connection and every call waiting on it (the first reason wins)."""
        if self.failure is None:
            self.failure = reason
        self.usable = False
        self.ready.set()
        for call in self.calls.values():
            call.finish(failure=self.failure)
        self.calls.clear()
        self.batches.clear()
        self.outbox.clear()
        self.scope.cancel()


class _ConnectFailed(Exception):
    pass


class RpcClient:
    """Sends requests to nodes by address and waits for their responses.

    Usable standalone (a client program) or inside a node: get one from
    ``open_rpc_client()``, which runs its background tasks; a transport's ``request()``
    uses one of its own. Each address gets one pooled connection, opened on first use
    (TCP, then a handshake naming ``client_id`` and ``cluster_id``); requests to it are
    multiplexed by ``request_id``, written by one writer task (in batches) and answered
    through one reader task. "apply", "submit" and "query" requests that queue behind a
    busy connection go as one batch request (``_batching``), each caller still getting its
    own response. A connection that fails fails every request pending on it and
    leaves the pool, so the next request to that address reconnects.

    Args:
        client_id: the id announced in the handshake; the node's request handler sees it.
        cluster_id: the cluster's name; a node of another cluster is refused.
        max_frame_bytes: largest frame accepted from the network and sent to it.
        rng: picks the first request id; seed it to replay a run. Defaults to a
            ``random.Random`` seeded by the OS.

    Raises:
        ValueError: an argument is invalid; the message names it.
    """

    def __init__(
        self,
        *,
        client_id: str,
        cluster_id: str,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        self._client_id = _check_id("client_id", client_id)
        self._cluster_id = _check_id("cluster_id", cluster_id)
        self._max_frame_bytes = _check_max_frame_bytes(max_frame_bytes)
        rng = rng if rng is not None else random.Random()
        self._next_request_id = rng.randrange(2**32)
        self._handshake_frame = encode_frame(
            Handshake(protocol_version=PROTOCOL_VERSION, cluster_id=cluster_id, node_id=client_id)
        )
        self._nursery: trio.Nursery | None = None
        """Invariant: set exactly while the client runs (inside ``open_rpc_client``)."""
        self._now: Callable[[], float] = trio.current_time
        """``trio.current_time``; once the client runs, its clock's own method, which is
        one Python call per request instead of three."""
        self._closed = False
        self._pool: dict[str, _Connection] = {}
        """Invariant: each connection here has one task in ``_nursery`` and no failure."""
        self._connects = 0
        self._deadlines = DeadlineTimer()
        self._batch_packer = new_batch_packer()

    @property
    def client_id(self) -> str:
        """The id this client announces."""
        return self._client_id

    def statistics(self) -> RpcClientStatistics:
        """Return a snapshot of the pool and the counters."""
        return RpcClientStatistics(
            connections=len(self._pool),
            connects=self._connects,
            pending_requests=sum(
                sum(not member.finished for member in call.calls) if isinstance(call, _Batch) else 1
                for connection in self._pool.values()
                for call in connection.calls.values()
            ),
        )

    async def request(
        self,
        address: str,
        method: str,
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109  (part of the API the node and clients use)
    ) -> Response:
        """Send a request to the node at ``address`` and return its response.

        ``timeout`` covers everything: connecting (when the pool has no connection to
        ``address`` yet), sending, and waiting for the response. A response with
        ``ok=False`` is returned, not raised: it is the node's answer.

        If the call is cancelled, the request may or may not have been sent and carried
        out; its response, if one arrives, is discarded.

        Raises:
            TransportError: the connection could not be opened, was refused or lost, or
                ``timeout`` passed. Except for a refused connection, the outcome is
                unknown: the node may have carried out the request.
            ValueError: ``address``, ``method`` or ``timeout`` is invalid, or the request
                encodes larger than ``max_frame_bytes``.
            TypeError: ``body`` is not bytes.
        """
        seconds = check_request(method, body, timeout)
        batchable = method in BATCH_METHOD_OF and len(body) <= self._max_frame_bytes // 2
        request_id = 0  # a batch's members go under the batch's
        frame = None
        if not batchable:
            request_id = self._new_request_id()
            frame = self._request_frame(request_id, method, body)
        nursery = self._nursery
        if nursery is None or self._closed:
            raise TransportError(address, "the RPC client is not running")
        deadline = self._now() + seconds
        connection = self._pool.get(address)
        if connection is None or not connection.usable:
            connection = await self._usable_connection(address, deadline, seconds, nursery)
        if frame is None and connection.outbox.writes_now():
            # Nothing to wait behind: alone, it goes out at once.
            request_id = self._new_request_id()
            frame = self._request_frame(request_id, method, body)
        call = _Call(deadline, connection, request_id, frame)
        if frame is None:
            self._join_batch(connection, method, call, body, nursery)
        else:
            connection.calls[request_id] = call
            connection.outbox.put(frame)
            self._deadlines.watch(call, nursery)
        # Parked here rather than in ``call.wait()``: one coroutine less for each of the
        # thousands of requests that may wait at once. Nothing since the call was queued
        # (no checkpoint) can have finished it, so it always parks.
        call.task = trio.lowlevel.current_task()
        try:
            await trio.lowlevel.wait_task_rescheduled(call)
        except BaseException:
            call.interrupted()
            raise
        response = call.response
        if isinstance(response, Response):
            return response
        if call.timed_out:
            raise TransportError(address, timeout_reason(seconds))
        assert call.failure is not None
        raise TransportError(address, call.failure)

    async def aclose(self) -> None:
        """Close every connection; requests still waiting fail with ``TransportError``.

        Later requests fail at once. Idempotent; never blocks (it checkpoints, so it can
        raise ``trio.Cancelled``, but the client is closed anyway).
        """
        self._close()
        await trio.lowlevel.checkpoint()

    # -- internals ----------------------------------------------------------------------

    def _close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, {}
        for connection in pool.values():
            connection.fail("the RPC client was closed")

    def _connection_to(self, address: str, deadline: float, nursery: trio.Nursery) -> _Connection:
        connection = self._pool.get(address)
        if connection is None:
            connection = self._pool[address] = _Connection(address, deadline)
            nursery.start_soon(
                self._run_connection, connection, name=f"tinyraft rpc connection to {address}"
            )
        elif not connection.ready.is_set():
            connection.scope.deadline = max(connection.scope.deadline, deadline)
        return connection

    async def _usable_connection(
        self, address: str, deadline: float, seconds: float, nursery: trio.Nursery
    ) -> _Connection:
        """The pool's connection to ``address`` once its handshake is done, opened if need be.

        Raises:
            ValueError: ``address`` is not ``"host:port"``.
            TransportError: the connection failed, or ``deadline`` passed first.
        """
        if address not in self._pool:  # a pooled connection's address was checked already
            parse_address(address, field_name="address")
        connection = self._connection_to(address, deadline, nursery)
        if not connection.ready.is_set():
            with trio.move_on_at(deadline):
                await connection.ready.wait()
            if not connection.ready.is_set():
                raise TransportError(address, timeout_reason(seconds))
        if connection.failure is not None:
            raise TransportError(address, connection.failure)
        return connection

    def _new_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id = (request_id + 1) & _MAX_REQUEST_ID
        return request_id

    def _request_frame(self, request_id: int, method: str, body: bytes) -> bytes:
        """The frame of one request; ValueError if it is larger than ``max_frame_bytes``."""
        frame = encode_frame(Request(request_id=request_id, method=method, body=body))
        check_frame_size(frame, self._max_frame_bytes, f"a {method} request")
        return frame

    def _join_batch(
        self, connection: _Connection, method: str, call: _Call, body: bytes, nursery: trio.Nursery
    ) -> None:
        """Queue ``call`` in the connection's open batch for ``method`` (or a new one), and
        see that its deadline is watched."""
        batch = connection.batches.get(method)
        if batch is not None and batch.add(call, body):
            if call.deadline < batch.deadline:
                batch.watch(call)  # the batch is watched for later
            return
        request_id = self._new_request_id()
        batch = _Batch(
            connection,
            method,
            request_id,
            self._max_frame_bytes,
            self._batch_packer,
            call.deadline,
            functools.partial(self._deadlines.watch, nursery=nursery),
        )
        batch.add(call, body)
        connection.batches[method] = batch
        connection.calls[request_id] = batch
        connection.outbox.put_later(batch)
        batch.watch(batch)

    def _forget(self, connection: _Connection, reason: str) -> None:
        connection.fail(reason)
        if self._pool.get(connection.address) is connection:
            del self._pool[connection.address]

    async def _run_connection(self, connection: _Connection) -> None:
        """Own one connection: open it, then run its writer and reader until it fails."""
        address = connection.address
        try:
            with connection.scope:
                try:
                    stream, decoder = await self._connect(address)
                except _ConnectFailed as exc:
                    logger.info("cannot connect to %s: %s", address, exc)
                    self._forget(connection, str(exc))
                    return
                connection.scope.deadline = math.inf
                self._connects += 1
                connection.usable = True
                connection.ready.set()
                async with stream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, connection, stream)
                    await self._read(connection, stream, decoder)
        finally:
            # Reached without a failure only if the connect deadline passed (every request
            # waiting for it had given up) or the client is shutting down.
            self._forget(
                connection,
                "no handshake before the requests' deadline"
                if connection.scope.cancelled_caught and not connection.ready.is_set()
                else "the RPC client was closed",
            )

    async def _connect(self, address: str) -> tuple[trio.SocketStream, FrameDecoder]:
        """Connect to ``address`` and exchange handshakes.

        Raises:
            _ConnectFailed: unreachable, or the other side is not a node of our cluster.
        """
        host, port = parse_address(address, field_name="address")
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise _ConnectFailed(f"cannot connect: {str(exc) or repr(exc)}") from None
        decoder = FrameDecoder(self._max_frame_bytes)
        try:
            await stream.send_all(self._handshake_frame)
            received = await receive_handshake(stream, decoder)
            if received is None:
                raise _ConnectFailed(
                    "the node closed the connection during the handshake "
                    "(another cluster or protocol version? see its log)"
                )
            handshake, messages = received
            if handshake.protocol_version != PROTOCOL_VERSION:
                raise _ConnectFailed(
                    f"the node speaks protocol version {handshake.protocol_version}, "
                    f"not {PROTOCOL_VERSION}"
                )
            if handshake.cluster_id != self._cluster_id:
                raise _ConnectFailed(
                    f"the node belongs to cluster {handshake.cluster_id!r}, "
                    f"not {self._cluster_id!r}"
                )
            if messages:
                raise _ConnectFailed(
                    f"the node sent a {type(messages[0]).__name__} before any request"
                )
            return stream, decoder
        except ProtocolError as exc:
            await trio.aclose_forcefully(stream)
            raise _ConnectFailed(f"bad handshake: {exc}") from None
        except _NETWORK_ERRORS as exc:
            await trio.aclose_forcefully(stream)
            raise _ConnectFailed(f"connection lost during the handshake: {exc!r}") from None
        except BaseException:
            # Includes _ConnectFailed and Cancelled; aclose_forcefully never blocks.
            await trio.aclose_forcefully(stream)
            raise

    async def _write(self, connection: _Connection, stream: trio.SocketStream) -> None:
        """The connection's only writer: send queued requests, several per write."""
        try:
            await connection.outbox.pump(stream)
        except _NETWORK_ERRORS as exc:
            logger.info("lost connection to %s: %r", connection.address, exc)
            self._forget(connection, f"connection lost: {exc!r}")

    async def _read(
        self, connection: _Connection, stream: trio.SocketStream, decoder: FrameDecoder
    ) -> None:
        """The connection's only reader: hand each Response to the call waiting for it."""
        address = connection.address
        calls = connection.calls
        reader = SocketReader(stream)
        try:
            while True:
                data = await reader.receive_some(_RECEIVE_BYTES)
                if not data:
                    logger.info("%s closed the connection", address)
                    self._forget(connection, "the node closed the connection")
                    return
                for message in decoder.feed(data):
                    if not isinstance(message, Response):
                        raise ProtocolError(f"expected a Response, got {type(message).__name__}")
                    call = calls.pop(message.request_id, None)
                    if call is not None:
                        call.finish(message)
                    # Otherwise its caller gave up (timeout, cancellation): discarded.
        except ProtocolError as exc:
            logger.warning("closing connection to %s: %s", address, exc)
            self._forget(connection, f"bad frame from the node: {exc}")
        except _NETWORK_ERRORS as exc:
            logger.info("lost connection to %s: %r", address, exc)
            self._forget(connection, f"connection lost: {exc!r}")


@asynccontextmanager
async def open_rpc_client(
    *,
    client_id: str,
    cluster_id: str,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    rng: random.Random | None = None,
) -> AsyncIterator[RpcClient]:
    """Run an ``RpcClient`` (see there for the arguments) for the duration of the block.

    The client's connection tasks run in a nursery owned by this context manager. Leaving
    the block closes every connection and ends those tasks; requests still waiting (from
    other tasks) fail with ``TransportError``. An exception raised in the block comes out
    as raised, not wrapped in an exception group.

    Raises:
        ValueError: an argument is invalid.
    """
    client = RpcClient(
        client_id=client_id, cluster_id=cluster_id, max_frame_bytes=max_frame_bytes, rng=rng
    )
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            client._now = trio.lowlevel.current_clock().current_time
            try:
                yield client
            finally:
                client._close()
                client._nursery = None
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own exception passes through the client's nursery on its way out;
        # give it back as raised, so `except TransportError:` around the block works.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
