"""An in-memory network for simulated clusters, like ``trio.testing``'s memory streams.

``MemoryNetwork`` hands out one ``MemoryTransport`` per node id. The transports implement the
``Transport`` protocol the node drives, so a whole cluster runs in one Trio program, and under
``trio.testing.MockClock(autojump_threshold=0)`` it runs in virtual time: message delays cost no
real time, and a run that needs an hour of timeouts takes milliseconds.

Faults are those Raft must tolerate (dissertation §3.2: messages may be lost, delayed, duplicated
and reordered; servers may crash and partitions may split the cluster), and all of them are drawn
from one ``random.Random(seed)`` owned by the network, so a failing seed replays. Trio's scheduler
is randomized on purpose: on its own, a replay repeats the network's decisions for the same
sequence of sends, not the interleaving of tasks. Seed the scheduler too
(``trio._core._run._r.seed``, as tests/sim/test_randomized_faults.py does) while Trio schedules
deterministically (it does once Hypothesis is imported), and the interleaving repeats as well,
so the whole run does.

Every message goes through the real codec (``tinyraft_trio._wire``): the sender encodes a frame and
the receiver decodes it with a ``FrameDecoder``, so a message the wire format cannot carry fails
the simulation loudly instead of passing a Python object by reference.

Deliveries run inside the receiver's ``serve()``: cancelling it (a crash) discards everything in
flight to that node, exactly as a killed process loses its socket buffers.

Requests (``MemoryTransport.request``, and ``MemoryNetwork.client()`` for simulated client
programs) reach a node by the address its transport registered. A request and its response
each go through the codec and obey partitions, isolation, drops and delays like a message
(duplication and reordering do not apply: a request travels on a TCP connection); a lost one
leaves the caller waiting until its timeout, as on a real network. The handler runs in a task
of the server's ``serve()``, so a server that crashes mid-request never answers.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from .._core._messages import Message
from .._core._types import NodeId
from .._rpc import (
    RequestHandler,
    RequestStarter,
    TransportError,
    answer_request,
    check_frame_size,
    check_request,
    encode_answer,
    timeout_reason,
)
from .._transport import (
    AddressBook,
    MessageHandler,
    PeerGoneHandler,
    SettleHandler,
    TransportStatistics,
)
from .._wire import FrameDecoder, Handshake, ProtocolError, Request, Response, encode_frame

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["MemoryNetwork", "MemoryRpcClient", "MemoryTransport", "NetworkStatistics"]

logger = logging.getLogger("tinyraft_trio.transport")

_LENGTH_PREFIX_BYTES = 4

_BURST_COPIES = 16
"""Most copies delivered in one burst, as one TCP read would carry a few frames."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NetworkStatistics:
    """A snapshot of a ``MemoryNetwork``'s counters.

    Once nothing is in flight, ``sent + duplicated == delivered + dropped``.
    """

    sent: int = 0
    """Calls to ``send_nowait`` on any of the network's transports."""
    delivered: int = 0
    """Copies handed to a receiver's ``deliver`` callback (duplicates count separately)."""
    dropped: int = 0
    """Copies lost: sender or receiver down, partitioned, randomly dropped, or still in flight
    to a node when its ``serve()`` ended."""
    duplicated: int = 0
    """Extra copies the network injected because of ``duplicate_rate``."""


@dataclass(kw_only=True, slots=True)
class _Link:
    """Receiver-side state of one directed link (sender -> this serve() call)."""

    decoder: FrameDecoder
    last_deliver_at: float = -math.inf
    """Invariant: no copy on this link is scheduled later than this (FIFO without reorder)."""


_Pending = tuple[float, int, NodeId, "bytes | None"]
"""(deliver_at, sequence, sender, frame); frame None: the sender's connection closed."""
"""A copy in flight: (deliver_at, sequence number, sender, frame). The unique sequence number
breaks ties in send order and keeps frames from ever being compared."""


