"""A client program's view of a cluster: ``connect(addresses)`` yields a ``RaftClient``.

The client talks to the nodes' request/response channel (``_rpc``). Any node accepts a
command (followers forward it to their leader); the client waits for a leader, follows
leader hints, and retries on connection loss and leader change with capped, jittered
exponential backoff, all within one overall timeout per call.

Exactly once (dissertation §6.3): every command carries ``(client_id, sequence)``; a retry
keeps its sequence, and the cluster's session table answers a repeated sequence with the
first result instead of applying it again. So the client may retry a command whose first
attempt might have been applied, and must: once any attempt may have reached a leader, only
a definite answer (or the deadline, as ``OutcomeUnknownError``) ends the call.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import msgpack
import trio

from ._config import parse_address
from ._core._types import Role
from ._exceptions import (
    ClusterUnavailableError,
    CommandFailedError,
    LeadershipTransferError,
    MembershipChangeError,
    OutcomeUnknownError,
    RaftError,
)
from ._rpc import DEFAULT_MAX_FRAME_BYTES, Response, TransportError, open_rpc_client
from ._wire import packb

__all__ = ["ClusterMemberStatus", "ClusterNodeStatus", "RaftClient", "connect"]

_unpackb = msgpack.unpackb

_BACKOFF_BASE = 0.01
_BACKOFF_CAP = 0.5
_MIN_ATTEMPT_TIMEOUT = 1.0
_STATUS_TIMEOUT = 2.0

_NOT_SENT_REASONS = (
    # TransportError reasons that mean the request never left this client (see _rpc.py and
    # testing/_network.py): the node cannot have carried it out.
    "connection refused",
    "cannot connect",
    "connection lost during the handshake",
    "bad handshake",
    "the node closed the connection during the handshake",
    "the node speaks protocol version",
    "the node belongs to cluster",
    "the node sent a ",
    "no handshake before",
    "the RPC client is not running",
    "the transport is not serving",
)


def _never_sent(exc: TransportError) -> bool:
    """Whether a TransportError certainly means the node never received the request.

    Anything not recognised counts as possibly received: the safe side for exactly-once.
    """
    return exc.reason.startswith(_NOT_SENT_REASONS)


class _Requester(Protocol):
    async def request(
        self,
        address: str,
        method: str,
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109  (RpcClient.request's signature)
    ) -> Response: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterMemberStatus:
    """One member of the cluster as a node reported it."""

    id: str
    address: str | None
    voter: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterNodeStatus:
    """What one node answered to ``RaftClient.status()``."""

    address: str
    """The address the client asked."""
    id: str
    role: Role
    term: int
    leader_id: str | None
    commit_index: int
    last_applied: int
    last_log_index: int
    snapshot_index: int
    storage_error: str | None
    members: tuple[ClusterMemberStatus, ...]


class _Attempts:
    """One call's retry state: where to go next, how long to wait, what happened so far."""

    __slots__ = (
        "_failures",
        "_hinted",
        "_next",
        "attempt_timeout",
        "client",
        "deadline",
        "last_reason",
        "maybe_applied",
        "seconds",
        "tried",
        "unknown_reason",
        "what",
    )

    def __init__(
        self,
        client: RaftClient,
        what: str,
        seconds: float,
        deadline: float,
        first_address: str | None = None,
    ) -> None:
        """``first_address``: where the call's first attempt went, if it was made before
        this was (``apply`` makes its first attempt without one, and makes this only if
        that attempt settled nothing)."""
        self.client = client
        self.what = what
        self.seconds = seconds
        self.deadline = deadline
        self.attempt_timeout = _attempt_timeout(seconds)
        self.tried: list[str] = [] if first_address is None else [first_address]
        self.last_reason = "no attempt was made"
        self.maybe_applied = False
        """Invariant: True once any attempt may have reached a node that could carry it out."""
        self.unknown_reason = ""
        self._failures = 0
        self._next: str | None = None if first_address is not None else client._leader_address
        self._hinted = False

    @classmethod
    def start(cls, client: RaftClient, what: str, timeout: float | None) -> _Attempts:
        seconds = client._call_seconds(timeout)
        return cls(client, what, seconds, client._now() + seconds)

    def address(self) -> str:
        address = self._next if self._next is not None else self.client._next_address()
        self._next = None
        if address not in self.tried:
            self.tried.append(address)
        return address

    def remaining(self) -> float:
        return self.deadline - self.client._now()

    def refused(self, address: str, reason: str) -> None:
        """This attempt was certainly not carried out."""
        self.last_reason = f"{address}: {reason}"
        self.client._forget_leader(address)

    def unknown(self, address: str, reason: str) -> None:
        """This attempt may have been carried out."""
        self.maybe_applied = True
        self.unknown_reason = self.last_reason = f"{address}: {reason}"
        self.client._forget_leader(address)

    def hint(self, address: str, leader_address: str | None) -> None:
        """Go to the leader's address next (once in a row without backing off)."""
        if leader_address and leader_address != address:
            self.client._leader_address = leader_address
            self._next = leader_address

    async def backoff(self) -> bool:
        """Sleep before the next attempt; False if the deadline leaves no time for one."""
        if self._next is not None and not self._hinted:
            # Follow a fresh leader hint at once; a second hop in a row backs off (no ping-pong).
            self._hinted = True
            return self.remaining() > 0
        self._hinted = False
        delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**self._failures)
        self._failures += 1
        delay = self.client._rng.uniform(delay / 2, delay)
        if self.remaining() <= delay:
            return False
        await trio.sleep(delay)
        return True

    def unavailable(self) -> ClusterUnavailableError:
        tried = tuple(self.tried)
        return ClusterUnavailableError(
            f"{self.what}: no node accepted it within {self.seconds:g} s "
            f"(tried {', '.join(tried) or 'nothing'}; last: {self.last_reason})",
            addresses=tried,
            reason=self.last_reason,
        )

    def outcome_unknown(self) -> OutcomeUnknownError:
        return OutcomeUnknownError(
            f"{self.what}: the outcome is unknown after {self.seconds:g} s; it may or may not "
            f"have been applied (last: {self.last_reason}; unknown since: {self.unknown_reason})",
            reason=self.unknown_reason,
        )

    def give_up(self) -> RaftError:
        return self.outcome_unknown() if self.maybe_applied else self.unavailable()


