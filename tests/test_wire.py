"""The msgpack wire codec: round trips, stream framing, and refusal of every kind of bad input."""

from __future__ import annotations

import struct
import tracemalloc
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tinyraft_trio._core._messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from tinyraft_trio._core._types import (
    Entry,
    EntryKind,
    Member,
    Membership,
    build_entry,
    slot_builder,
)
from tinyraft_trio._wire import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    ProtocolError,
    Request,
    Response,
    WireMessage,
    build_response,
    decode_payload,
    encode_frame,
    encode_frame_pieces,
)

MAX_U63 = 2**63 - 1
MIB = 1024 * 1024


def frame(value: Any) -> bytes:
    """A frame around an arbitrary msgpack value, for building malformed input."""
    body: bytes = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def entries_from(prev_log_index: int, term: int, count: int, size: int = 3) -> tuple[Entry, ...]:
    return tuple(
        Entry(
            term=term,
            index=prev_log_index + 1 + i,
            kind=EntryKind(i % len(EntryKind)),
            data=bytes([i % 256]) * size,
        )
        for i in range(count)
    )


def round_trip(message: WireMessage) -> WireMessage:
    data = encode_frame(message)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    decoded = decode_payload(data[4:])
    assert FrameDecoder(len(data)).feed(data) == [decoded]
    return decoded


