"""The wire codec: Raft messages to msgpack frames and back, sans-IO (bytes in, values out).

A frame is a 4-byte big-endian unsigned length followed by exactly one msgpack value: an array
whose first element is the message type code, then the message's fields in declaration order::

    0 Handshake              [0, protocol_version, cluster_id, node_id]
    1 RequestVote            [1, term, candidate_id, last_log_index, last_log_term,
                                 pre_vote, transfer]
    2 RequestVoteResponse    [2, term, vote_granted, pre_vote]
    3 AppendEntries          [3, term, leader_id, prev_log_index, prev_log_term,
                                 [[term, index, kind, data], ...], leader_commit, context]
    4 AppendEntriesResponse  [4, term, success, match_index, reject_index,
                                 conflict_index, conflict_term, context]
    5 TimeoutNow             [5, term, leader_id]
    6 InstallSnapshot        [6, term, leader_id, last_included_index, last_included_term,
                                 membership (bin: Membership.to_bytes), offset, data, done]
    7 InstallSnapshotResponse [7, term, last_included_index, next_offset, done]
    8 Request                [8, request_id, method, body]
    9 Response               [9, request_id, ok, body]

Types 1-7 are Raft's one-way messages. Types 8 and 9 are the request/response channel
(``tinyraft_trio._rpc``): a Request travels to a node on a connection its sender opened, and
the Response comes back on that same connection, matched by ``request_id``.

The bytes come from the network, so nothing decoded is trusted: every value is checked (shape,
types, ranges, and the entries of an AppendEntries follow ``prev_log_index`` consecutively)
before a message is built, and any failure is a ``ProtocolError``. msgpack's limits are set so
that a hostile frame cannot make the decoder allocate much more than the frame's own size.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]  # untyped unless configured

from ._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from ._core._types import (
    ENTRY_KIND_OF,
    Entry,
    EntryKind,
    Membership,
    build_entry,
    slot_builder,
)
from ._exceptions import RaftError

__all__ = [
    "MAX_METHOD_CHARS",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "Handshake",
    "ProtocolError",
    "Request",
    "Response",
    "WireMessage",
    "build_response",
    "decode_payload",
    "encode_frame",
    "encode_frame_pieces",
    "request_frame_head",
]

PROTOCOL_VERSION = 1
"""The version this codec speaks; peers announcing another version are refused."""

MAX_ID_CHARS = 128
"""Longest node id or cluster id accepted on the wire (as RaftConfig allows)."""

MAX_METHOD_CHARS = 64
"""Longest Request method name; a method is 1..64 ASCII characters."""

_MAX_U63 = 2**63 - 1
# Terms and indexes are unsigned but must fit a signed 64-bit integer (storage, other peers).
_MAX_STR_BYTES = MAX_ID_CHARS * 4
# A string of MAX_ID_CHARS characters is at most this many bytes of UTF-8.
_MIN_ENTRY_BYTES = 6
# fixarray header, three positive fixints and a bin8 header: the smallest encoded entry.
_SMALL_ARRAY = 9
# Every array of a valid frame holds at most 9 items, except the entries of an AppendEntries.

_HEADER = struct.Struct(">I")
_HEADER_SIZE = _HEADER.size
_MAX_FRAME_LENGTH = 2**32 - 1


class ProtocolError(RaftError):
    """Bytes received from a peer are not a valid frame; the connection must be closed.

    The message says what was wrong, e.g. ``"unknown message type 99"``.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class Handshake:
    """The first frame each side sends on a connection: who it is and what it speaks.

    A connection is only used once both sides agree on ``protocol_version`` and ``cluster_id``,
    so nodes of two clusters that share hosts cannot corrupt each other's logs.
    """

    protocol_version: int
    cluster_id: str
    node_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """A request for a node, answered by exactly one ``Response`` on the same connection.

    ``request_id`` is chosen by the requester and unique among its requests pending on one
    connection (0..2**63-1); ``method`` (1..64 ASCII characters) names what is asked, and
    ``body`` is the method's argument, encoded as the method defines.
    """

    request_id: int
    method: str
    body: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Response:
    """The answer to the ``Request`` with the same ``request_id``.

    With ``ok`` False the request failed and ``body`` says why: a UTF-8 error message or an
    encoded error, as the handler decides.
    """

    request_id: int
    ok: bool
    body: bytes