def _attempt_timeout(seconds: float) -> float:
    """How long one attempt of a call of ``seconds`` may wait: a third of the call (at least
    a second), so a node that never answers leaves time to try the others."""
    return min(seconds, max(_MIN_ATTEMPT_TIMEOUT, seconds / 3))


def _check_timeout(timeout: object) -> float:
    if (type(timeout) is float or type(timeout) is int) and timeout > 0:
        return float(timeout)  # the common case, checked first: a positive number (not NaN)
    # NaN fails "> 0" here too, so it needs no test of its own.
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout: must be a number > 0, got {timeout!r}")
    return float(timeout)


def _decode_answer(response: Response) -> list[object]:
    """The node's answer as a msgpack array: ``[kind, ...]``.

    Nodes send "not_leader", "unknown" and "failed" answers with ``ok=False`` and a msgpack
    body; a plain-text ``ok=False`` body comes from the request channel itself (no handler,
    unknown method, a handler that raised). The latter becomes ``["failed", text]``, except
    an internal error, which may have struck after the command was applied: ``["unknown",
    text]``.

    Raises:
        ValueError: an ``ok=True`` body that is not a msgpack array starting with a string.
    """
    try:
        answer = _unpackb(response.body)
    except (ValueError, msgpack.UnpackException):
        if response.ok:
            raise
        answer = None
    if isinstance(answer, list) and answer and isinstance(answer[0], str):
        return answer
    if response.ok:
        raise ValueError(f"malformed answer {answer!r}")
    text = response.body.decode(errors="replace")
    return ["unknown" if text.startswith("internal error") else "failed", text]


def _text(value: object) -> str:
    return "" if value is None else str(value)


