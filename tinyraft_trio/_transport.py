"""How nodes reach each other: the Transport protocol the node drives.

A transport delivers whole Raft messages between nodes, identified by node id. Delivery is
best effort: Raft tolerates lost, delayed and duplicated messages, so a transport drops rather
than blocks when a peer is slow or unreachable. ``TcpTransport`` (msgpack frames over TCP) is the
default; ``tinyraft_trio.testing.MemoryNetwork`` provides one in memory for simulation.

A transport also carries requests and their responses (see ``_rpc``): it answers requests
from nodes and clients with the node's ``handle_request``, and sends the node's own requests
by address with ``request()``.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ._config import parse_address
from ._core._messages import Message
from ._core._types import NodeId
from ._outbox import MAX_WRITE_BYTES, DirectWrites, Outbox, write_now
from ._receive import SocketReader
from ._rpc import (
    DEFAULT_MAX_FRAME_BYTES,
    RequestHandler,
    RequestStarter,
    RpcClient,
    TransportError,
    answer_request,
    encode_answer,
    open_rpc_client,
    receive_handshake,
)
from ._wire import (
    MAX_ID_CHARS,
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    ProtocolError,
    Request,
    Response,
    WireMessage,
    encode_frame,
    encode_frame_pieces,
)

MessageHandler = Callable[[NodeId, Message], None]
"""Called once for each message that arrives, with the sender's id. Must not block."""

AddressBook = Callable[[NodeId], "str | None"]
"""Gives the current ``"host:port"`` of a peer, or None if the node does not know it."""

PeerGoneHandler = Callable[[NodeId], None]
"""Called when a connection that carried Raft messages from a peer is closed by that peer or
the network (not by us): most often the peer's process exited. A hint only; must not block."""

SettleHandler = Callable[[], None]
"""Called after each burst of ``deliver`` and ``start_request`` calls (the messages and
requests that arrived together), before the transport next waits for anything: the node
then does once, for the whole burst, the work they left. Must not block."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportStatistics:
    """A snapshot of a transport's counters."""

    messages_sent: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    """Messages discarded before sending: peer unreachable, queue full, or connection lost."""
    connections_rejected: int = 0
    """Inbound connections closed for bad input: bad handshake, oversized or malformed frame."""


class Transport(Protocol):
    """What the node needs from a network."""

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
        """Accept peers' connections and deliver their messages; run outbound connections.

        Requests (from peers or clients) are answered by ``handle_request``, each in its
        own task; while it is None they get ``Response(ok=False, body=b"no handler")``.
        ``start_request``, if given, is offered each request first (see ``RequestStarter``).
        ``peer_gone``, if given, hears of peers whose connection closed (``PeerGoneHandler``).
        ``settle``, if given, must be called after every burst of ``deliver`` and
        ``start_request`` calls, before the transport waits again (``SettleHandler``).
        Calls ``task_status.started()`` once peers can connect. Never returns; cancelling it
        closes every connection and listener the transport opened.
        """
        ...

    async def request(
        self,
        address: str,
        method: str,
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109  (part of the API the node and clients use)
    ) -> Response:
        """Send a request to the node at ``address`` and return its response.

        Only valid while ``serve`` runs; the request announces this node's id. ``timeout``
        covers connecting and waiting for the response. If cancelled, the request may or
        may not have been carried out; a late response is discarded.

        Raises:
            TransportError: not delivered or not answered in time (the outcome is then
                unknown), or ``serve`` is not running.
        """
        ...

    def send_nowait(self, to: NodeId, message: Message) -> None:
        """Queue ``message`` for peer ``to`` and return at once.

        Only valid while ``serve`` runs. The message may be dropped (peer unknown,
        unreachable or too slow); Raft retries what matters.
        """
        ...

    def statistics(self) -> TransportStatistics:
        """Return the transport's counters."""
        ...


# -- TCP ---------------------------------------------------------------------------------------

logger = logging.getLogger("tinyraft_trio.transport")