EXAMPLES: list[WireMessage] = [
    Handshake(protocol_version=PROTOCOL_VERSION, cluster_id="prod-cluster", node_id="node-1"),
    RequestVote(term=7, candidate_id="b", last_log_index=42, last_log_term=6),
    RequestVote(
        term=MAX_U63, candidate_id="ü" * 128, last_log_index=0, last_log_term=0, pre_vote=True
    ),
    RequestVote(term=3, candidate_id="c", last_log_index=1, last_log_term=1, transfer=True),
    RequestVoteResponse(term=7, vote_granted=True),
    RequestVoteResponse(term=0, vote_granted=False, pre_vote=True),
    AppendEntries(
        term=5, leader_id="a", prev_log_index=10, prev_log_term=4, entries=(), leader_commit=9
    ),
    AppendEntries(
        term=5,
        leader_id="a",
        prev_log_index=10,
        prev_log_term=4,
        entries=(Entry(term=5, index=11, kind=EntryKind.NOOP),),
        leader_commit=10,
    ),
    AppendEntries(
        term=9,
        leader_id="a",
        prev_log_index=0,
        prev_log_term=0,
        entries=entries_from(0, 9, 8),
        leader_commit=0,
    ),
    AppendEntries(
        term=9,
        leader_id="a",
        prev_log_index=100,
        prev_log_term=8,
        entries=entries_from(100, 9, 9),
        leader_commit=100,
    ),
    AppendEntries(
        term=9,
        leader_id="a",
        prev_log_index=MAX_U63 - 2000,
        prev_log_term=8,
        entries=entries_from(MAX_U63 - 2000, 9, 2000, size=0),
        leader_commit=MAX_U63,
    ),
    AppendEntriesResponse(term=5, success=True, match_index=11),
    AppendEntriesResponse(
        term=5, success=False, match_index=0, reject_index=10, conflict_index=7, conflict_term=3
    ),
    TimeoutNow(term=12, leader_id="leader"),
    InstallSnapshot(
        term=7,
        leader_id="a",
        last_included_index=1000,
        last_included_term=6,
        membership=Membership(
            members=(Member(id="a", address="h:1"), Member(id="b", address="h:2", voter=False))
        ),
        offset=4096,
        data=b"\x00" * 100,
        done=False,
    ),
    InstallSnapshotResponse(term=7, last_included_index=1000, next_offset=4196, done=True),
    Request(request_id=0, method="join", body=b""),
    Request(request_id=MAX_U63, method="m" * 64, body=bytes(range(256)) * 100),
    Request(request_id=17, method="Cluster.Apply/v2 ~!", body=b"\x00"),
    Response(request_id=17, ok=True, body=b"result"),
    Response(request_id=MAX_U63, ok=False, body="not the leader: ü".encode()),
    Response(request_id=0, ok=False, body=b""),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_of_every_message_type(message: WireMessage) -> None:
    assert round_trip(message) == message


def test_every_type_code_is_covered() -> None:
    assert {frame_bytes[5] for frame_bytes in map(encode_frame, EXAMPLES)} == set(range(10))


def test_round_trip_of_empty_and_large_entry_data() -> None:
    entries = (
        Entry(term=2, index=5, data=b""),
        Entry(term=2, index=6, data=bytes(range(256)) * 4096),  # 1 MiB
        Entry(term=2, index=7, kind=EntryKind.CONFIG, data=b"\x00"),
    )
    message = AppendEntries(
        term=2, leader_id="a", prev_log_index=4, prev_log_term=1, entries=entries, leader_commit=4
    )
    decoded = round_trip(message)
    assert decoded == message
    assert isinstance(decoded, AppendEntries)
    assert all(type(e.data) is bytes and type(e.kind) is EntryKind for e in decoded.entries)


def test_entries_built_fast_are_ordinary_entries() -> None:
    """Decoding, proposing and loading build entries with ``build_entry``."""
    built = build_entry(3, 4, EntryKind.NOOP, b"x")
    plain = Entry(term=3, index=4, kind=EntryKind.NOOP, data=b"x")
    assert built == plain
    assert hash(built) == hash(plain)
    assert repr(built) == repr(plain)
    with pytest.raises(AttributeError):
        built.term = 5  # type: ignore[misc]


def test_responses_built_fast_are_ordinary_responses() -> None:
    """Clients split batch answers into responses with ``build_response``."""
    built = build_response(7, False, b"why")
    plain = Response(request_id=7, ok=False, body=b"why")
    assert built == plain
    assert hash(built) == hash(plain)
    assert repr(built) == repr(plain)
    with pytest.raises(AttributeError):
        built.ok = True  # type: ignore[misc]


def test_a_class_the_slot_builder_cannot_shortcut_is_built_by_its_constructor() -> None:
    """Without matching slots, or with a ``__post_init__``, ``slot_builder`` calls the class."""

    @dataclass(frozen=True)
    class Unslotted:
        a: int
        b: int
        c: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int
        b: int
        c: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a must be >= 0")

    assert slot_builder(Unslotted)(1, 2, 3) == Unslotted(a=1, b=2, c=3)
    assert slot_builder(Checked)(1, 2, 3) == Checked(a=1, b=2, c=3)
    with pytest.raises(ValueError, match="a must be"):
        slot_builder(Checked)(-1, 2, 3)


# -- Generated messages -------------------------------------------------------------------

u63 = st.integers(min_value=0, max_value=MAX_U63)
ids = st.text(min_size=1, max_size=128)
small_data = st.binary(max_size=64)
methods = st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=64)


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    term = draw(u63)
    count = draw(st.integers(0, 20)) if term > 0 else 0
    prev_log_index = draw(st.integers(0, MAX_U63 - count))
    entries = tuple(
        Entry(
            term=draw(st.integers(1, term)),
            index=prev_log_index + 1 + i,
            kind=draw(st.sampled_from(EntryKind)),
            data=draw(small_data),
        )
        for i in range(count)
    )
    return AppendEntries(
        term=term,
        leader_id=draw(ids),
        prev_log_index=prev_log_index,
        prev_log_term=draw(u63),
        entries=entries,
        leader_commit=draw(u63),
    )