class RaftClient:
    """Sends commands, queries and membership changes to a cluster. Get one from ``connect``.

    Safe to share between tasks: concurrent ``apply()`` calls get distinct sequence numbers
    and may be in flight together.

    Attributes:
        client_id: this client's session id; the cluster remembers, per client id, which
            sequence numbers it already applied.
    """

    def __init__(
        self,
        rpc: _Requester,
        addresses: Sequence[str],
        *,
        client_id: str,
        timeout: float,
        rng: random.Random,
    ) -> None:
        self._rpc = rpc
        self._addresses = list(addresses)
        self.client_id = client_id
        self._timeout = timeout
        self._rng = rng
        self._next_sequence = 1
        """Invariant: every sequence below this was handed to exactly one apply() call."""
        self._outstanding: set[int] = set()
        """Invariant: the sequences of the apply() calls still running."""
        self._outstanding_order: deque[int] = deque()
        """Every sequence of ``_outstanding`` and some finished ones, in increasing order:
        the lowest still running is found without a pass over all of them."""
        self._round_robin = rng.randrange(len(self._addresses))
        self._now: Callable[[], float] = trio.current_time
        """``trio.current_time``, or (made in a run, as by ``connect``) that run's clock's own
        method: the same value for one Python call instead of three, twice per call."""
        with contextlib.suppress(RuntimeError):  # outside a run: keep trio.current_time
            self._now = trio.lowlevel.current_clock().current_time
        self._leader_address: str | None = None
        """The last address known to lead (or to have answered a command); tried first."""

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses given to ``connect``."""
        return tuple(self._addresses)

    # -- where to send ------------------------------------------------------------------

    def _call_seconds(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else _check_timeout(timeout)

    def _next_address(self) -> str:
        address = self._addresses[self._round_robin % len(self._addresses)]
        self._round_robin += 1
        return address

    def _forget_leader(self, address: str) -> None:
        if self._leader_address == address:
            self._leader_address = None

    # -- public API ---------------------------------------------------------------------

    async def apply(self, command: bytes, *, timeout: float | None = None) -> object:  # noqa: ASYNC109
        """Have the cluster apply ``command`` exactly once and return the state machine's result.

        Waits for a leader, follows leader hints and retries (with the same sequence number,
        so the command never applies twice) until a definite answer or the deadline.

        Args:
            command: the command, as the state machine expects it.
            timeout: seconds for the whole call, retries included; defaults to the client's.

        If cancelled, the command may or may not have been applied (it keeps its sequence
        number only for this call: the client does not retry it later).

        Raises:
            CommandFailedError: the state machine raised; the command WAS applied.
            OutcomeUnknownError: an attempt may have reached a leader and no definite answer
                came back before the deadline; it may or may not have been applied.
            ClusterUnavailableError: no node accepted it in time; it was certainly not applied.
            TypeError: ``command`` is not bytes.
            ValueError: ``timeout`` is not > 0.
        """
        if type(command) is not bytes:
            raise TypeError(f"command: expected bytes, got {type(command).__name__}")
        seconds = self._call_seconds(timeout)
        deadline = self._now() + seconds
        sequence = self._next_sequence
        self._next_sequence += 1
        self._outstanding.add(sequence)
        self._outstanding_order.append(sequence)
        try:
            # The lowest sequence still waiting lets the cluster forget older results.
            first_outstanding = self._first_outstanding()
            body = packb([self.client_id, sequence, command, first_outstanding])
            # The first attempt is made here rather than in _run, and the retry state made
            # only if it settles nothing: per call, in the common case of one attempt, a
            # coroutine and an object less to create, pass through and tear down.
            address = self._leader_address or self._next_address()
            try:
                reply: Response | TransportError = await self._rpc.request(
                    address, "submit", body, timeout=_attempt_timeout(seconds)
                )
            except TransportError as exc:
                reply = exc
            done, result = self._result_of(address, reply)
            if done:
                return result
            attempts = _Attempts(self, "apply", seconds, deadline, address)
            self._note(attempts, address, reply)
            return await self._run(attempts, "submit", body, retry=True)
        finally:
            self._outstanding.discard(sequence)

    def _first_outstanding(self) -> int:
        """The lowest sequence of an apply() call still running (there is one: the caller's)."""
        order, outstanding = self._outstanding_order, self._outstanding
        while order[0] not in outstanding:
            order.popleft()
        if len(order) > 2 * len(outstanding) + 64:
            # A long call at the front keeps the finished ones behind it: drop them.
            self._outstanding_order = order = deque(s for s in order if s in outstanding)
        return order[0]

    async def query(
        self,
        query: bytes,
        *,
        stale: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> object:
        """Run a read-only ``query`` on the state machine and return its answer.

        Linearizable (it reflects every command that completed before the call) unless
        ``stale`` is true: then whichever node answers does so from its own state, which may
        lag. A query changes nothing, so it is retried freely until the deadline.

        If cancelled, nothing happened that matters: a query has no effect.

        Raises:
            CommandFailedError: the state machine's query raised.
            ClusterUnavailableError: no node answered in time (including "unknown" answers).
            TypeError: ``query`` is not bytes.
            ValueError: ``timeout`` is not > 0.
        """
        if type(query) is not bytes:
            raise TypeError(f"query: expected bytes, got {type(query).__name__}")
        attempts = _Attempts.start(self, "query", timeout)
        body: bytes = packb([query, bool(stale)])
        return await self._run(attempts, "query", body, read_only=True)

    async def status(self) -> list[ClusterNodeStatus]:
        """Ask every address for its node's status, concurrently; one entry per answer.

        Nodes that do not answer within the client's timeout (at most a few seconds) are
        left out; the list keeps the order of the addresses. An empty list means no node
        answered.

        If cancelled, nothing happened that matters: status requests have no effect.
        """
        results: dict[str, ClusterNodeStatus] = {}
        timeout = min(self._timeout, _STATUS_TIMEOUT)

        async def ask(address: str) -> None:
            try:
                response = await self._rpc.request(address, "status", b"", timeout=timeout)
                if response.ok:
                    results[address] = _parse_status(address, response.body)
            except (TransportError, ValueError, TypeError, KeyError, msgpack.UnpackException):
                pass

        async with trio.open_nursery() as nursery:
            for address in dict.fromkeys(self._addresses):
                nursery.start_soon(ask, address)
        return [results[a] for a in dict.fromkeys(self._addresses) if a in results]

    async def add_member(
        self,
        node_id: str,
        address: str,
        *,
        voter: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Add a node (or change an existing member's address or vote) through the leader.

        If cancelled, the change may or may not have been made.

        Raises:
            MembershipChangeError: the leader refused the change; the membership is unchanged.
            OutcomeUnknownError: the change may or may not have been made (see ``apply``).
            ClusterUnavailableError: no node accepted it in time; nothing changed.
        """
        parse_address(address, field_name="address")
        body: bytes = msgpack.packb(["add", node_id, address, bool(voter)])
        attempts = _Attempts.start(self, f"add member {node_id!r}", timeout)
        await self._run(attempts, "members", body, failed=MembershipChangeError)

    async def remove_member(self, node_id: str, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Remove a member through the leader.

        If cancelled, the change may or may not have been made.

        Raises:
            MembershipChangeError: the leader refused the change; the membership is unchanged.
            OutcomeUnknownError: the change may or may not have been made (see ``apply``).
            ClusterUnavailableError: no node accepted it in time; nothing changed.
        """
        body: bytes = msgpack.packb(["remove", node_id])
        attempts = _Attempts.start(self, f"remove member {node_id!r}", timeout)
        await self._run(attempts, "members", body, failed=MembershipChangeError)

    async def transfer_leadership(
        self,
        to: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Ask the leader to hand leadership to ``to`` (None: the most up-to-date voter).

        Returns the id of the new leader. If cancelled, leadership may or may not move.

        Raises:
            LeadershipTransferError: the leader could not hand over; it still leads.
            OutcomeUnknownError: leadership may or may not have moved.
            ClusterUnavailableError: no node accepted the request in time.
        """
        body: bytes = msgpack.packb(["transfer", to])
        attempts = _Attempts.start(self, "transfer leadership", timeout)
        result = await self._run(attempts, "members", body, failed=LeadershipTransferError)
        return _text(result)

    # -- the retry loop -----------------------------------------------------------------

    async def _run(
        self,
        attempts: _Attempts,
        method: str,
        body: bytes,
        *,
        read_only: bool = False,
        failed: type[RaftError] | None = None,
        retry: bool = False,
    ) -> object:
        """Send until a definite answer; ``failed`` turns a "failed" answer into that error.

        ``retry``: the first attempt was made already (and settled nothing): back off first.
        """
        while True:
            if retry and not await attempts.backoff():
                raise attempts.give_up()
            retry = True
            remaining = attempts.remaining()
            if remaining <= 0:
                raise attempts.give_up()
            address = attempts.address()
            try:
                reply: Response | TransportError = await self._rpc.request(
                    address, method, body, timeout=min(remaining, attempts.attempt_timeout)
                )
            except TransportError as exc:
                reply = exc
            done, result = self._result_of(address, reply)
            if done:
                return result
            self._note(attempts, address, reply, read_only, failed)

    def _result_of(self, address: str, reply: Response | TransportError) -> tuple[bool, object]:
        """``(True, result)`` if ``reply`` is a definite "ok" answer; else ``(False, None)``,
        and ``_note`` makes sense of it."""
        if type(reply) is not Response or not reply.ok:
            return False, None
        try:
            answer = _unpackb(reply.body)
        except Exception:
            return False, None
        if type(answer) is not list or len(answer) < 2 or answer[0] != "ok":
            return False, None
        # A follower that forwarded the command names the leader after the result.
        hint = answer[2] if len(answer) > 2 else None
        self._leader_address = hint if type(hint) is str and hint else address
        return True, answer[1]

    def _note(
        self,
        attempts: _Attempts,
        address: str,
        reply: Response | TransportError,
        read_only: bool = False,
        failed: type[RaftError] | None = None,
    ) -> None:
        """Take note of a reply that is not a definite "ok" answer, for the next attempt;
        raise the error that ends the call, if it is one."""
        if isinstance(reply, TransportError):
            if read_only or _never_sent(reply):
                attempts.refused(address, reply.reason)
            else:
                attempts.unknown(address, reply.reason)
            return
        try:
            answer = _decode_answer(reply)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            if read_only:
                attempts.refused(address, f"bad answer: {exc}")
            else:
                attempts.unknown(address, f"bad answer: {exc}")
            return
        kind = answer[0]
        if kind == "error" and len(answer) >= 3:
            self._leader_address = address
            raise CommandFailedError(_text(answer[1]), _text(answer[2]))
        if kind == "not_leader":
            leader_id = answer[1] if len(answer) > 1 else None
            leader_address = answer[2] if len(answer) > 2 else None
            attempts.refused(
                address,
                "not the leader; no leader known"
                if leader_id is None
                else f"not the leader; the leader is {leader_id!r}",
            )
            if isinstance(leader_address, str):
                attempts.hint(address, leader_address)
        elif kind == "failed":
            reason = _text(answer[1] if len(answer) > 1 else "failed")
            if failed is not None:
                # A membership change has no session: a refusal after an attempt that may
                # have gone through (e.g. "already a member") says nothing about that attempt.
                if attempts.maybe_applied:
                    attempts.last_reason = f"{address}: {reason}"
                    raise attempts.outcome_unknown()
                raise failed(reason)
            attempts.refused(address, reason)
        elif kind == "unknown" and not read_only:
            attempts.unknown(address, _text(answer[1] if len(answer) > 1 else ""))
        else:
            attempts.refused(address, f"answered {answer!r}")


def _parse_status(address: str, body: bytes) -> ClusterNodeStatus:
    data = msgpack.unpackb(body, raw=False)
    return ClusterNodeStatus(
        address=address,
        id=str(data["id"]),
        role=Role(data["role"]),
        term=int(data["term"]),
        leader_id=None if data.get("leader_id") is None else str(data["leader_id"]),
        commit_index=int(data["commit_index"]),
        last_applied=int(data["last_applied"]),
        last_log_index=int(data.get("last_log_index", 0)),
        snapshot_index=int(data.get("snapshot_index", 0)),
        storage_error=None if data.get("storage_error") is None else str(data["storage_error"]),
        members=tuple(
            ClusterMemberStatus(
                id=str(m["id"]),
                address=None if m.get("address") is None else str(m["address"]),
                voter=bool(m.get("voter", True)),
            )
            for m in data.get("members", [])
        ),
    )


def _parse_addresses(addresses: Sequence[str] | str) -> list[str]:
    if isinstance(addresses, str):
        addresses = [a.strip() for a in addresses.split(",") if a.strip()]
    result = list(dict.fromkeys(addresses))
    if not result:
        raise ValueError("addresses: at least one node address is needed")
    for address in result:
        parse_address(address, field_name="addresses")
    return result


@asynccontextmanager
async def connect(
    addresses: Sequence[str] | str,
    *,
    cluster_id: str = "tinyraft",
    client_id: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109  (the calls' default, not this block's)
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    rng: random.Random | None = None,
    _rpc: _Requester | None = None,
) -> AsyncIterator[RaftClient]:
    """Open a client to the cluster whose nodes listen at ``addresses``; close it on exit.

    Connections are opened lazily, on first use, so this succeeds even while no node is up
    (calls then wait for one, within their timeout).

    Args:
        addresses: some or all nodes' ``"host:port"`` addresses, as a sequence or one
            comma-separated string. Any node will do; the client finds the leader.
        cluster_id: the cluster's name; nodes of another cluster are refused.
        client_id: this client's session id; it must be unique among the cluster's clients
            (reusing one across runs without continuing its sequence numbers makes the
            cluster answer new commands with old results). Default: ``client-<random hex>``.
        timeout: the default overall timeout, in seconds, of each call.
        max_frame_bytes: largest frame sent or accepted.
        rng: the source of backoff jitter and of the default client id; seed it to replay.

    Raises:
        ValueError: an argument is invalid; the message names it.
    """
    address_list = _parse_addresses(addresses)
    seconds = _check_timeout(timeout)
    rng = rng if rng is not None else random.Random()
    if client_id is None:
        client_id = f"client-{rng.getrandbits(64):016x}"
    if not isinstance(client_id, str) or not client_id:
        raise ValueError(f"client_id: must be a non-empty string, got {client_id!r}")
    if _rpc is not None:
        yield RaftClient(_rpc, address_list, client_id=client_id, timeout=seconds, rng=rng)
        return
    async with open_rpc_client(
        client_id=client_id, cluster_id=cluster_id, max_frame_bytes=max_frame_bytes, rng=rng
    ) as rpc:
        yield RaftClient(rpc, address_list, client_id=client_id, timeout=seconds, rng=rng)