WireMessage = Message | Handshake | Request | Response
"""Everything a frame can carry."""

build_response: Callable[[int, bool, bytes], Response] = slot_builder(Response)
"""``build_response(request_id, ok, body)``: a Response of already-checked fields, fast (a
client splits each batch answer into thousands of them)."""


# -- Encoding ------------------------------------------------------------------------------

# One Packer for the whole process (``_batching`` packs with it too): building one per
# frame costs more than packing a heartbeat, and ``msgpack.packb`` would start each
# megabyte body in a small buffer and copy it at every growth, where this one keeps its
# buffer. Packer.pack runs entirely in C under the GIL, so sharing it on the event loop is
# safe (the storage thread has its own).
packb: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _fields_of_handshake(m: Handshake) -> tuple[object, ...]:
    return (0, m.protocol_version, m.cluster_id, m.node_id)


def _fields_of_request_vote(m: RequestVote) -> tuple[object, ...]:
    return (1, m.term, m.candidate_id, m.last_log_index, m.last_log_term, m.pre_vote, m.transfer)


def _fields_of_request_vote_response(m: RequestVoteResponse) -> tuple[object, ...]:
    return (2, m.term, m.vote_granted, m.pre_vote)


def _fields_of_append_entries(m: AppendEntries) -> tuple[object, ...]:
    # EntryKind is an IntEnum, which msgpack packs as the plain integer.
    entries = [(e.term, e.index, e.kind, e.data) for e in m.entries]
    return (
        3,
        m.term,
        m.leader_id,
        m.prev_log_index,
        m.prev_log_term,
        entries,
        m.leader_commit,
        m.context,
    )


def _fields_of_append_entries_response(m: AppendEntriesResponse) -> tuple[object, ...]:
    return (
        4,
        m.term,
        m.success,
        m.match_index,
        m.reject_index,
        m.conflict_index,
        m.conflict_term,
        m.context,
    )


def _fields_of_timeout_now(m: TimeoutNow) -> tuple[object, ...]:
    return (5, m.term, m.leader_id)


def _fields_of_install_snapshot(m: InstallSnapshot) -> tuple[object, ...]:
    return (
        6,
        m.term,
        m.leader_id,
        m.last_included_index,
        m.last_included_term,
        m.membership.to_bytes(),
        m.offset,
        m.data,
        m.done,
    )


def _fields_of_install_snapshot_response(m: InstallSnapshotResponse) -> tuple[object, ...]:
    return (7, m.term, m.last_included_index, m.next_offset, m.done)


def _fields_of_request(m: Request) -> tuple[object, ...]:
    return (8, m.request_id, m.method, m.body)


def _fields_of_response(m: Response) -> tuple[object, ...]:
    return (9, m.request_id, m.ok, m.body)


_FIELDS_OF: dict[type, Callable[[Any], tuple[object, ...]]] = {
    Handshake: _fields_of_handshake,
    RequestVote: _fields_of_request_vote,
    RequestVoteResponse: _fields_of_request_vote_response,
    AppendEntries: _fields_of_append_entries,
    AppendEntriesResponse: _fields_of_append_entries_response,
    TimeoutNow: _fields_of_timeout_now,
    InstallSnapshot: _fields_of_install_snapshot,
    InstallSnapshotResponse: _fields_of_install_snapshot_response,
    Request: _fields_of_request,
    Response: _fields_of_response,
}


def encode_frame(message: WireMessage) -> bytes:
    """Encode ``message`` as one complete frame: the 4-byte length, then the msgpack body.

    Raises:
        TypeError: ``message`` is not a message type this codec knows.
        ValueError: the encoded body is larger than a frame can describe (4 GiB).
    """
    return b"".join(encode_frame_pieces(message))


