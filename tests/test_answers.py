"""The answers a node relays (a forwarded ``ok`` names the leader after the result), and the
session entry a leader makes of a "submit" request."""

from __future__ import annotations

import msgpack

from tinyraft_trio._answers import leader_clock_ms, session_entry_data, with_leader_hint
from tinyraft_trio._batching import decode_batch_answer, encode_batch_answer

LEADER = "10.0.0.1:7000"


def test_a_forwarded_ok_gets_the_leaders_address_after_its_result_byte_for_byte() -> None:
    for result in [None, 7, "text", b"\x00\xff", [1, {"a": 2.5}], {3: "int key"}]:
        body = msgpack.packb(["ok", result])
        hinted = with_leader_hint("submit", body, LEADER)
        assert hinted == b"\x93" + body[1:] + msgpack.packb(LEADER)
        assert msgpack.unpackb(hinted, strict_map_key=False) == ["ok", result, LEADER]
    assert with_leader_hint("apply", msgpack.packb(["ok", 1]), LEADER) == msgpack.packb(
        ["ok", 1, LEADER]
    )


def test_other_answers_and_other_methods_go_back_as_they_came() -> None:
    for value in [["error", "ValueError", "no"], ["ok", 1, "x:1"], ["okay", 1], "ok"]:
        body = msgpack.packb(value)
        assert with_leader_hint("submit", body, LEADER) == body
    body = msgpack.packb(["ok", 1])
    assert with_leader_hint("members", body, LEADER) == body
    assert with_leader_hint("query", body, LEADER) == body
    for garbage in [b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb([[True], [1]])]:
        assert with_leader_hint("submit_batch", garbage, LEADER) == garbage


def test_each_ok_of_a_forwarded_batch_gets_the_hint() -> None:
    bodies = [
        msgpack.packb(["ok", 1]),
        msgpack.packb(["error", "KeyError", "k"]),
        msgpack.packb(["ok", None]),
    ]
    body = encode_batch_answer([True, True, True], bodies)
    answers = decode_batch_answer(with_leader_hint("submit_batch", body, LEADER), 3)
    assert answers is not None
    oks, hinted = answers
    assert oks == [True, True, True]
    assert [msgpack.unpackb(item) for item in hinted] == [
        ["ok", 1, LEADER],
        ["error", "KeyError", "k"],
        ["ok", None, LEADER],
    ]


def test_a_session_entry_carries_the_given_clock() -> None:
    body = msgpack.packb(["client-1", 7, b"command", 5])
    given = session_entry_data(body, 1234)
    assert given is not None
    assert msgpack.unpackb(given) == ["client-1", 7, 5, 1234, b"command"]
    assert session_entry_data(body, leader_clock_ms(lambda: 12.3456)) == session_entry_data(
        body, 12345
    )


def test_a_malformed_submit_body_has_no_session_entry() -> None:
    for fields in (
        [b"client-as-bytes", 7, b"command"],
        ["client-1", 0, b"command"],
        ["client-1", "7", b"command"],
        ["client-1", 7, "command-as-text"],
        ["client-1", 7, b"command", "not-a-number"],
        ["client-1", 7, b"command", -1],
        ["client-1", True, b"command"],
        {"client-1": 7},
        ["client-1", 7],
    ):
        assert session_entry_data(msgpack.packb(fields), 1234) is None, fields
    assert session_entry_data(b"\xc1", 1234) is None  # not msgpack
