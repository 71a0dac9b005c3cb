"""How a node answers commands: the callers waiting for their entries, and the answers' bodies.

A command's answer is a msgpack array: ``["ok", result]``, ``["error", type, message]`` (the
state machine raised: applied), ``["not_leader", leader_id, address]`` and ``["failed",
reason]`` (certainly not applied), or ``["unknown", reason]`` (may or may not be applied).
The response's ``ok`` is true for the first two: the command ran. A follower that forwarded
the command adds the leader's address to an ``ok``: ``["ok", result, address]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import msgpack
import trio

from ._batching import BATCH_METHOD_OF, decode_batch_answer, encode_batch_answer
from ._core._types import Term
from ._exceptions import LeadershipLostError, NodeClosedError
from ._rpc import Request, Response
from ._sessions import encode_command
from ._wire import packb

_unpackb = msgpack.unpackb

__all__ = [
    "BatchEntryReply",
    "BatchPart",
    "BatchReply",
    "BatchResults",
    "Outcome",
    "Reply",
    "Waiter",
    "answer",
    "answer_pair",
    "apply_answer",
    "apply_outcome",
    "error_answer",
    "leader_clock_ms",
    "respond",
    "session_entry_data",
    "submit_answer",
    "submit_outcome",
    "with_leader_hint",
]


class Waiter:
    """A caller of ``apply`` waiting for its entry to be applied."""

    __slots__ = ("done", "error", "result", "term")

    def __init__(self, term: Term) -> None:
        self.term = term
        self.done = trio.Event()
        self.result: object = None
        self.error: BaseException | None = None

    def resolve(self, result: object = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


Outcome = Callable[[object, "BaseException | None"], tuple[bool, bytes]]
"""Turns an entry's outcome (result or error) into an answer's ``(ok, body)``."""


class Reply:
    """A client's request waiting, without a task, for its entry to be applied."""

    __slots__ = ("outcome", "reply", "request", "term")

    def __init__(
        self,
        term: Term,
        request: Request,
        outcome: Outcome,
        reply: Callable[[Response], None],
    ) -> None:
        self.term = term
        self.request = request
        self.outcome = outcome
        self.reply = reply

    def resolve(self, result: object = None, error: BaseException | None = None) -> None:
        self.reply(respond(self.request, self.outcome(result, error)))


class BatchReply:
    """A batch request (see ``_batching``) waiting, without a task, for all its answers."""

    __slots__ = ("bodies", "oks", "remaining", "reply", "request_id")

    def __init__(self, request_id: int, count: int, reply: Callable[[Response], None]) -> None:
        self.request_id = request_id
        self.oks = [False] * count
        self.bodies = [b""] * count
        self.remaining = count
        self.reply = reply

    def send(self) -> None:
        """Answer the batch: every command's answer is in."""
        body = encode_batch_answer(self.oks, self.bodies)
        self.reply(Response(request_id=self.request_id, ok=True, body=body))


class BatchPart:
    """One command of a batch request, waiting for its entry to be applied."""

    __slots__ = ("batch", "outcome", "position", "term")

    def __init__(self, term: Term, batch: BatchReply, position: int, outcome: Outcome) -> None:
        self.term = term
        self.batch = batch
        self.position = position
        self.outcome = outcome

    def resolve(self, result: object = None, error: BaseException | None = None) -> None:
        # The batch's bookkeeping done here, not in a BatchReply method: one call less for
        # each command of a busy leader's batches.
        batch, position = self.batch, self.position
        batch.oks[position], batch.bodies[position] = self.outcome(result, error)
        batch.remaining -= 1
        if batch.remaining == 0:
            batch.send()


class BatchResults:
    """What applying a batch entry gave: each command's result, in order, and the errors
    raised by the commands that raised (by position). ``failure``: why nothing was applied."""

    __slots__ = ("errors", "failure", "results")

    def __init__(
        self, results: list[object], errors: dict[int, BaseException], failure: str | None = None
    ) -> None:
        self.results = results
        self.errors = errors
        self.failure = failure


class BatchEntryReply:
    """A batch of "apply" or "submit" requests proposed as one entry (``EntryKind.BATCH``,
    ``SESSION_BATCH``), waiting, without a task, for it to be applied."""

    __slots__ = ("commands", "data", "outcome", "reply", "request_id", "term")

    def __init__(
        self,
        term: Term,
        request_id: int,
        data: bytes,
        commands: list[bytes],
        outcome: Outcome,
        reply: Callable[[Response], None],
    ) -> None:
        self.term = term
        self.request_id = request_id
        self.data = data
        """The entry's data (the very object): only that entry may use ``commands``."""
        self.commands = commands
        """``data`` decoded, kept so that the leader applying it need not decode it again."""
        self.outcome = outcome
        """How each command's outcome becomes its answer (``apply_outcome``, ...)."""
        self.reply = reply

    def resolve(self, result: object = None, error: BaseException | None = None) -> None:
        count = len(self.commands)
        outcome = self.outcome
        if error is not None:  # not applied here: every command has the same answer
            ok, body = outcome(None, error)
            oks, bodies = [ok] * count, [body] * count
        else:
            assert isinstance(result, BatchResults)  # what applying a batch entry gives
            if result.failure is not None:
                ok, body = answer_pair(["failed", result.failure])
                oks, bodies = [ok] * count, [body] * count
            elif (
                outcome is apply_outcome
                and not result.errors
                and result.results.count(None) == count
            ):
                oks, bodies = [True] * count, [_OK_NONE[1]] * count  # the common answer
            else:
                errors = result.errors
                pairs = [outcome(value, errors.get(i)) for i, value in enumerate(result.results)]
                oks, bodies = [ok for ok, _ in pairs], [body for _, body in pairs]
        answer = encode_batch_answer(oks, bodies)
        self.reply(Response(request_id=self.request_id, ok=True, body=answer))