class _Inbox:
    """Everything in flight to one running ``serve()`` call; dies with it."""

    def __init__(self, deliver: MessageHandler, peer_gone: PeerGoneHandler | None) -> None:
        self.deliver = deliver
        self.peer_gone = peer_gone
        self.pending: list[_Pending] = []
        """Invariant: a heap ordered by (deliver_at, sequence)."""
        self.links: dict[NodeId, _Link] = {}
        self.wakeup = trio.Event()
        """Set when ``pending`` gains a new earliest copy, so the delivery loop re-arms."""


class _Call:
    """A request waiting for its response (the response's flight is the caller's to wait)."""

    __slots__ = ("arrives_at", "done", "failure", "frame")

    def __init__(self) -> None:
        self.done = trio.Event()
        """Set once the response left the server, or the call failed."""
        self.frame = b""
        self.arrives_at = math.inf
        self.failure: str | None = None


def _check_rate(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


def _check_delay(delay: tuple[float, float]) -> tuple[float, float]:
    low, high = delay
    if not 0.0 <= low <= high or math.isinf(high):
        raise ValueError(f"delay must be a finite (low, high) with 0 <= low <= high, got {delay!r}")
    return (float(low), float(high))


class MemoryNetwork:
    """A simulated network joining the ``MemoryTransport``s it hands out.

    Links are directed and independent. For each message the network decides, in this order
    and with its own seeded RNG: whether to drop it, its delay (uniform over ``delay``), and
    whether to deliver a second copy (with its own delay). Without ``reorder`` a link delivers
    in send order (a copy never overtakes an earlier one on the same link); with ``reorder``
    each copy arrives at its own time. The RNG is only consulted for faults that are switched
    on, so a fault-free network leaves a shared RNG untouched.

    Reachability (``partition``, ``isolate``, ``heal``) is checked when a message is sent and
    again when it arrives, so a partition also loses what was in flight across it.

    Args:
        seed: seeds the network's ``random.Random``.
        drop_rate: probability that a message is lost.
        delay: ``(low, high)`` seconds of (virtual) delay per copy.
        duplicate_rate: probability that a delivered message arrives twice.
        reorder: let copies on one link overtake each other.
        max_frame_bytes: largest frame payload the codec accepts; larger messages raise.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        drop_rate: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        duplicate_rate: float = 0.0,
        reorder: bool = False,
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes!r}")
        self._rng = random.Random(seed)
        self._drop_rate = _check_rate("drop_rate", drop_rate)
        self._delay = _check_delay(delay)
        self._duplicate_rate = _check_rate("duplicate_rate", duplicate_rate)
        self._reorder = bool(reorder)
        self._max_frame_bytes = max_frame_bytes
        self._transports: dict[NodeId, MemoryTransport] = {}
        """Invariant: holds the newest transport handed out for each node id."""
        self._addresses: dict[str, NodeId] = {}
        """Which node serves each address (the newest transport to register it)."""
        self._request_ids = 0
        self._groups: dict[NodeId, int] | None = None
        """Partition group of each node; None means no partition. Unlisted nodes reach no one."""
        self._isolated: set[NodeId] = set()
        self._sequence = 0
        self._sent = 0
        self._delivered = 0
        self._dropped = 0
        self._duplicated = 0

    @property
    def rng(self) -> random.Random:
        """The network's seeded RNG; simulation tests may draw from it too, to replay with it."""
        return self._rng

    def transport(self, node_id: NodeId, address: str | None = None) -> MemoryTransport:
        """Return a new transport for ``node_id``, replacing any earlier one.

        Calling it again for the same id models a restarted node: the old transport is cut
        off (its sends are dropped, nothing more is delivered to it, including what was in
        flight to it) even if its ``serve()`` is still running.

        ``address`` (any string, e.g. the node's advertise address) is where requests reach
        the node while it serves; an address registered earlier (by this node or another)
        now leads here. Without one the node can send requests but receives none, unless an
        earlier transport of the same node registered an address.
        """
        transport = MemoryTransport(self, node_id, address)
        self._transports[node_id] = transport
        if address is not None:
            self._addresses[address] = node_id
        return transport

    def client(self, client_id: str) -> MemoryRpcClient:
        """Return a simulated client program, which sends requests but serves nothing.

        ``client_id`` is what the nodes' request handlers see, and what ``partition`` and
        ``isolate`` name: a partition that leaves it out of every group cuts it off.
        """
        return MemoryRpcClient(self, client_id)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Split the network: only nodes in the same group can talk.

        Replaces the current topology, including earlier isolations. Nodes named in no group
        are cut off from everyone. ``partition()`` with no groups cuts every node off.
        Client ids (``client()``) count as nodes here.

        Raises:
            TypeError: a group is a bare string (write ``{"a"}``, not ``"a"``).
            ValueError: a node is named in two groups.
        """
        assignment: dict[NodeId, int] = {}
        for number, group in enumerate(groups):
            if isinstance(group, str):
                raise TypeError(f"partition groups must be collections of node ids, got {group!r}")
            for node_id in group:
                if assignment.setdefault(node_id, number) != number:
                    raise ValueError(f"node {node_id!r} is named in more than one group")
        self._groups = assignment
        self._isolated.clear()

    def isolate(self, node_id: NodeId) -> None:
        """Cut ``node_id`` (a node or a client) off from every other; the others keep their
        reachability."""
        self._isolated.add(node_id)

    def heal(self) -> None:
        """Remove every partition and isolation. Drop, delay and duplication rates stay."""
        self._groups = None
        self._isolated.clear()

    def set_faults(
        self,
        *,
        drop_rate: float | None = None,
        delay: tuple[float, float] | None = None,
        duplicate_rate: float | None = None,
        reorder: bool | None = None,
    ) -> None:
        """Change the fault settings for messages sent from now on; None keeps a setting.

        Copies already in flight keep the delivery time they were given.
        """
        # Validate everything before changing anything.
        new_drop = self._drop_rate if drop_rate is None else _check_rate("drop_rate", drop_rate)
        new_delay = self._delay if delay is None else _check_delay(delay)
        new_duplicate = (
            self._duplicate_rate
            if duplicate_rate is None
            else _check_rate("duplicate_rate", duplicate_rate)
        )
        self._drop_rate = new_drop
        self._delay = new_delay
        self._duplicate_rate = new_duplicate
        if reorder is not None:
            self._reorder = bool(reorder)

    def can_reach(self, a: NodeId, b: NodeId) -> bool:
        """Whether the current topology lets a message from ``a`` reach ``b``.

        Only the topology counts, not whether ``b`` is serving. A node always reaches itself.
        """
        if a == b:
            return True
        if a in self._isolated or b in self._isolated:
            return False
        if self._groups is None:
            return True
        group = self._groups.get(a)
        return group is not None and group == self._groups.get(b)

    def statistics(self) -> NetworkStatistics:
        """Return a snapshot of the network's counters."""
        return NetworkStatistics(
            sent=self._sent,
            delivered=self._delivered,
            dropped=self._dropped,
            duplicated=self._duplicated,
        )

    # -- used by MemoryTransport --------------------------------------------------------------

    def _inbox_of(self, node_id: NodeId) -> _Inbox | None:
        """The inbox of ``node_id``'s current transport, or None if that node is not up."""
        transport = self._transports.get(node_id)
        return None if transport is None else transport._inbox

    def _send(self, sender: MemoryTransport, to: NodeId, message: Message) -> None:
        # Encode first, whatever happens to the message next, so a message the codec cannot
        # carry fails the simulation at the send that produced it.
        frame = encode_frame(message)
        if len(frame) - _LENGTH_PREFIX_BYTES > self._max_frame_bytes:
            raise ProtocolError(
                f"{type(message).__name__} from {sender.node_id!r} to {to!r} encodes to "
                f"{len(frame) - _LENGTH_PREFIX_BYTES} bytes, above max_frame_bytes="
                f"{self._max_frame_bytes}"
            )
        self._sent += 1
        inbox = self._inbox_of(to)
        if (
            sender._inbox is None
            or self._transports.get(sender.node_id) is not sender
            or inbox is None
            or not self.can_reach(sender.node_id, to)
        ):
            # Refused before it left: the sender's own transport would know (no connection).
            self._dropped += 1
            sender._messages_dropped += 1
            return
        sender._messages_sent += 1
        rng = self._rng
        if self._drop_rate >= 1.0 or (self._drop_rate > 0.0 and rng.random() < self._drop_rate):
            self._dropped += 1
            return
        now = trio.current_time()
        self._schedule(inbox, sender.node_id, frame, now)
        if self._duplicate_rate >= 1.0 or (
            self._duplicate_rate > 0.0 and rng.random() < self._duplicate_rate
        ):
            self._duplicated += 1
            self._schedule(inbox, sender.node_id, frame, now)

    def _schedule(self, inbox: _Inbox, sender: NodeId, frame: bytes, now: float) -> None:
        low, high = self._delay
        deliver_at = now + (self._rng.uniform(low, high) if high > low else low)
        link = inbox.links.get(sender)
        if link is None:
            link = inbox.links[sender] = _Link(decoder=FrameDecoder(self._max_frame_bytes))
        if not self._reorder:
            deliver_at = max(deliver_at, link.last_deliver_at)
        link.last_deliver_at = max(link.last_deliver_at, deliver_at)
        self._sequence += 1
        heapq.heappush(inbox.pending, (deliver_at, self._sequence, sender, frame))
        if inbox.pending[0][1] == self._sequence:
            inbox.wakeup.set()

    def _schedule_close(self, inbox: _Inbox, sender: NodeId, now: float) -> None:
        """The sender stopped: its connection closes after everything it sent (like TCP's FIN)."""
        link = inbox.links[sender]
        deliver_at = max(now + self._flight_time(), link.last_deliver_at)
        link.last_deliver_at = deliver_at
        self._sequence += 1
        heapq.heappush(inbox.pending, (deliver_at, self._sequence, sender, None))
        if inbox.pending[0][1] == self._sequence:
            inbox.wakeup.set()

    def _connections_closed(self, stopped: MemoryTransport) -> None:
        """``stopped`` left the network: close its connection to each node it reached."""
        now = trio.current_time()
        for node_id in self._transports:
            inbox = self._inbox_of(node_id)
            if (
                node_id != stopped.node_id
                and inbox is not None
                and stopped.node_id in inbox.links
                and self.can_reach(stopped.node_id, node_id)
            ):
                self._schedule_close(inbox, stopped.node_id, now)

    def _deliver_one(self, transport: MemoryTransport, inbox: _Inbox) -> None:
        """Hand the earliest pending copy to ``transport``'s node, if it may still arrive."""
        _, _, sender, frame = heapq.heappop(inbox.pending)
        if frame is None:  # the sender's connection closed
            if inbox.peer_gone is not None and self._inbox_of(transport.node_id) is inbox:
                inbox.peer_gone(sender)
            return
        if self._inbox_of(transport.node_id) is not inbox or not self.can_reach(
            sender, transport.node_id
        ):
            self._dropped += 1
            return
        decoded = inbox.links[sender].decoder.feed(frame)
        if len(decoded) != 1 or isinstance(decoded[0], Handshake | Request | Response):
            raise ProtocolError(f"a memory-network frame decoded to {decoded!r}, not one message")
        self._delivered += 1
        transport._messages_received += 1
        inbox.deliver(sender, decoded[0])

    def _discard(self, inbox: _Inbox) -> None:
        """Count what was still in flight to a ``serve()`` call that ended."""
        self._dropped += sum(1 for *_, frame in inbox.pending if frame is not None)
        inbox.pending.clear()

    def _lost(self) -> bool:
        """Draw whether a request or response is lost (only if drops are switched on)."""
        return self._drop_rate >= 1.0 or (
            self._drop_rate > 0.0 and self._rng.random() < self._drop_rate
        )

    def _flight_time(self) -> float:
        low, high = self._delay
        return self._rng.uniform(low, high) if high > low else low

    def _is_current(self, transport: MemoryTransport) -> bool:
        """Whether ``transport`` is serving and has not been replaced (node restarted)."""
        replaced = self._transports.get(transport.node_id) is not transport
        return transport._nursery is not None and not replaced

    async def _request(
        self,
        requester: str,
        address: str,
        method: str,
        body: bytes,
        timeout: float,  # noqa: ASYNC109  (request()'s, passed on)
        pending: set[_Call] | None = None,
    ) -> Response:
        """Run one request from ``requester`` to whoever serves ``address``.

        ``pending`` is the requesting transport's set of waiting calls, which its
        ``serve()`` fails when it ends.
        """
        seconds = check_request(method, body, timeout)
        self._request_ids += 1
        frame = encode_frame(Request(request_id=self._request_ids, method=method, body=body))
        check_frame_size(frame, self._max_frame_bytes, f"a {method} request from {requester!r}")
        deadline = trio.current_time() + seconds
        await trio.lowlevel.checkpoint()
        node_id = self._addresses.get(address)
        server = None if node_id is None else self._transports.get(node_id)
        call = _Call()
        if node_id is None or server is None or not self._is_current(server):
            if node_id is None or self.can_reach(requester, node_id):
                raise TransportError(address, "connection refused (nothing serves it)")
            # A partitioned address looks the same whether or not anything serves it.
        elif self.can_reach(requester, node_id) and not self._lost():
            arrives_at = trio.current_time() + self._flight_time()
            assert server._nursery is not None
            server._nursery.start_soon(
                self._serve_request,
                server,
                requester,
                frame,
                arrives_at,
                call,
                name=f"tinyraft request from {requester} to {node_id}",
            )
        if pending is not None:
            pending.add(call)
        try:
            with trio.move_on_at(deadline):
                await call.done.wait()
                if call.failure is None:
                    await trio.sleep_until(call.arrives_at)
                if call.failure is not None:
                    raise TransportError(address, call.failure)
                assert node_id is not None
                if self.can_reach(node_id, requester):
                    decoded = FrameDecoder(self._max_frame_bytes).feed(call.frame)
                    response = decoded[0] if len(decoded) == 1 else None
                    if not isinstance(response, Response):
                        raise ProtocolError(
                            f"a memory-network response decoded to {decoded!r}, not a Response"
                        )
                    return response
                await trio.sleep_forever()  # lost on its way back
        finally:
            if pending is not None:
                pending.discard(call)
        raise TransportError(address, timeout_reason(seconds))

    async def _serve_request(
        self,
        server: MemoryTransport,
        requester: str,
        frame: bytes,
        arrives_at: float,
        call: _Call,
    ) -> None:
        """In ``server``'s ``serve()``: receive the request, answer it, send the response."""
        await trio.sleep_until(arrives_at)
        if not self._is_current(server) or not self.can_reach(requester, server.node_id):
            return  # lost on its way (the caller times out)
        decoded = FrameDecoder(self._max_frame_bytes).feed(frame)
        request = decoded[0] if len(decoded) == 1 else None
        if not isinstance(request, Request):
            raise ProtocolError(f"a memory-network request decoded to {decoded!r}, not a Request")
        response = await self._answer(server, requester, request)
        if (
            not self._is_current(server)
            or not self.can_reach(server.node_id, requester)
            or self._lost()
        ):
            return
        call.frame = response
        call.arrives_at = trio.current_time() + self._flight_time()
        call.done.set()

    async def _answer(self, server: MemoryTransport, requester: str, request: Request) -> bytes:
        """The response frame: from the server's starter if it takes the request, as the
        TCP transport would offer it, else from its handler."""
        starter = server._starter
        if starter is not None:
            replied = trio.Event()
            answers: list[Response] = []

            def reply(response: Response) -> None:
                answers.append(response)
                replied.set()

            try:
                taken = starter(requester, request, reply)
            finally:
                if server._settle is not None:
                    server._settle()
            if taken:
                await replied.wait()
                return encode_answer(
                    answers[0],
                    requester,
                    request,
                    max_frame_bytes=self._max_frame_bytes,
                    log=logger,
                )
        return await answer_request(
            server._handler,
            requester,
            request,
            max_frame_bytes=self._max_frame_bytes,
            log=logger,
        )


class MemoryTransport:
    """One node's attachment to a ``MemoryNetwork``; implements ``Transport``.

    Get one from ``MemoryNetwork.transport(node_id)``. The node is up, and can send and
    receive, from the moment ``serve()`` calls ``task_status.started()`` until ``serve()`` is
    cancelled.

    Counters: ``messages_sent`` counts messages that entered the network (even if the network
    then loses them, as a real wire would, silently); ``messages_dropped`` counts messages
    refused at once because this node or the peer was down or unreachable;
    ``connections_rejected`` is always 0.
    """

    def __init__(self, network: MemoryNetwork, node_id: NodeId, address: str | None = None) -> None:
        self._network = network
        self._node_id = node_id
        self._address = address
        self._inbox: _Inbox | None = None
        """Invariant: not None exactly while serve() runs (after started())."""
        self._nursery: trio.Nursery | None = None
        """Invariant: set exactly while serve() runs (after started()); request handlers run
        in it, so they die with the node."""
        self._handler: RequestHandler | None = None
        self._starter: RequestStarter | None = None
        self._settle: SettleHandler | None = None
        self._calls: set[_Call] = set()
        """This node's own requests waiting for their responses."""
        self._messages_sent = 0
        self._messages_received = 0
        self._messages_dropped = 0

    @property
    def node_id(self) -> NodeId:
        """The id this transport was made for."""
        return self._node_id

    @property
    def address(self) -> str | None:
        """The address this transport registered for requests, if any."""
        return self._address

    async def serve(
        self,
        node_id: NodeId,
        deliver: MessageHandler,
        address_of: AddressBook,
        *,
        handle_request: RequestHandler | None = None,
        start_request: RequestStarter | None = None,
        peer_gone: PeerGoneHandler | None = None,
        settle: SettleHandler | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Put the node on the network and deliver its incoming messages until cancelled.

        Deliveries run in this task, so ``deliver`` is called from here; an exception it
        raises (or a frame the codec rejects) propagates out of ``serve()``. ``address_of``
        is ignored: memory nodes are addressed by id. Requests to this transport's address
        are answered by ``handle_request``, each in a task of this ``serve()`` (without it,
        ``ok=False, body=b"no handler"``); ``start_request``, if given, is offered each
        request first, as the TCP transport does. ``peer_gone`` hears, in this task, of each
        node that sent this one messages and then stopped serving (its "connection" closes
        after what it sent, unless a partition separates them, as a FIN would not arrive).
        Copies due at the same moment arrive as one burst, after which ``settle`` (if
        given) is called, as after a TCP read; so is it after each request offered to
        ``start_request``.

        Calls ``task_status.started()`` once peers can reach the node. Never returns. When
        cancelled, the node is off the network: everything in flight to it is discarded
        (counted as dropped), later messages to or from it are dropped, requests it was
        handling are never answered, and its own requests still waiting fail with
        ``TransportError``.

        Raises:
            ValueError: ``node_id`` is not the id this transport was made for.
            RuntimeError: ``serve()`` is already running on this transport.
        """
        if node_id != self.node_id:
            raise ValueError(f"this transport belongs to {self.node_id!r}, not {node_id!r}")
        if self._inbox is not None:
            raise RuntimeError(f"transport for {node_id!r} is already serving")
        inbox = _Inbox(deliver, peer_gone)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._handler = handle_request
                self._starter = start_request
                self._settle = settle
                self._inbox = inbox
                task_status.started()
                await self._run_deliveries(inbox)
        except BaseExceptionGroup as group:
            # One failure (from deliver, the codec, or a cancellation) comes out as raised.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self._inbox = None
            self._nursery = None
            self._handler = None
            self._starter = None
            self._settle = None
            self._network._connections_closed(self)
            self._network._discard(inbox)
            calls, self._calls = self._calls, set()
            for call in calls:
                call.failure = "the requesting node stopped"
                call.done.set()

    async def _run_deliveries(self, inbox: _Inbox) -> None:
        pending = inbox.pending
        while True:
            now = trio.current_time()
            if pending and pending[0][0] <= now:
                # A checkpoint before each burst: a cancelled node receives nothing more,
                # other tasks (and a looping self-send) get to run, and reachability is
                # judged at the moment of delivery. Copies only ever join the heap while
                # we yield, so its head is still due afterwards.
                await trio.lowlevel.checkpoint()
                try:
                    for _ in range(_BURST_COPIES):
                        self._network._deliver_one(self, inbox)
                        if not pending or pending[0][0] > now:
                            break
                finally:
                    if self._settle is not None:
                        self._settle()
                continue
            inbox.wakeup = trio.Event()
            with trio.move_on_at(pending[0][0] if pending else math.inf):
                await inbox.wakeup.wait()

    def send_nowait(self, to: NodeId, message: Message) -> None:
        """Put ``message`` on the network for ``to`` and return at once; never blocks.

        Delivery, if any, happens later in ``to``'s ``serve()`` task, never inside this
        call. The message is dropped if this node or ``to`` is not serving, if they cannot
        reach each other, or at random per the network's faults.

        Raises:
            ProtocolError: the message encodes to more than ``max_frame_bytes``.
            Exception: whatever ``encode_frame`` raises for a message it cannot encode.
        """
        self._network._send(self, to, message)

    async def request(
        self,
        address: str,
        method: str,
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109  (the Transport protocol's signature)
    ) -> Response:
        """Send a request to the node serving ``address`` and return its response.

        Only valid while ``serve()`` runs; the handler sees this node's id as requester.
        The request and its response each take the network's delay and may be lost (drops,
        partitions); ``timeout`` (virtual seconds) covers both. If cancelled, the request
        may still be handled; its response is discarded.

        Raises:
            TransportError: this node is not serving (or stopped while waiting); nothing
                serves ``address`` (at once, "connection refused"); or no response within
                ``timeout`` (the outcome is then unknown).
            ValueError, TypeError: an invalid argument (see ``RpcClient.request``).
        """
        if not self._network._is_current(self):
            check_request(method, body, timeout)
            raise TransportError(address, "the transport is not serving")
        return await self._network._request(
            self.node_id, address, method, body, timeout, self._calls
        )

    def statistics(self) -> TransportStatistics:
        """Return a snapshot of this transport's counters."""
        return TransportStatistics(
            messages_sent=self._messages_sent,
            messages_received=self._messages_received,
            messages_dropped=self._messages_dropped,
        )


class MemoryRpcClient:
    """A simulated client program on a ``MemoryNetwork``: sends requests, serves nothing.

    Get one from ``MemoryNetwork.client(client_id)``. Like ``RpcClient``, but its requests
    travel through the network (codec, partitions, drops, delays) in virtual time. It needs
    no running task of its own.
    """

    def __init__(self, network: MemoryNetwork, client_id: str) -> None:
        if not isinstance(client_id, str) or not client_id:
            raise ValueError(f"client_id: must be a non-empty string, got {client_id!r}")
        self._network = network
        self._client_id = client_id

    @property
    def client_id(self) -> str:
        """The id the nodes' handlers see, and that partitions name."""
        return self._client_id

    async def request(
        self,
        address: str,
        method: str,
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109  (the same signature as RpcClient.request)
    ) -> Response:
        """Send a request to the node serving ``address`` and return its response.

        Same contract as ``MemoryTransport.request``, without the need to serve first.

        Raises:
            TransportError: nothing serves ``address`` (at once), or no response within
                ``timeout`` (the outcome is then unknown).
            ValueError, TypeError: an invalid argument.
        """
        return await self._network._request(self._client_id, address, method, body, timeout)