def encode_frame_pieces(message: WireMessage) -> tuple[bytes, ...]:
    """``encode_frame(message)`` as pieces to be written one after the other, each copied
    once when they are joined.

    For a writer that joins many frames into one write anyway (a node's queue to a peer), a
    large body or entry, say an AppendEntries of a megabyte, is then never copied into a
    packer's buffer and out again, nor just to put the frame's length before it. Raises
    what ``encode_frame`` raises.
    """
    if isinstance(message, _WITH_BODY) and len(message.body) >= _LARGE_BODY:
        return _large_body_pieces(message)
    if (
        type(message) is AppendEntries
        and 0 < len(message.entries) <= _MAX_PIECEWISE_ENTRIES
        and max(len(entry.data) for entry in message.entries) >= _LARGE_BODY
    ):
        return _append_entries_pieces(message)
    fields_of = _FIELDS_OF.get(type(message))
    if fields_of is None:
        raise TypeError(f"cannot encode {type(message).__name__}: not a wire message")
    body = packb(fields_of(message))
    if len(body) > _MAX_FRAME_LENGTH:
        raise ValueError(f"{type(message).__name__} of {len(body)} bytes does not fit a frame")
    return _HEADER.pack(len(body)), body


_WITH_BODY = (Request, Response)
_LARGE_BODY = 4096
"""From this many body (or entry data) bytes on, a message is not packed whole."""
_MAX_PIECEWISE_ENTRIES = 64
"""An AppendEntries of more entries is packed whole, without looking for large ones: its
entries are small (a batch entry is about as large as a client's frame)."""
_ARRAY16 = struct.Struct(">BH")
_ARRAY32 = struct.Struct(">BI")

_BIN8 = struct.Struct(">BB")
_BIN16 = struct.Struct(">BH")
_BIN32 = struct.Struct(">BI")


def bin_header(size: int) -> bytes:
    """msgpack's header of a bin of ``size`` bytes (the smallest form, as msgpack packs)."""
    if size <= 0xFF:
        return _BIN8.pack(0xC4, size)
    if size <= 0xFFFF:
        return _BIN16.pack(0xC5, size)
    return _BIN32.pack(0xC6, size)


def array_header(count: int) -> bytes:
    """msgpack's header of an array of ``count`` items (the smallest form, as msgpack packs)."""
    if count <= 15:
        return bytes((0x90 | count,))
    if count <= 0xFFFF:
        return _ARRAY16.pack(0xDC, count)
    return _ARRAY32.pack(0xDD, count)


def entry_head(term: int, index: int, kind: int, size: int) -> bytes:
    """What precedes an entry's ``size`` bytes of data in its msgpack encoding (the array
    ``[term, index, kind, data]``, as on the wire and in the log): a large entry's data can
    then follow as a piece of its own instead of being copied into a packer and out again."""
    # The packed tuple's one-byte fixarray header (0x93) becomes the entry's (0x94).
    return b"\x94" + packb((term, index, kind))[1:] + bin_header(size)


def _append_entries_pieces(message: AppendEntries) -> tuple[bytes, ...]:
    """The same bytes as packing the whole AppendEntries, with each large entry's data a
    piece of its own rather than copied into the packer's buffer and out again."""
    entries = message.entries
    # Each packed tuple's one-byte fixarray header is replaced by the array's real one.
    head = packb(
        (3, message.term, message.leader_id, message.prev_log_index, message.prev_log_term)
    )
    pieces = [b"", b"\x98" + head[1:] + array_header(len(entries))]
    for entry in entries:
        data = entry.data
        if len(data) < _LARGE_BODY:
            pieces.append(packb((entry.term, entry.index, entry.kind, data)))
        else:
            pieces.append(entry_head(entry.term, entry.index, entry.kind, len(data)))
            pieces.append(data)
    pieces.append(packb((message.leader_commit, message.context))[1:])
    length = sum(map(len, pieces))
    if length > _MAX_FRAME_LENGTH:
        raise ValueError(f"AppendEntries of {length} bytes does not fit a frame")
    pieces[0] = _HEADER.pack(length)
    return tuple(pieces)


def _large_body_pieces(message: Request | Response) -> tuple[bytes, bytes]:
    """The same bytes as packing the whole message, as (everything before the body, body).

    Packing the fields would copy a large body into the packer's buffer and out again (a
    large command, a batch of queries' answers). Only the small head is packed here.
    """
    body = message.body
    if isinstance(message, Request):
        return request_frame_head(message.request_id, message.method, len(body)), body
    head = packb((9, message.request_id, message.ok))
    return _frame_head(head, len(body), "Response"), body


def request_frame_head(request_id: int, method: str, body_size: int) -> bytes:
    """What comes before a Request's body of ``body_size`` bytes in its frame: followed by
    the body, the same bytes as ``encode_frame``. A sender that builds a large body in a
    buffer of its own (a client's batch, in its packer) joins the two once, instead of
    first copying the body out into bytes.

    Raises:
        ValueError: the request would not fit a frame (4 GiB).
    """
    return _frame_head(packb((8, request_id, method)), body_size, "Request")