messages = st.one_of(
    st.builds(Handshake, protocol_version=u63, cluster_id=ids, node_id=ids),
    st.builds(
        RequestVote,
        term=u63,
        candidate_id=ids,
        last_log_index=u63,
        last_log_term=u63,
        pre_vote=st.booleans(),
        transfer=st.booleans(),
    ),
    st.builds(RequestVoteResponse, term=u63, vote_granted=st.booleans(), pre_vote=st.booleans()),
    append_entries(),
    st.builds(
        AppendEntriesResponse,
        term=u63,
        success=st.booleans(),
        match_index=u63,
        reject_index=u63,
        conflict_index=u63,
        conflict_term=u63,
    ),
    st.builds(TimeoutNow, term=u63, leader_id=ids),
    st.builds(
        InstallSnapshot,
        term=st.just(MAX_U63),
        leader_id=ids,
        last_included_index=u63,
        last_included_term=u63,
        membership=st.builds(
            Membership,
            members=st.lists(ids, unique=True, max_size=12).map(
                lambda names: tuple(Member(id=n, address=f"{n}:1") for n in sorted(names))
            ),
        ),
        offset=u63,
        data=st.binary(max_size=64),
        done=st.booleans(),
    ),
    st.builds(
        InstallSnapshotResponse,
        term=u63,
        last_included_index=u63,
        next_offset=u63,
        done=st.booleans(),
    ),
    st.builds(Request, request_id=u63, method=methods, body=small_data),
    st.builds(Response, request_id=u63, ok=st.booleans(), body=small_data),
)


@given(messages)
def test_round_trip_property(message: WireMessage) -> None:
    assert round_trip(message) == message