def error_answer(request: Request, message: str) -> Response:
    """A refusal of the request itself (malformed, unknown method): plain text, not ok."""
    return Response(request_id=request.request_id, ok=False, body=message.encode())


def apply_outcome(result: object, error: BaseException | None) -> tuple[bool, bytes]:
    """The answer to an "apply" whose entry was applied (or whose outcome became unknown)."""
    if error is None and result is None:
        return _OK_NONE  # the common answer first
    if isinstance(error, LeadershipLostError | NodeClosedError):
        return answer_pair(["unknown", str(error)])
    if error is not None:  # the state machine raised: applied, and this is its result
        return answer_pair(["error", type(error).__name__, str(error)])
    if result is None:
        return _OK_NONE
    try:
        return answer_pair(["ok", result])
    except TypeError:
        return answer_pair(["error", "TypeError", "the result is not msgpack-encodable"])


def apply_answer(request: Request, result: object, error: BaseException | None) -> Response:
    return respond(request, apply_outcome(result, error))


def session_entry_data(body: bytes, time_ms: int) -> bytes | None:
    """The session entry for a "submit" request's body, or None if the body is malformed.

    The body is msgpack ``[client_id, sequence, command, first_outstanding?]``; the entry
    also carries the leader's clock (``time_ms``, see ``leader_clock_ms``), by which sessions
    expire. The commands of one batch share one reading of the clock.
    """
    # The leader runs this for every command a session client sends.
    try:
        fields = _unpackb(body)
    except Exception:
        return None
    if type(fields) is not list or len(fields) < 3:
        return None
    client_id, sequence, command = fields[0], fields[1], fields[2]
    first_outstanding = fields[3] if len(fields) > 3 else 0
    if (
        type(client_id) is not str
        or type(command) is not bytes
        or type(sequence) is not int
        or sequence < 1
        or type(first_outstanding) is not int
        or first_outstanding < 0
    ):
        return None
    return encode_command(client_id, sequence, first_outstanding, time_ms, command)


def leader_clock_ms(clock: Callable[[], float]) -> int:
    """The leader's clock as session entries carry it: ``clock()`` seconds (the node's wall
    clock, or a simulation's), in milliseconds."""
    return int(clock() * 1000)


def submit_outcome(outcome: object, error: BaseException | None) -> tuple[bool, bytes]:
    """The answer to a "submit" whose session entry was applied (or became unknown)."""
    if error is not None:  # leadership lost, or the node closed
        return answer_pair(["unknown", str(error)])
    kind, value = cast("tuple[str, Any]", outcome)
    if kind == "ok":
        return _OK_NONE if value is None else answer_pair(["ok", value])
    return answer_pair(["error", *value])


def submit_answer(request: Request, outcome: object, error: BaseException | None) -> Response:
    return respond(request, submit_outcome(outcome, error))


def answer(request: Request, value: list[object]) -> Response:
    return respond(request, answer_pair(value))


def respond(request: Request, pair: tuple[bool, bytes]) -> Response:
    """The response to ``request`` carrying an answer's ``(ok, body)``."""
    ok, body = pair
    return Response(request_id=request.request_id, ok=ok, body=body)


_HINTED_METHODS = frozenset({"apply", "submit"})
_HINTED_BATCH_METHODS = frozenset(BATCH_METHOD_OF[method] for method in _HINTED_METHODS)
_OK_PAIR_HEAD = b"\x92" + msgpack.packb("ok")
"""How an ``["ok", result]`` answer starts: a two-item array's header (fixarray), then "ok"."""


def with_leader_hint(method: str, body: bytes, leader_address: str) -> bytes:
    """The body of the leader's ``ok`` answer to a request this follower forwarded, with the
    leader's address after each command's ``["ok", result]``.

    A client that reads it (``connect()``) then writes to the leader itself, where it would
    otherwise, having had its answer from this node, keep going through it: a second hop
    for every command. The result's bytes are kept as the leader sent them; a body that is
    not what this expects goes back as it came.
    """
    hint = packb(leader_address)
    if method in _HINTED_METHODS:
        return _hinted(body, hint)
    if method not in _HINTED_BATCH_METHODS:
        return body
    answers = decode_batch_answer(body)
    if answers is None:
        return body
    oks, bodies = answers
    return encode_batch_answer(oks, [_hinted(item, hint) for item in bodies])


def _hinted(body: bytes, hint: bytes) -> bytes:
    if not body.startswith(_OK_PAIR_HEAD):
        return body
    # The array's header byte says three items now; the result stays byte for byte.
    return b"\x93" + body[1:] + hint


def answer_pair(value: list[object]) -> tuple[bool, bytes]:
    """An answer's ``(ok, body)``: ok for a command that ran ("ok", "error"), not otherwise."""
    return value[0] in ("ok", "error"), packb(value)


_OK_NONE = answer_pair(["ok", None])