def _frame_head(head: bytes, body_size: int, what: str) -> bytes:
    body_header = bin_header(body_size)
    # ``head`` is an array of three (one byte: 0x93); the frame's has the body as a fourth.
    length = len(head) + len(body_header) + body_size
    if length > _MAX_FRAME_LENGTH:
        raise ValueError(f"{what} of {length} bytes does not fit a frame")
    return b"".join((_HEADER.pack(length), b"\x94", head[1:], body_header))


# -- Decoding ------------------------------------------------------------------------------

_UNPACK_LIMITS: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "max_str_len": _MAX_STR_BYTES,
    "max_array_len": _SMALL_ARRAY,
    "max_map_len": 0,
    "max_ext_len": 0,
}
# msgpack allocates a container's slots when it reads the container's header, before reading
# its items. With arrays capped at 8 slots, even a frame of nothing but nested array headers
# (msgpack stops at depth 1024) allocates little; large entry lists take the streaming path.

_U63 = "u63"
_ID = "id"
_BOOL = "bool"
_ENTRIES = "entries"
_BYTES = "bytes"
_METHOD = "method"

_LAYOUTS: dict[int, tuple[str, tuple[tuple[str, str], ...]]] = {
    0: ("Handshake", (("protocol_version", _U63), ("cluster_id", _ID), ("node_id", _ID))),
    1: (
        "RequestVote",
        (
            ("term", _U63),
            ("candidate_id", _ID),
            ("last_log_index", _U63),
            ("last_log_term", _U63),
            ("pre_vote", _BOOL),
            ("transfer", _BOOL),
        ),
    ),
    2: ("RequestVoteResponse", (("term", _U63), ("vote_granted", _BOOL), ("pre_vote", _BOOL))),
    3: (
        "AppendEntries",
        (
            ("term", _U63),
            ("leader_id", _ID),
            ("prev_log_index", _U63),
            ("prev_log_term", _U63),
            ("entries", _ENTRIES),
            ("leader_commit", _U63),
            ("context", _U63),
        ),
    ),
    4: (
        "AppendEntriesResponse",
        (
            ("term", _U63),
            ("success", _BOOL),
            ("match_index", _U63),
            ("reject_index", _U63),
            ("conflict_index", _U63),
            ("conflict_term", _U63),
            ("context", _U63),
        ),
    ),
    5: ("TimeoutNow", (("term", _U63), ("leader_id", _ID))),
    6: (
        "InstallSnapshot",
        (
            ("term", _U63),
            ("leader_id", _ID),
            ("last_included_index", _U63),
            ("last_included_term", _U63),
            ("membership", _BYTES),
            ("offset", _U63),
            ("data", _BYTES),
            ("done", _BOOL),
        ),
    ),
    7: (
        "InstallSnapshotResponse",
        (
            ("term", _U63),
            ("last_included_index", _U63),
            ("next_offset", _U63),
            ("done", _BOOL),
        ),
    ),
    8: ("Request", (("request_id", _U63), ("method", _METHOD), ("body", _BYTES))),
    9: ("Response", (("request_id", _U63), ("ok", _BOOL), ("body", _BYTES))),
}
"""Each message's wire fields and their kinds: the reference for the fast checks below, and
what ``_fail`` walks to explain a failed check."""