@given(st.lists(messages, max_size=8), st.data())
def test_any_chunking_yields_the_same_messages(
    sent: list[WireMessage], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder(MIB)
    received: list[WireMessage] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += decoder.feed(stream[start:end])
    assert received == sent
    assert decoder.buffered_bytes == 0


def test_byte_by_byte_feeding() -> None:
    stream = b"".join(encode_frame(m) for m in EXAMPLES)
    decoder = FrameDecoder(MIB)
    received: list[WireMessage] = []
    for i in range(len(stream)):
        received += decoder.feed(stream[i : i + 1])
    assert received == EXAMPLES
    assert FrameDecoder(MIB).feed(bytearray(stream)) == EXAMPLES
    assert FrameDecoder(MIB).feed(memoryview(stream)) == EXAMPLES


def test_a_frame_in_pieces_is_the_frame() -> None:
    for message in [*EXAMPLES, Response(request_id=1, ok=True, body=b"r" * 5000)]:
        assert b"".join(encode_frame_pieces(message)) == encode_frame(message)


@pytest.mark.parametrize(
    "sizes",
    [[4096], [10, 5000, 3, 70_000], [5] * 15 + [4096], [4096] + [1] * 16, [66_000] * 64],
)
def test_an_append_with_large_entries_is_byte_for_byte_what_msgpack_packs(
    sizes: list[int],
) -> None:
    """AppendEntries carrying large entries (a batch entry) are joined from pieces, not packed
    whole: the frame must not change (fixarray / array 16 of entries, bin 16 / bin 32, large
    integers)."""
    term, prev = 2**40 + 3, 2**33 + 1
    entries = tuple(
        Entry(term=term - i % 2, index=prev + 1 + i, kind=EntryKind(i % len(EntryKind)),
              data=bytes([i % 256]) * size)
        for i, size in enumerate(sizes)
    )  # fmt: skip
    message = AppendEntries(
        term=term,
        leader_id="n" * 100,
        prev_log_index=prev,
        prev_log_term=term - 1,
        entries=entries,
        leader_commit=2**63 - 1,
        context=70_000,
    )
    pieces = encode_frame_pieces(message)
    assert len(pieces) > 2  # the large entries' data went as pieces of their own
    fields = [
        3, term, "n" * 100, prev, term - 1,
        [[e.term, e.index, int(e.kind), e.data] for e in entries], 2**63 - 1, 70_000,
    ]  # fmt: skip
    body = msgpack.packb(fields, use_bin_type=True)
    assert b"".join(pieces) == struct.pack(">I", len(body)) + body
    assert FrameDecoder(2 * len(body)).feed(b"".join(pieces)) == [message]


@pytest.mark.parametrize("size", [4095, 4096, 65535, 65536, 70_000, MIB])
def test_a_large_body_frame_is_byte_for_byte_what_msgpack_packs(size: int) -> None:
    """Requests and Responses with large bodies are joined from pieces, not packed whole:
    the bytes on the wire must not change (bin 16 / bin 32 headers, any request id)."""
    for message in (
        Request(request_id=2**40 + 5, method="apply_batch", body=b"x" * size),
        Response(request_id=7, ok=False, body=b"y" * size),
        Response(request_id=0, ok=True, body=b"z" * size),
    ):
        fields = (
            [8, message.request_id, message.method, message.body]
            if isinstance(message, Request)
            else [9, message.request_id, message.ok, message.body]
        )
        packed = msgpack.packb(fields, use_bin_type=True)
        assert encode_frame(message) == len(packed).to_bytes(4, "big") + packed
        assert FrameDecoder(2 * MIB).feed(encode_frame(message)) == [message]


def test_a_partial_frame_says_how_many_bytes_it_misses() -> None:
    data = encode_frame(EXAMPLES[1]) + encode_frame(EXAMPLES[2])
    first = len(encode_frame(EXAMPLES[1]))
    decoder = FrameDecoder(MIB)
    assert decoder.missing_bytes == 0
    assert decoder.feed(data[:2]) == [] and decoder.missing_bytes == 2  # the header's rest
    assert decoder.feed(data[2:10]) == [] and decoder.missing_bytes == first - 10
    assert decoder.feed(data[10 : first + 1]) == [EXAMPLES[1]]
    assert decoder.missing_bytes == 3 and decoder.buffered_bytes == 1
    assert decoder.feed(data[first + 1 :]) == [EXAMPLES[2]] and decoder.missing_bytes == 0


def test_a_buffer_the_caller_reuses_does_not_change_a_kept_partial_frame() -> None:
    data = encode_frame(EXAMPLES[1])
    decoder = FrameDecoder(MIB)
    for cut in (3, 9):  # in the header, then in the body
        buffer = bytearray(data[:cut])
        assert decoder.feed(buffer) == []
        buffer[:] = b"\xff" * cut  # the caller's next read lands in the same buffer
        data = data[cut:]
    assert decoder.feed(memoryview(data)) == [EXAMPLES[1]]


def test_partial_frame_is_kept_until_complete() -> None:
    data = encode_frame(EXAMPLES[1])
    decoder = FrameDecoder(MIB)
    assert decoder.feed(data[:3]) == []
    assert decoder.feed(data[3:-1]) == []
    assert decoder.buffered_bytes == len(data) - 1
    assert decoder.feed(data[-1:] + data) == [EXAMPLES[1], EXAMPLES[1]]


# -- Malformed input ----------------------------------------------------------------------


def decode_error(data: bytes, max_frame_bytes: int = MIB) -> str:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(max_frame_bytes).feed(data)
    return str(info.value)


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(16 * MIB)
    with pytest.raises(
        ProtocolError, match="frame of 20000000 bytes exceeds max_frame_bytes 16777216"
    ):
        decoder.feed(struct.pack(">I", 20_000_000))
    # The stream is out of step now: the decoder refuses anything else.
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(encode_frame(EXAMPLES[0]))


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    data = encode_frame(EXAMPLES[0])
    assert FrameDecoder(len(data) - 4).feed(data) == [EXAMPLES[0]]
    assert "exceeds max_frame_bytes" in decode_error(data, max_frame_bytes=len(data) - 5)


def test_messages_before_a_bad_frame_are_discarded_with_it() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(MIB).feed(encode_frame(EXAMPLES[0]) + frame([99]))


AE_OK: list[Any] = [3, 5, "a", 10, 4, [[5, 11, 0, b"x"], [5, 12, 1, b""]], 11, 0]


def ae_with(position: int, value: Any) -> list[Any]:
    fields = list(AE_OK)
    fields[position] = value
    return fields


def entry_with(position: int, value: Any) -> list[Any]:
    entry: list[Any] = [5, 12, 1, b""]
    entry[position] = value
    return ae_with(5, [[5, 11, 0, b"x"], entry])


MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty payload", raw_frame(b""), "malformed msgpack"),
    ("truncated msgpack", raw_frame(frame(AE_OK)[4:-2]), "malformed msgpack"),
    ("garbage bytes", raw_frame(b"\xc1\xff\x00garbage"), "malformed msgpack"),
    ("trailing data", raw_frame(frame(AE_OK)[4:] + b"\x00"), "malformed msgpack"),
    ("not an array", frame({"type": 1}), "malformed msgpack"),  # maps are refused outright
    ("scalar", frame(5), "expected a message array, got 5"),
    ("empty array", frame([]), "expected a message array, got []"),
    ("unknown type", frame([99, 1, 2]), "unknown message type 99"),
    ("negative type", frame([-1]), "unknown message type -1"),
    ("string type", frame(["RequestVote"]), "unknown message type 'RequestVote'"),
    ("bool type", frame([True, 1, True, False]), "unknown message type True"),
    (
        "wrong arity short",
        frame([1, 7, "b", 42, 6, False]),
        "RequestVote: expected 6 fields, got 5",
    ),
    (
        "wrong arity long",
        frame([2, 7, True, False, False]),
        "RequestVoteResponse: expected 3 fields, got 4",
    ),
    (
        "wrong field type",
        frame([5, "7", "leader"]),
        "TimeoutNow field term: expected an integer, got '7'",
    ),
    (
        "float where int",
        frame([5, 7.0, "leader"]),
        "TimeoutNow field term: expected an integer, got 7.0",
    ),
    (
        "bool where int",
        frame([4, True, True, 1, 0, 0, 0, 0]),
        "AppendEntriesResponse field term: expected an integer, got True",
    ),
    (
        "int where bool",
        frame([2, 7, 1, False]),
        "RequestVoteResponse field vote_granted: expected a boolean, got 1",
    ),
    (
        "negative term",
        frame([5, -3, "x"]),
        "TimeoutNow field term: expected an integer >= 0, got -3",
    ),
    (
        "negative prev_log_index",
        frame(ae_with(3, -3)),
        "AppendEntries field prev_log_index: expected an integer >= 0, got -3",
    ),
    (
        "term above 2**63-1",
        frame([5, 2**63, "x"]),
        f"TimeoutNow field term: expected an integer <= {MAX_U63}, got {2**63}",
    ),
    (
        "bytes where string",
        frame([5, 1, b"x"]),
        "TimeoutNow field leader_id: expected a string, got b'x'",
    ),
    (
        "over-long id",
        frame([0, 1, "c", "n" * 129]),
        "Handshake field node_id: expected a string of 1..128 characters, got 129",
    ),
    ("much too long id", frame([0, 1, "c" * 1000, "n"]), "exceeds max_str_len"),
    (
        "empty id",
        frame([1, 1, "", 0, 0, False, False]),
        "RequestVote field candidate_id: expected a string of 1..128 characters, got 0",
    ),
    (
        "entries not an array",
        frame(ae_with(5, b"")),
        "AppendEntries field entries: expected an array of entries, got b''",
    ),
    (
        "non-consecutive entry indexes",
        frame(entry_with(1, 13)),
        "AppendEntries entries[1] index: expected 12 (entries must follow prev_log_index "
        "consecutively), got 13",
    ),
    (
        "first entry not after prev_log_index",
        frame(ae_with(5, [[5, 10, 0, b""]])),
        "AppendEntries entries[0] index: expected 11",
    ),
    (
        "bad entry kind",
        frame(entry_with(2, 7)),
        "AppendEntries entries[1] kind: expected one of 0, 1, 2, 3, 4, 5, got 7",
    ),
    ("bool entry kind", frame(entry_with(2, True)), "entries[1] kind: expected one of 0, 1, 2"),
    (
        "entry term zero",
        frame(entry_with(0, 0)),
        "AppendEntries entries[1] term: expected an integer in 1..5 (the message term), got 0",
    ),
    ("entry term above message term", frame(entry_with(0, 6)), "entries[1] term"),
    ("entry data not bytes", frame(entry_with(3, "text")), "entries[1] data: expected bytes"),
    (
        "entry wrong arity",
        frame(ae_with(5, [[5, 11, 0]])),
        "entries[0] expected an array [term, index, kind, data]",
    ),
    ("entry not an array", frame(ae_with(5, [7])), "entries[0] expected an array"),
    (
        "entries pass the largest index",
        frame([3, 5, "a", MAX_U63, 4, [[5, 2**63, 0, b""]], 0, 0]),
        "would pass the largest index",
    ),
    ("ext type", frame([5, msgpack.ExtType(1, b""), "x"]), "TimeoutNow field term"),
    ("ext type with data", raw_frame(b"\x93\x05\xd4\x01\x00\xa1x"), "malformed msgpack"),
    ("invalid utf-8", raw_frame(b"\x93\x05\x01\xa2\xff\xfe"), "malformed msgpack"),
    ("deep nesting", raw_frame(b"\x91" * 5000), "malformed msgpack"),
    ("request short", frame([8, 1, "join"]), "Request: expected 3 fields, got 2"),
    ("request long", frame([8, 1, "join", b"", b""]), "Request: expected 3 fields, got 4"),
    (
        "negative request id",
        frame([8, -1, "join", b""]),
        "Request field request_id: expected an integer >= 0, got -1",
    ),
    (
        "request id above 2**63-1",
        frame([9, 2**63, True, b""]),
        f"Response field request_id: expected an integer <= {MAX_U63}, got {2**63}",
    ),
    (
        "bool request id",
        frame([8, True, "join", b""]),
        "Request field request_id: expected an integer, got True",
    ),
    (
        "empty method",
        frame([8, 1, "", b""]),
        "Request field method: expected 1..64 ASCII characters, got ''",
    ),
    (
        "over-long method",
        frame([8, 1, "m" * 65, b""]),
        "Request field method: expected 1..64 ASCII characters, got str of length 65",
    ),
    (
        "non-ascii method",
        frame([8, 1, "jöin", b""]),
        "Request field method: expected 1..64 ASCII characters, got 'jöin'",
    ),
    (
        "bytes method",
        frame([8, 1, b"join", b""]),
        "Request field method: expected a string, got b'join'",
    ),
    ("much too long method", frame([8, 1, "m" * 1000, b""]), "exceeds max_str_len"),
    (
        "request body not bytes",
        frame([8, 1, "join", "text"]),
        "Request field body: expected bytes, got 'text'",
    ),
    (
        "response ok not bool",
        frame([9, 1, 1, b""]),
        "Response field ok: expected a boolean, got 1",
    ),
    (
        "response body not bytes",
        frame([9, 1, False, None]),
        "Response field body: expected bytes, got None",
    ),
    ("response short", frame([9, 1, True]), "Response: expected 3 fields, got 2"),
    ("type 10", frame([10, 1, True, b""]), "unknown message type 10"),
]