_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""What a healthy transport expects from the network now and then; handled where met."""

_RECEIVE_BYTES = 64 * 1024
_BACKOFF_MIN = 0.02
_BACKOFF_MAX = 1.0


class _ConnectionFailed(Exception):
    """An outbound connection could not be opened or was refused during its handshake.

    ``refused`` marks a peer that answered but is not what we expect (another cluster, node
    or protocol version): a configuration problem worth a WARNING, where an unreachable
    peer (down, restarting) is routine in a cluster and logged at INFO.
    """

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


def _nothing_to_settle() -> None:
    pass


def _format_address(sockaddr: Any) -> str:
    """``"host:port"`` (``"[v6]:port"``) from a socket address tuple."""
    try:
        host, port = sockaddr[0], sockaddr[1]
    except (TypeError, IndexError):
        return str(sockaddr)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _remote_address(stream: trio.SocketStream) -> str:
    try:
        return _format_address(stream.socket.getpeername())
    except OSError:
        return "an unknown address"


class _Peer:
    """Outbound state for one peer: its queue and how its sender wakes up."""

    __slots__ = ("direct", "last_failure", "queue", "unsent", "wakeup")

    def __init__(self, max_queued_messages: int) -> None:
        self.queue: deque[Message] = deque(maxlen=max_queued_messages)
        """Invariant: messages waiting for the sender, oldest first; at most maxlen."""
        self.unsent = b""
        """The tail of a frame written only in part by ``send_nowait``: the sender writes
        it before anything else."""
        self.direct = DirectWrites()
        """Open while the sender waits with nothing queued or unsent: ``send_nowait`` then
        writes to the socket at once, saving the sender a wakeup."""
        self.wakeup = trio.Event()
        """Set whenever a message is queued; the sender replaces it before waiting."""
        self.last_failure: str | None = None
        """Why the last connection attempt failed; None once a handshake succeeds. Repeated
        failures with the same reason are logged at DEBUG only, so a dead peer does not
        flood the log."""

    async def wait_for_messages(self) -> None:
        while not self.queue and not self.unsent:
            self.wakeup = trio.Event()
            await self.wakeup.wait()


class _Inbound:
    """The answering side of one inbound connection: responses waiting to be written."""

    __slots__ = ("outbox", "requests")

    def __init__(self, max_concurrent_requests: int) -> None:
        self.outbox = Outbox()
        """Response frames for the connection's writer, in the order they were ready."""
        self.requests = trio.Semaphore(max_concurrent_requests)
        """One token per request being handled; the reader waits for one before reading
        on, so a flood of requests is pushed back onto the sender (TCP flow control)."""