def _describe(value: object, depth: int = 0) -> str:
    """Show a received value in an error message without dumping megabytes of it."""
    if isinstance(value, bytes | str):
        if len(value) <= 32:
            return repr(value)
        return f"{type(value).__name__} of length {len(value)}"
    if isinstance(value, list):
        if depth >= 2 or len(value) > 4:
            return f"an array of {len(value)} items"
        return "[" + ", ".join(_describe(item, depth + 1) for item in value) + "]"
    if isinstance(value, dict):
        return f"a map of {len(value)} items"
    # What else msgpack produces (int, float, bool, None, ExtType) has a short repr.
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def _problem(kind: str, value: object) -> str | None:
    """Why ``value`` is not a valid field of ``kind``, or None if it is."""
    if kind == _U63:
        if type(value) is not int:
            return f"expected an integer, got {_describe(value)}"
        if value < 0:
            return f"expected an integer >= 0, got {value}"
        if value > _MAX_U63:
            return f"expected an integer <= {_MAX_U63}, got {value}"
    elif kind == _ID:
        if type(value) is not str:
            return f"expected a string, got {_describe(value)}"
        if not 0 < len(value) <= MAX_ID_CHARS:
            return f"expected a string of 1..{MAX_ID_CHARS} characters, got {len(value)}"
    elif kind == _BOOL:
        if type(value) is not bool:
            return f"expected a boolean, got {_describe(value)}"
    elif kind == _ENTRIES and type(value) is not list:
        return f"expected an array of entries, got {_describe(value)}"
    elif kind == _BYTES and type(value) is not bytes:
        return f"expected bytes, got {_describe(value)}"
    elif kind == _METHOD:
        if type(value) is not str:
            return f"expected a string, got {_describe(value)}"
        if not 0 < len(value) <= MAX_METHOD_CHARS or not value.isascii():
            return f"expected 1..{MAX_METHOD_CHARS} ASCII characters, got {_describe(value)}"
    return None


def _fail(code: int, obj: list[Any]) -> ProtocolError:
    """Build the error explaining why ``obj`` failed its message's fast check."""
    name, layout = _LAYOUTS[code]
    if len(obj) != len(layout) + 1:
        return ProtocolError(f"{name}: expected {len(layout)} fields, got {len(obj) - 1}")
    for (field, kind), value in zip(layout, obj[1:], strict=True):
        problem = _problem(kind, value)
        if problem is not None:
            return ProtocolError(f"{name} field {field}: {problem}")
    # Only reached if a fast check disagrees with _LAYOUTS: a bug here, not in the peer.
    return ProtocolError(f"{name}: invalid message")


def _decode_handshake(obj: list[Any]) -> Handshake:
    if len(obj) == 4:
        _, version, cluster_id, node_id = obj
        if (
            type(version) is int
            and 0 <= version <= _MAX_U63
            and type(cluster_id) is str
            and 0 < len(cluster_id) <= MAX_ID_CHARS
            and type(node_id) is str
            and 0 < len(node_id) <= MAX_ID_CHARS
        ):
            return Handshake(protocol_version=version, cluster_id=cluster_id, node_id=node_id)
    raise _fail(0, obj)


def _decode_request_vote(obj: list[Any]) -> RequestVote:
    if len(obj) == 7:
        _, term, candidate_id, last_log_index, last_log_term, pre_vote, transfer = obj
        if (
            type(term) is int
            and 0 <= term <= _MAX_U63
            and type(candidate_id) is str
            and 0 < len(candidate_id) <= MAX_ID_CHARS
            and type(last_log_index) is int
            and 0 <= last_log_index <= _MAX_U63
            and type(last_log_term) is int
            and 0 <= last_log_term <= _MAX_U63
            and type(pre_vote) is bool
            and type(transfer) is bool
        ):
            return RequestVote(
                term=term,
                candidate_id=candidate_id,
                last_log_index=last_log_index,
                last_log_term=last_log_term,
                pre_vote=pre_vote,
                transfer=transfer,
            )
    raise _fail(1, obj)


def _decode_request_vote_response(obj: list[Any]) -> RequestVoteResponse:
    if len(obj) == 4:
        _, term, vote_granted, pre_vote = obj
        if (
            type(term) is int
            and 0 <= term <= _MAX_U63
            and type(vote_granted) is bool
            and type(pre_vote) is bool
        ):
            return RequestVoteResponse(term=term, vote_granted=vote_granted, pre_vote=pre_vote)
    raise _fail(2, obj)


def _decode_entries(raw_entries: list[Any], term: int, prev_log_index: int) -> tuple[Entry, ...]:
    """Check and build AppendEntries' entries: consecutive from prev_log_index + 1 (§5.3),
    terms in 1..term (a leader only sends entries of its own or earlier terms)."""
    if prev_log_index + len(raw_entries) > _MAX_U63:
        raise ProtocolError(
            f"AppendEntries field entries: {len(raw_entries)} entries after prev_log_index "
            f"{prev_log_index} would pass the largest index {_MAX_U63}"
        )
    entries = []
    index = prev_log_index
    kinds = ENTRY_KIND_OF
    build = build_entry
    for raw in raw_entries:
        index += 1
        if type(raw) is list and len(raw) == 4:
            entry_term, entry_index, kind, data = raw
            if (
                type(entry_term) is int
                and 0 < entry_term <= term
                and type(entry_index) is int
                and entry_index == index
                and type(kind) is int
                and kind in kinds
                and type(data) is bytes
            ):
                entries.append(build(entry_term, index, kinds[kind], data))
                continue
        position = index - prev_log_index - 1
        raise ProtocolError(f"AppendEntries entries[{position}] {_entry_problem(raw, term, index)}")
    return tuple(entries)