@pytest.mark.parametrize(
    ("data", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_raises_protocol_error(data: bytes, expected: str) -> None:
    message = decode_error(data)
    assert expected in message
    assert len(message) < 200


def large_ae(entries: list[Any]) -> list[Any]:
    return [3, 5, "a", 0, 0, entries, 0, 0]


def good_entries(count: int) -> list[Any]:
    return [[5, i + 1, 0, b"d"] for i in range(count)]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (large_ae([*good_entries(20), [5, 30, 0, b""]]), "entries[20] index: expected 21"),
        (large_ae([*good_entries(20), [5, 21, 0, b"", 1]]), "entries[20] expected an array"),
        (large_ae([*good_entries(20), {"a": 1}]), "malformed msgpack"),
        ([3, 5, "a", -1, 0, good_entries(20), 0, 0], "prev_log_index: expected an integer >= 0"),
        ([3, 5, "a", 0, 0, good_entries(20), 0, 0, 0], "malformed msgpack"),
    ],
)
def test_malformed_large_append_entries(fields: list[Any], expected: str) -> None:
    assert expected in decode_error(frame(fields))


def test_large_append_entries_truncated_or_with_extra_data() -> None:
    body = frame(large_ae(good_entries(20)))[4:]
    assert "malformed msgpack" in decode_error(raw_frame(body[:-1]))
    assert "malformed msgpack" in decode_error(raw_frame(body + b"\xc0"))
    # An entry count far beyond what the frame can hold is refused before reading entries.
    lying = b"\x98\x03\x05\xa1a\x00\x00\xdd\xff\xff\xff\xff" + b"\xc0" * 64
    assert "cannot fit" in decode_error(raw_frame(lying))


