"""Batch requests: several "apply" (or "submit") requests to one node carried as one.

A client with many commands in flight pays per request: a frame to encode and decode, a
response to build and route, on both sides. When requests queue behind a busy connection
anyway, ``RpcClient`` sends the queued ones of a method as one ``<method>_batch`` request.
The node carries out each command exactly as if it had come alone, and answers once when
all are done.

Wire format (all msgpack):
- request body: an array of the single requests' bodies (each bytes), in order;
- answer with ``ok=True``: an array of ``[ok, body]`` pairs, one per command, in order, each
  the answer the command would have had alone;
- answer with ``ok=False`` (a node-level refusal or an RPC problem): it is every command's
  answer.
"""

from __future__ import annotations

import msgpack

__all__ = [
    "BATCH_METHOD_OF",
    "MAX_BATCH_REQUESTS",
    "SINGLE_METHOD_OF",
    "decode_batch_answer",
    "decode_batch_body",
    "encode_batch_answer",
    "encode_batch_body",
]

BATCH_METHOD_OF = {"apply": "apply_batch", "submit": "submit_batch"}
"""The methods that may be batched, and the batch method for each."""

SINGLE_METHOD_OF = {batch: single for single, batch in BATCH_METHOD_OF.items()}

MAX_BATCH_REQUESTS = 1024
"""At most this many requests go in one batch (bounds the node's work per frame)."""


def encode_batch_body(bodies: list[bytes]) -> bytes:
    body: bytes = msgpack.packb(bodies)
    return body


def decode_batch_body(body: bytes) -> list[bytes] | None:
    """The single requests' bodies, or None if ``body`` is not a valid batch."""
    try:
        bodies = msgpack.unpackb(body)
    except Exception:
        return None
    if (
        type(bodies) is not list
        or not 0 < len(bodies) <= MAX_BATCH_REQUESTS
        or any(type(item) is not bytes for item in bodies)
    ):
        return None
    return bodies


def encode_batch_answer(answers: list[tuple[bool, bytes]]) -> bytes:
    body: bytes = msgpack.packb(answers)
    return body


def decode_batch_answer(body: bytes, count: int) -> list[tuple[bool, bytes]] | None:
    """The ``count`` answers in an ``ok=True`` batch answer, or None if it is malformed."""
    try:
        answers = msgpack.unpackb(body)
    except Exception:
        return None
    if type(answers) is not list or len(answers) != count:
        return None
    for answer in answers:
        if (
            type(answer) is not list
            or len(answer) != 2
            or type(answer[0]) is not bool
            or type(answer[1]) is not bytes
        ):
            return None
    return answers