def _entry_problem(raw: object, term: int, index: int) -> str:
    """Explain why ``raw`` is not the entry expected at ``index``."""
    if type(raw) is not list or len(raw) != 4:
        return f"expected an array [term, index, kind, data], got {_describe(raw)}"
    entry_term, entry_index, kind, data = raw
    if type(entry_term) is not int or not 0 < entry_term <= term:
        return (
            f"term: expected an integer in 1..{term} (the message term), "
            f"got {_describe(entry_term)}"
        )
    if type(entry_index) is not int or entry_index != index:
        return (
            f"index: expected {index} (entries must follow prev_log_index consecutively), "
            f"got {_describe(entry_index)}"
        )
    if type(kind) is not int or kind not in ENTRY_KIND_OF:
        valid = ", ".join(str(int(k)) for k in EntryKind)
        return f"kind: expected one of {valid}, got {_describe(kind)}"
    return f"data: expected bytes, got {_describe(data)}"


def _decode_append_entries(obj: list[Any]) -> AppendEntries:
    if len(obj) == 8:
        _, term, leader_id, prev_log_index, prev_log_term, raw_entries, leader_commit, context = obj
        if (
            type(term) is int
            and 0 <= term <= _MAX_U63
            and type(leader_id) is str
            and 0 < len(leader_id) <= MAX_ID_CHARS
            and type(prev_log_index) is int
            and 0 <= prev_log_index <= _MAX_U63
            and type(prev_log_term) is int
            and 0 <= prev_log_term <= _MAX_U63
            and type(raw_entries) is list
            and type(leader_commit) is int
            and 0 <= leader_commit <= _MAX_U63
            and type(context) is int
            and 0 <= context <= _MAX_U63
        ):
            return AppendEntries(
                term=term,
                leader_id=leader_id,
                prev_log_index=prev_log_index,
                prev_log_term=prev_log_term,
                entries=_decode_entries(raw_entries, term, prev_log_index) if raw_entries else (),
                leader_commit=leader_commit,
                context=context,
            )
    raise _fail(3, obj)


def _decode_append_entries_response(obj: list[Any]) -> AppendEntriesResponse:
    if len(obj) == 8:
        _, term, success, match_index, reject_index, conflict_index, conflict_term, context = obj
        if (
            type(term) is int
            and 0 <= term <= _MAX_U63
            and type(success) is bool
            and type(match_index) is int
            and 0 <= match_index <= _MAX_U63
            and type(reject_index) is int
            and 0 <= reject_index <= _MAX_U63
            and type(conflict_index) is int
            and 0 <= conflict_index <= _MAX_U63
            and type(conflict_term) is int
            and 0 <= conflict_term <= _MAX_U63
            and type(context) is int
            and 0 <= context <= _MAX_U63
        ):
            return AppendEntriesResponse(
                term=term,
                success=success,
                match_index=match_index,
                reject_index=reject_index,
                conflict_index=conflict_index,
                conflict_term=conflict_term,
                context=context,
            )
    raise _fail(4, obj)


def _decode_timeout_now(obj: list[Any]) -> TimeoutNow:
    if len(obj) == 3:
        _, term, leader_id = obj
        if (
            type(term) is int
            and 0 <= term <= _MAX_U63
            and type(leader_id) is str
            and 0 < len(leader_id) <= MAX_ID_CHARS
        ):
            return TimeoutNow(term=term, leader_id=leader_id)
    raise _fail(5, obj)