def test_nested_array_headers_cannot_allocate_much_more_than_the_frame() -> None:
    # Each array32 header claims ~1M items; msgpack would reserve the slots up front.
    body = b"\x98\x03" + b"\xdd\x00\x10\x00\x00" * 1000
    body += b"\xc0" * (MIB - len(body))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            FrameDecoder(2 * MIB).feed(raw_frame(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError, match="cannot encode Entry"):
        encode_frame(Entry(term=1, index=1))  # type: ignore[arg-type]


# -- Fuzzing: nothing but ProtocolError ever escapes ----------------------------------------


def check_decodes_or_refuses(data: bytes, max_frame_bytes: int = 64 * 1024) -> None:
    try:
        decoded = FrameDecoder(max_frame_bytes).feed(data)
    except ProtocolError:
        return
    for message in decoded:
        assert isinstance(
            message,
            Handshake
            | RequestVote
            | RequestVoteResponse
            | AppendEntries
            | AppendEntriesResponse
            | TimeoutNow
            | InstallSnapshot
            | InstallSnapshotResponse
            | Request
            | Response,
        )
        # Whatever was accepted is a valid message: it survives a round trip.
        assert round_trip(message) == message


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    check_decodes_or_refuses(data)
    check_decodes_or_refuses(raw_frame(data))


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_frame(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "fix"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and data:
            del data[position : position + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[position:]
        elif action == "fix" and len(data) >= 4:
            # Keep the length header consistent so the body mutation reaches the decoder.
            data[:4] = struct.pack(">I", len(data) - 4)
    return bytes(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_frames_decode_or_raise_protocol_error(data: bytes) -> None:
    check_decodes_or_refuses(data)


@given(messages, st.integers(0, 200), st.integers(0, 255))
def test_body_mutations_with_consistent_length_decode_or_raise(
    message: WireMessage, position: int, value: int
) -> None:
    body = bytearray(encode_frame(message)[4:])
    assume(position < len(body))
    body[position] = value
    check_decodes_or_refuses(raw_frame(bytes(body)))


def test_errors_about_huge_values_stay_short() -> None:
    assert "str of length 100" in decode_error(frame([5, "x" * 100, "a"]))
    assert "bytes of length 1000000" in decode_error(frame([5, b"x" * 1_000_000, "a"]))
    assert "an array of 7 items" in decode_error(frame([5, [b"x" * 1000] * 7, "a"]))
    assert "got [[an array of 1 items]]" in decode_error(frame([5, [[[[1]]]], "a"]))


def test_install_snapshot_with_a_bad_membership_is_refused() -> None:
    fields = [6, 3, "a", 10, 2, b"not json", 0, b"", True]
    assert "InstallSnapshot field membership" in decode_error(frame(fields))
    fields[5] = b'[["b","h:1",true],["a","h:2",true]]'
    assert "sorted" in decode_error(frame(fields))
    fields[5] = b"[]"
    fields[4] = 4
    assert "last_included_term" in decode_error(frame(fields))


def test_request_and_response_bodies_may_be_large() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: bodies are not bound by the small-array limit
    request = Request(request_id=3, method="apply", body=body)
    response = Response(request_id=3, ok=True, body=body)
    assert round_trip(request) == request
    assert round_trip(response) == response
    data = encode_frame(request)
    assert "exceeds max_frame_bytes" in decode_error(data, max_frame_bytes=len(data) - 5)