class TcpTransport:
    """The default transport: msgpack frames (see ``_wire``) over TCP, one stream per direction.

    Each node listens for its peers; each inbound connection carries messages from that peer
    only. To send, the node keeps one outbound connection per peer, written by one sender
    task that batches everything queued into a single write. Both sides open with a
    handshake naming protocol version, cluster id and node id, so a node never accepts
    messages from another cluster or delivers to the wrong node.

    An inbound connection may also carry requests, from a peer's ``request()`` or from a
    client (``open_rpc_client``): each is answered by the node's ``handle_request`` in its
    own task (at most ``max_concurrent_requests`` at once per connection), and the responses
    go back on the same connection, written by one writer task that joins those ready
    together into one write. A handler that raises only fails its own request.

    Delivery is best effort, as Raft expects: ``send_nowait`` never blocks; a slow or dead
    peer only fills its own bounded queue, whose oldest messages are dropped first (newer
    Raft messages supersede older ones). Lost connections are reopened with capped, jittered
    exponential backoff. Bad input from the network closes that one connection and logs one
    WARNING line on the ``tinyraft_trio.transport`` logger; it never disturbs other
    connections or the node.

    Args:
        listen: ``"host:port"`` to listen on; port 0 picks a free port (see
            ``listen_address``).
        cluster_id: the cluster's name; peers announcing another are refused.
        max_frame_bytes: largest frame accepted from the network (and sent: a message
            that encodes larger is dropped, since the peer would refuse it).
        rng: randomness for backoff jitter; seed it to replay a run. Defaults to a
            ``random.Random`` seeded by the OS.
        max_queued_messages: most messages waiting for one peer.
        handshake_timeout: seconds a connection may take to connect and handshake.
        max_concurrent_requests: most requests handled at once for one inbound connection.

    Raises:
        ValueError: an argument is invalid; the message names it.
    """

    def __init__(
        self,
        *,
        listen: str,
        cluster_id: str,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        rng: random.Random | None = None,
        max_queued_messages: int = 10_000,
        handshake_timeout: float = 5.0,
        max_concurrent_requests: int = 256,
    ) -> None:
        self._host, self._port = parse_address(listen, field_name="listen")
        if not isinstance(cluster_id, str) or not 0 < len(cluster_id) <= MAX_ID_CHARS:
            raise ValueError(
                f"cluster_id: must be a non-empty string of at most {MAX_ID_CHARS} characters"
            )
        if (
            isinstance(max_frame_bytes, bool)
            or not isinstance(max_frame_bytes, int)
            or not 1024 <= max_frame_bytes <= 2**32 - 1
        ):
            raise ValueError(
                f"max_frame_bytes: must be an integer in 1024..{2**32 - 1}, got {max_frame_bytes!r}"
            )
        if (
            isinstance(max_queued_messages, bool)
            or not isinstance(max_queued_messages, int)
            or max_queued_messages < 1
        ):
            raise ValueError(
                f"max_queued_messages: must be an integer >= 1, got {max_queued_messages!r}"
            )
        if (
            isinstance(handshake_timeout, bool)
            or not isinstance(handshake_timeout, int | float)
            or not handshake_timeout > 0
        ):
            raise ValueError(f"handshake_timeout: must be a number > 0, got {handshake_timeout!r}")
        if (
            isinstance(max_concurrent_requests, bool)
            or not isinstance(max_concurrent_requests, int)
            or max_concurrent_requests < 1
        ):
            raise ValueError(
                f"max_concurrent_requests: must be an integer >= 1, got {max_concurrent_requests!r}"
            )
        self._listen = listen
        self._cluster_id = cluster_id
        self._max_frame_bytes = max_frame_bytes
        self._rng = rng if rng is not None else random.Random()
        self._max_queued_messages = max_queued_messages
        self._handshake_timeout = float(handshake_timeout)
        self._max_concurrent_requests = max_concurrent_requests

        self._serving = False
        """Invariant: True from the moment serve() is called until it exits."""
        # Invariant: the fields below are set exactly while serve() runs (after it bound).
        self._nursery: trio.Nursery | None = None
        self._node_id: NodeId = ""
        self._handshake_frame = b""
        self._deliver: MessageHandler | None = None
        self._handle_request: RequestHandler | None = None
        self._start_request: RequestStarter | None = None
        self._peer_gone: PeerGoneHandler | None = None
        self._settle: SettleHandler | None = None
        self._rpc: RpcClient | None = None
        self._address_of: AddressBook | None = None
        self._bound_address: str | None = None
        self._peers: dict[NodeId, _Peer] = {}
        """Invariant: each peer here has exactly one sender task in ``_nursery``."""

        self._messages_sent = 0
        self._messages_received = 0
        self._messages_dropped = 0
        self._connections_rejected = 0

    @property
    def listen_address(self) -> str:
        """The ``"host:port"`` peers can connect to.

        While ``serve`` runs this is the address actually bound (so a ``listen`` port of 0
        shows the port the OS chose; with several listeners, the first one's); otherwise the
        configured ``listen``.
        """
        return self._bound_address if self._bound_address is not None else self._listen

    def statistics(self) -> TransportStatistics:
        """Return a snapshot of the transport's counters (they span every run of serve)."""
        return TransportStatistics(
            messages_sent=self._messages_sent,
            messages_received=self._messages_received,
            messages_dropped=self._messages_dropped,
            connections_rejected=self._connections_rejected,
        )

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
        """Listen for peers, deliver what they send, and run the outbound connections.

        Binds the listener, then calls ``task_status.started()``: from then on peers can
        connect, and ``send_nowait`` and ``request`` work. ``deliver`` is called from the
        connection tasks, once per message in the order each peer sent them. ``address_of``
        is asked for a peer's address each time a connection to it is opened.
        ``handle_request`` answers requests, each in its own task in its connection's
        nursery (see ``_rpc.RequestHandler``); without it every request is answered
        ``ok=False, body=b"no handler"``. ``start_request``, if given, is offered each
        request first, in the connection's reader (see ``_rpc.RequestStarter``).
        ``peer_gone`` is called from a connection's task when a connection that delivered
        messages ends other than by our closing it (``PeerGoneHandler``). ``settle`` is
        called from a connection's reader after each burst of frames it read at once.

        Never returns. When cancelled, every listener, connection and task it opened is
        closed before it exits; messages still queued are counted as dropped. An exception
        raised by ``deliver`` is a bug in the caller and propagates out of ``serve``.

        Raises:
            RuntimeError: ``serve`` is already running on this transport.
            OSError: the listen address cannot be bound.
        """
        if self._serving:
            raise RuntimeError("this TcpTransport is already serving")
        self._serving = True
        listeners: list[trio.SocketListener] = []
        try:
            # Bound outside the nursery so a bind failure raises a plain OSError.
            listeners = await trio.open_tcp_listeners(self._port, host=self._host)
            async with (
                open_rpc_client(
                    client_id=node_id,
                    cluster_id=self._cluster_id,
                    max_frame_bytes=self._max_frame_bytes,
                    rng=self._rng,
                ) as rpc,
                trio.open_nursery() as nursery,
            ):
                self._handle_request = handle_request
                self._start_request = start_request
                self._peer_gone = peer_gone
                self._settle = settle
                await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
                self._bound_address = _format_address(listeners[0].socket.getsockname())
                self._node_id = node_id
                self._handshake_frame = encode_frame(
                    Handshake(
                        protocol_version=PROTOCOL_VERSION,
                        cluster_id=self._cluster_id,
                        node_id=node_id,
                    )
                )
                self._deliver = deliver
                self._address_of = address_of
                self._rpc = rpc
                self._nursery = nursery
                logger.debug("%s: listening on %s", node_id, self._bound_address)
                task_status.started()
        finally:
            # serve_listeners closes its listeners when it exits; this covers a cancellation
            # before it took them over. Closing a socket twice is harmless.
            for listener in listeners:
                listener.socket.close()
            self._serving = False
            self._nursery = None
            self._deliver = None
            self._handle_request = None
            self._start_request = None
            self._peer_gone = None
            self._settle = None
            self._rpc = None
            self._address_of = None
            self._bound_address = None
            for peer in self._peers.values():
                self._messages_dropped += len(peer.queue)
            self._peers = {}

    def send_nowait(self, to: NodeId, message: Message) -> None:
        """Queue ``message`` for peer ``to`` and return at once; never blocks.

        The message is dropped (and counted) if ``serve`` is not running, if ``to`` has no
        address, or, when ``to``'s queue is full, the oldest queued message makes room.
        Peer ``to``'s sender task starts with the first message to it.
        """
        address_of = self._address_of
        nursery = self._nursery
        if nursery is None or address_of is None or address_of(to) is None:
            self._messages_dropped += 1
            return
        peer = self._peers.get(to)
        if peer is None:
            peer = self._peers[to] = _Peer(self._max_queued_messages)
            nursery.start_soon(self._run_sender, to, peer, name=f"tinyraft sender to {to}")
        if not peer.queue and (fd := peer.direct.claim()) is not None:
            self._write_now(to, peer, fd, message)
            return
        if len(peer.queue) == self._max_queued_messages:
            self._messages_dropped += 1
        peer.queue.append(message)
        peer.wakeup.set()

    def _write_now(self, to: NodeId, peer: _Peer, fd: int, message: Message) -> None:
        """Write ``message`` to the idle connection's socket without waiting for the sender.

        What the socket does not take at once is left to the sender, which writes it
        first. Saves a task switch per message when messages are few; under load the
        sender is busy and batches as before.
        """
        pieces = self._encode(to, message)
        if pieces is None:
            return
        frame = b"".join(pieces)
        written = write_now(fd, frame)
        if written == len(frame):
            self._messages_sent += 1
            return
        peer.unsent = frame[written:]
        peer.direct.fd = None
        peer.wakeup.set()

    async def request(
        self,
        address: str,
        method: str,
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109  (part of the API the node and clients use)
    ) -> Response:
        """Send a request to the node at ``address`` and return its response.

        Only valid while ``serve`` runs: it uses an ``RpcClient`` (client id: this node's
        id) whose connections live in ``serve``'s nursery. ``timeout`` covers connecting
        and waiting for the response. If cancelled, the request may or may not have been
        carried out; a late response is discarded.

        Raises:
            TransportError: ``serve`` is not running, or the request was not delivered or
                not answered in time (the outcome is then unknown); or ``serve`` ended
                while waiting.
            ValueError, TypeError: see ``RpcClient.request``.
        """
        rpc = self._rpc
        if rpc is None:
            raise TransportError(address, "the transport is not serving")
        return await rpc.request(address, method, body, timeout=timeout)

    # -- inbound --------------------------------------------------------------------------

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        """Serve one inbound connection: handshake, then deliver each message it carries
        and answer each request."""
        remote = _remote_address(stream)
        decoder = FrameDecoder(self._max_frame_bytes)
        async with stream:
            try:
                with trio.move_on_after(self._handshake_timeout) as scope:
                    received = await receive_handshake(stream, decoder)
                if scope.cancelled_caught:
                    raise ProtocolError(f"no handshake within {self._handshake_timeout:g} s")
                if received is None:
                    logger.debug("connection from %s closed before its handshake", remote)
                    return
                handshake, messages = received
                if handshake.protocol_version != PROTOCOL_VERSION:
                    raise ProtocolError(
                        f"protocol version {handshake.protocol_version} is not supported "
                        f"(this node speaks {PROTOCOL_VERSION})"
                    )
                if handshake.cluster_id != self._cluster_id:
                    raise ProtocolError(
                        f"node {handshake.node_id!r} belongs to cluster "
                        f"{handshake.cluster_id!r}, not {self._cluster_id!r}"
                    )
                await stream.send_all(self._handshake_frame)
            except ProtocolError as exc:
                self._connections_rejected += 1
                logger.warning("rejected connection from %s: %s", remote, exc)
                return
            except _NETWORK_ERRORS as exc:
                logger.debug("connection from %s failed: %r", remote, exc)
                return
            peer_id = handshake.node_id
            logger.debug("accepted connection from %r at %s", peer_id, remote)
            inbound = _Inbound(self._max_concurrent_requests)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    self._write_responses, stream, inbound, remote, nursery.cancel_scope
                )
                await self._read_inbound(
                    stream, decoder, messages, peer_id, remote, inbound, nursery
                )
                # Requests still being handled are abandoned: nobody reads their answers.
                nursery.cancel_scope.cancel()

    async def _read_inbound(
        self,
        stream: trio.SocketStream,
        decoder: FrameDecoder,
        messages: list[WireMessage],
        peer_id: NodeId,
        remote: str,
        inbound: _Inbound,
        nursery: trio.Nursery,
    ) -> None:
        """Deliver each message and start a task in ``nursery`` for each request, until
        the connection ends. Bad input is logged here and ends the connection."""
        settle = self._settle or _nothing_to_settle
        delivered = False
        reader = SocketReader(stream)
        try:
            while True:
                try:
                    delivered |= await self._take_burst(messages, peer_id, inbound, nursery, settle)
                finally:
                    settle()
                # A large frame (AppendEntries, a batch of requests) in as few reads as the
                # socket allows.
                data = await reader.receive_some(max(_RECEIVE_BYTES, decoder.missing_bytes))
                if not data:
                    logger.debug("%r at %s closed its connection", peer_id, remote)
                    break
                messages = decoder.feed(data)
        except ProtocolError as exc:
            self._connections_rejected += 1
            logger.warning("rejected connection from %s: %s", remote, exc)
            return
        except _NETWORK_ERRORS as exc:
            logger.debug("connection from %s failed: %r", remote, exc)
        if delivered and self._peer_gone is not None:
            self._peer_gone(peer_id)

    async def _take_burst(
        self,
        messages: list[WireMessage],
        peer_id: NodeId,
        inbound: _Inbound,
        nursery: trio.Nursery,
        settle: SettleHandler,
    ) -> bool:
        """Deliver the messages and start the requests that arrived together; whether any
        Raft message was delivered. The caller settles the burst afterwards; ``settle`` is
        called here only before waiting for a request token."""
        deliver = self._deliver
        assert deliver is not None  # connections are only accepted while serving
        starter = self._start_request
        delivered = False
        for message in messages:
            if isinstance(message, Request):
                try:
                    # Without yielding while tokens remain: the handlers of one burst of
                    # requests then all run before the replicators do, so their commands
                    # share AppendEntries.
                    inbound.requests.acquire_nowait()
                except trio.WouldBlock:
                    settle()  # what came so far, before waiting
                    await inbound.requests.acquire()
                if starter is None or not self._start(starter, peer_id, message, inbound):
                    handler = self._handle_request
                    nursery.start_soon(self._answer, handler, peer_id, message, inbound)
                continue
            if isinstance(message, Handshake):
                raise ProtocolError("a second Handshake after the first")
            if isinstance(message, Response):
                raise ProtocolError("a Response on a connection we did not open")
            self._messages_received += 1
            delivered = True
            deliver(peer_id, message)
        return delivered

    async def _answer(
        self,
        handler: RequestHandler | None,
        peer_id: NodeId,
        request: Request,
        inbound: _Inbound,
    ) -> None:
        """Run the handler for one request and queue its response for the writer."""
        try:
            frame = await answer_request(
                handler, peer_id, request, max_frame_bytes=self._max_frame_bytes, log=logger
            )
            inbound.outbox.put(frame)
        finally:
            inbound.requests.release()

    def _start(
        self, starter: RequestStarter, peer_id: NodeId, request: Request, inbound: _Inbound
    ) -> bool:
        """Offer ``request`` to ``starter``; True if it took the request (and the token)."""

        def reply(response: Response) -> None:
            inbound.outbox.put(
                encode_answer(
                    response, peer_id, request, max_frame_bytes=self._max_frame_bytes, log=logger
                )
            )
            inbound.requests.release()

        try:
            return starter(peer_id, request, reply)
        except Exception as exc:
            logger.warning(
                "request starter failed on %s request %d from %r: %s: %s",
                request.method,
                request.request_id,
                peer_id,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return False

    async def _write_responses(
        self,
        stream: trio.SocketStream,
        inbound: _Inbound,
        remote: str,
        connection_scope: trio.CancelScope,
    ) -> None:
        """The only writer of an inbound connection once its handshake is answered.

        Writes every response ready at once in one ``send_all``. If the connection fails,
        cancels ``connection_scope``, which ends the connection.
        """
        try:
            await inbound.outbox.pump(stream)
        except _NETWORK_ERRORS as exc:
            logger.debug("connection from %s failed while answering: %r", remote, exc)
            connection_scope.cancel()

    # -- outbound -------------------------------------------------------------------------

    async def _run_sender(self, to: NodeId, peer: _Peer) -> None:
        """Own the connection to ``to``: (re)connect while messages wait, and write them.

        Runs until ``serve`` is cancelled. A connection that fails is closed, what was being
        written is dropped, and a new one is tried after a backoff; messages queued meanwhile
        stay queued (newest kept).
        """
        delay = _BACKOFF_MIN
        while True:
            await peer.wait_for_messages()
            assert self._address_of is not None  # senders only run while serving
            address = self._address_of(to)
            if address is None:
                self._messages_dropped += len(peer.queue)
                peer.queue.clear()
                continue
            try:
                stream = await self._open_connection(to, address)
            except _ConnectionFailed as exc:
                self._note_failure(peer, to, address, exc)
            else:
                if peer.last_failure is not None:
                    logger.info("connected to %r at %s", to, address)
                peer.last_failure = None
                delay = _BACKOFF_MIN
                async with stream:
                    await self._write_queued(to, peer, stream, address)
            # Jitter (from the injected rng) keeps nodes that lost a peer together from
            # reconnecting in lockstep.
            await trio.sleep(delay * (0.5 + 0.5 * self._rng.random()))
            delay = min(delay * 2, _BACKOFF_MAX)

    def _note_failure(
        self, peer: _Peer, to: NodeId, address: str, failure: _ConnectionFailed
    ) -> None:
        reason = str(failure)
        if reason == peer.last_failure:
            level = logging.DEBUG
        else:
            level = logging.WARNING if failure.refused else logging.INFO
        logger.log(level, "cannot connect to %r at %s: %s", to, address, reason)
        peer.last_failure = reason

    async def _open_connection(self, to: NodeId, address: str) -> trio.SocketStream:
        """Connect to ``to`` and exchange handshakes; return the ready stream.

        Raises:
            _ConnectionFailed: the peer is unreachable, too slow, or not the peer expected.
        """
        try:
            host, port = parse_address(address, field_name=f"address of {to!r}")
        except ValueError as exc:
            raise _ConnectionFailed(str(exc)) from None
        with trio.move_on_after(self._handshake_timeout):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise _ConnectionFailed(str(exc) or repr(exc)) from None
            try:
                await stream.send_all(self._handshake_frame)
                received = await receive_handshake(stream, FrameDecoder(self._max_frame_bytes))
                if received is None:
                    raise _ConnectionFailed(
                        "the peer closed the connection during the handshake "
                        "(another cluster or protocol version? see its log)",
                        refused=True,
                    )
                handshake, messages = received
                if handshake.protocol_version != PROTOCOL_VERSION:
                    raise _ConnectionFailed(
                        f"the peer speaks protocol version {handshake.protocol_version}, "
                        f"not {PROTOCOL_VERSION}",
                        refused=True,
                    )
                if handshake.cluster_id != self._cluster_id:
                    raise _ConnectionFailed(
                        f"the peer belongs to cluster {handshake.cluster_id!r}, "
                        f"not {self._cluster_id!r}",
                        refused=True,
                    )
                if handshake.node_id != to:
                    raise _ConnectionFailed(
                        f"the peer says it is node {handshake.node_id!r}", refused=True
                    )
                if messages:
                    raise _ConnectionFailed(
                        "the peer sent messages on our outbound connection", refused=True
                    )
                return stream
            except ProtocolError as exc:
                await trio.aclose_forcefully(stream)
                raise _ConnectionFailed(f"bad handshake: {exc}", refused=True) from None
            except _NETWORK_ERRORS as exc:
                await trio.aclose_forcefully(stream)
                raise _ConnectionFailed(str(exc) or repr(exc)) from None
            except BaseException:
                # Includes _ConnectionFailed and Cancelled; aclose_forcefully never blocks.
                await trio.aclose_forcefully(stream)
                raise
        raise _ConnectionFailed(f"no handshake within {self._handshake_timeout:g} s")

    async def _write_queued(
        self, to: NodeId, peer: _Peer, stream: trio.SocketStream, address: str
    ) -> None:
        """Write ``peer``'s queue to ``stream`` until the connection fails.

        Each wakeup drains the queue into one ``send_all``, so a burst of messages costs one
        system call rather than one each. A watcher task notices at once when the peer
        closes the connection (it never writes to it after its handshake), so a restarted
        peer is reconnected before the next message is lost on a dead socket.
        """
        in_flight = 0
        fd = stream.socket.fileno()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_outbound, to, stream, address, nursery.cancel_scope)
                try:
                    while True:
                        if not peer.queue and not peer.unsent:
                            peer.direct.fd = fd
                            try:
                                await peer.wait_for_messages()
                            finally:
                                peer.direct.fd = None
                        data, in_flight = self._take_batch(to, peer)
                        if data:
                            await stream.send_all(data)
                            self._messages_sent += in_flight
                            in_flight = 0
                except _NETWORK_ERRORS as exc:
                    logger.info("lost connection to %r at %s: %r", to, address, exc)
                    nursery.cancel_scope.cancel()
        finally:
            peer.direct.fd = None
            if peer.unsent:
                peer.unsent = b""
                in_flight += 1
            self._messages_dropped += in_flight

    def _take_batch(self, to: NodeId, peer: _Peer) -> tuple[bytes, int]:
        """Encode queued messages (up to about ``MAX_WRITE_BYTES``) into one buffer, after
        the unsent tail of a frame ``send_nowait`` began; and how many messages it ends."""
        frames = [peer.unsent] if peer.unsent else []
        count = len(frames)
        peer.unsent = b""
        size = len(frames[0]) if frames else 0
        queue = peer.queue
        while queue and size < MAX_WRITE_BYTES:
            pieces = self._encode(to, queue.popleft())
            if pieces is not None:
                frames += pieces
                size += sum(map(len, pieces))
                count += 1
        return b"".join(frames), count

    def _encode(self, to: NodeId, message: Message) -> tuple[bytes, ...] | None:
        """``message``'s frame in pieces (``encode_frame_pieces``), or None (dropped,
        counted and logged) if it is too large."""
        pieces = encode_frame_pieces(message)
        size = sum(map(len, pieces))
        if size > self._max_frame_bytes + 4:
            self._messages_dropped += 1
            logger.warning(
                "dropped a %s to %r: %d bytes exceed max_frame_bytes %d",
                type(message).__name__,
                to,
                size - 4,
                self._max_frame_bytes,
            )
            return None
        return pieces

    async def _watch_outbound(
        self, to: NodeId, stream: trio.SocketStream, address: str, scope: trio.CancelScope
    ) -> None:
        """Cancel ``scope`` once the peer closes (or writes to) our outbound connection."""
        try:
            data = await stream.receive_some(_RECEIVE_BYTES)
        except _NETWORK_ERRORS as exc:
            logger.info("lost connection to %r at %s: %r", to, address, exc)
        else:
            if data:
                logger.warning(
                    "closing connection to %r at %s: it sent data after its handshake",
                    to,
                    address,
                )
            else:
                logger.info("%r at %s closed our connection", to, address)
        scope.cancel()