def _decode_install_snapshot(obj: list[Any]) -> InstallSnapshot:
    if len(obj) == 9:
        _, term, leader_id, index, index_term, membership, offset, data, done = obj
        if (
            type(term) is int
            and 0 <= term <= _MAX_U63
            and type(leader_id) is str
            and 0 < len(leader_id) <= MAX_ID_CHARS
            and type(index) is int
            and 0 <= index <= _MAX_U63
            and type(index_term) is int
            and 0 <= index_term <= term
            and type(membership) is bytes
            and type(offset) is int
            and 0 <= offset <= _MAX_U63
            and type(data) is bytes
            and type(done) is bool
        ):
            try:
                decoded = Membership.from_bytes(membership)
            except ValueError as exc:
                raise ProtocolError(f"InstallSnapshot field membership: {exc}") from None
            return InstallSnapshot(
                term=term,
                leader_id=leader_id,
                last_included_index=index,
                last_included_term=index_term,
                membership=decoded,
                offset=offset,
                data=data,
                done=done,
            )
        if type(index_term) is int and type(term) is int and index_term > term >= 0:
            raise ProtocolError(
                f"InstallSnapshot field last_included_term: {index_term} exceeds term {term}"
            )
    raise _fail(6, obj)


def _decode_install_snapshot_response(obj: list[Any]) -> InstallSnapshotResponse:
    if len(obj) == 5:
        _, term, index, next_offset, done = obj
        if (
            type(term) is int
            and 0 <= term <= _MAX_U63
            and type(index) is int
            and 0 <= index <= _MAX_U63
            and type(next_offset) is int
            and 0 <= next_offset <= _MAX_U63
            and type(done) is bool
        ):
            return InstallSnapshotResponse(
                term=term, last_included_index=index, next_offset=next_offset, done=done
            )
    raise _fail(7, obj)


def _decode_request(obj: list[Any]) -> Request:
    if len(obj) == 4:
        _, request_id, method, body = obj
        if (
            type(request_id) is int
            and 0 <= request_id <= _MAX_U63
            and type(method) is str
            and 0 < len(method) <= MAX_METHOD_CHARS
            and method.isascii()
            and type(body) is bytes
        ):
            return Request(request_id=request_id, method=method, body=body)
    raise _fail(8, obj)


def _decode_response(obj: list[Any]) -> Response:
    if len(obj) == 4:
        _, request_id, ok, body = obj
        if (
            type(request_id) is int
            and 0 <= request_id <= _MAX_U63
            and type(ok) is bool
            and type(body) is bytes
        ):
            return build_response(request_id, ok, body)
    raise _fail(9, obj)


_DECODERS: tuple[Callable[[list[Any]], WireMessage], ...] = (
    _decode_handshake,
    _decode_request_vote,
    _decode_request_vote_response,
    _decode_append_entries,
    _decode_append_entries_response,
    _decode_timeout_now,
    _decode_install_snapshot,
    _decode_install_snapshot_response,
    _decode_request,
    _decode_response,
)


def _unpack_large_append_entries(payload: bytes | bytearray | memoryview) -> list[Any]:
    """Unpack an AppendEntries frame whose entry list is too long for the one-shot path.

    Reads the message array and the entry list by their headers (which allocate nothing),
    then the entries one by one, so every container msgpack allocates is still capped.
    """
    size = len(payload)
    unpacker = msgpack.Unpacker(
        max_buffer_size=size, read_size=size, max_bin_len=size, **_UNPACK_LIMITS
    )
    try:
        unpacker.feed(payload)
        length = unpacker.read_array_header()
        if length != 8:
            raise ProtocolError(f"AppendEntries: expected 7 fields, got {length - 1}")
        obj = [unpacker.unpack() for _ in range(5)]
        count = unpacker.read_array_header()
        if count * _MIN_ENTRY_BYTES > size - unpacker.tell():
            raise ProtocolError(
                f"AppendEntries field entries: {count} entries cannot fit in "
                f"{size - unpacker.tell()} remaining bytes"
            )
        entries = list(itertools.islice(unpacker, count))
        if len(entries) != count:
            raise ProtocolError(f"malformed msgpack: entry list truncated at {len(entries)}")
        obj.append(entries)
        obj.append(unpacker.unpack())
        obj.append(unpacker.unpack())
        if unpacker.tell() != size:
            raise ProtocolError(f"malformed msgpack: {size - unpacker.tell()} bytes of extra data")
    except ProtocolError:
        raise
    except Exception as exc:
        # msgpack signals bad input with many exception types (ValueError and its
        # subclasses, OutOfData, TypeError, ...); all of them mean "bad frame" here.
        raise ProtocolError(f"malformed msgpack: {exc}") from exc
    return obj


def decode_payload(payload: bytes | bytearray | memoryview) -> WireMessage:
    """Decode and validate one frame's body (without its 4-byte length).

    Raises:
        ProtocolError: the body is not exactly one valid message.
    """
    try:
        obj = msgpack.unpackb(payload, max_bin_len=len(payload), **_UNPACK_LIMITS)
    except Exception as exc:
        # An AppendEntries (canonically: fixarray of 8, type code 3) with more than
        # _SMALL_ARRAY entries lands here; retry it on the path that streams entries.
        if len(payload) > 2 and payload[0] == 0x98 and payload[1] == 3:
            obj = _unpack_large_append_entries(payload)
        else:
            raise ProtocolError(f"malformed msgpack: {exc}") from exc
    if type(obj) is not list or not obj:
        raise ProtocolError(f"expected a message array, got {_describe(obj)}")
    code = obj[0]
    if type(code) is not int or not 0 <= code < len(_DECODERS):
        raise ProtocolError(f"unknown message type {_describe(code)}")
    return _DECODERS[code](obj)


class FrameDecoder:
    """Splits a byte stream into frames and decodes each; keeps partial frames between feeds.

    A frame longer than ``max_frame_bytes`` is refused as soon as its length header arrives,
    without waiting for (or buffering) its body. After a ``ProtocolError`` the stream is out of
    step, so the decoder refuses all further input: close the connection.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        if isinstance(max_frame_bytes, bool) or not isinstance(max_frame_bytes, int):
            raise TypeError(f"max_frame_bytes: expected an integer, got {max_frame_bytes!r}")
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes: must be >= 1, got {max_frame_bytes}")
        self._max_frame_bytes = max_frame_bytes
        # The start of an incomplete frame, in the pieces it came in: joined once, when the
        # frame is complete, rather than grown (and so copied again) by every piece.
        # Invariant: between calls to feed(), the pieces hold no complete frame, and no more
        # than the header plus max_frame_bytes of one frame.
        self._pieces: list[bytes] = []
        self._buffered = 0
        """The pieces' total length."""
        self._wanted = _HEADER_SIZE
        """The length the pieces must reach before a frame can be complete."""
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """How many bytes of an incomplete frame are waiting for the rest of it."""
        return self._buffered

    @property
    def missing_bytes(self) -> int:
        """How many more bytes (at least) the incomplete frame needs; 0 if there is none.

        A reader may ask its socket for that many at once: a large frame then comes in
        fewer reads.
        """
        return self._wanted - self._buffered if self._buffered else 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[WireMessage]:
        """Add ``data`` from the stream; return every message completed by it, in order.

        Raises:
            ProtocolError: the stream holds an oversized or invalid frame. Messages decoded
                earlier in the same call are discarded with the connection.
        """
        if self._error is not None:
            raise ProtocolError(f"stream already failed: {self._error}")
        if self._pieces:
            self._pieces.append(bytes(data))  # a copy only if the caller may reuse its buffer
            self._buffered += len(data)
            if self._buffered < self._wanted:
                return []
            data = b"".join(self._pieces)
        messages: list[WireMessage] = []
        end = len(data)
        position = 0
        length = 0
        try:
            with memoryview(data) as view:
                while end - position >= _HEADER_SIZE:
                    (length,) = _HEADER.unpack_from(data, position)
                    if length > self._max_frame_bytes:
                        raise ProtocolError(
                            f"frame of {length} bytes exceeds max_frame_bytes "
                            f"{self._max_frame_bytes}"
                        )
                    start = position + _HEADER_SIZE
                    if end - start < length:
                        break
                    position = start + length
                    # Released explicitly so no view outlives this loop, even one kept by an
                    # exception's traceback.
                    with view[start:position] as payload:
                        messages.append(decode_payload(payload))
                rest = end - position
                if not rest:
                    self._pieces = []
                elif position == 0 and type(data) is bytes:
                    self._pieces = [data]  # immutable: kept as it is
                else:
                    self._pieces = [bytes(view[position:])]
        except ProtocolError as exc:
            self._error = exc
            self._pieces = []
            self._buffered = 0
            raise
        self._buffered = rest
        self._wanted = _HEADER_SIZE + length if rest >= _HEADER_SIZE else _HEADER_SIZE
        return messages
