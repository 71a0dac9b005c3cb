"""Batch requests: several "apply", "submit" or "query" requests to one node carried as one.

A client with many requests in flight pays per request: a frame to encode and decode, a
response to build and route, on both sides. When requests queue behind a busy connection
anyway, ``RpcClient`` sends the queued ones of a method as one ``<method>_batch`` request.
The node carries out each one exactly as if it had come alone, and answers once when all
are done (the queries of a batch share one read barrier, started after the batch arrived;
the leader proposes a batch of "apply"s, or of "submit"s, as one entry: ``EntryKind.BATCH``,
``EntryKind.SESSION_BATCH``).

Wire format (all msgpack):
- request body: an array of the single requests' bodies (each bytes), in order;
- answer with ``ok=True``: ``[oks, bodies]``, two arrays with one item per command, in
  order: the ``ok`` (bool) and ``body`` (bytes) of the answer the command would have had
  alone. Two flat arrays rather than a pair per command, so a client decoding thousands of
  answers makes no object per answer for Python's garbage collector to track;
- answer with ``ok=False`` (a node-level refusal or an RPC problem): it is every command's
  answer.
"""

from __future__ import annotations

import msgpack

from ._wire import packb, request_frame_head

__all__ = [
    "BATCH_METHOD_OF",
    "MAX_BATCH_REQUESTS",
    "SINGLE_METHOD_OF",
    "decode_batch_answer",
    "decode_batch_body",
    "encode_batch_answer",
    "encode_batch_body",
    "encode_batch_frame",
    "new_batch_packer",
]

BATCH_METHOD_OF = {"apply": "apply_batch", "submit": "submit_batch", "query": "query_batch"}
"""The methods that may be batched, and the batch method for each."""

SINGLE_METHOD_OF = {batch: single for single, batch in BATCH_METHOD_OF.items()}

MAX_BATCH_REQUESTS = 1024
"""At most this many requests go in one batch (bounds the node's work per frame)."""


_BYTES_ONLY = {bytes}
_BOOL_ONLY = {bool}


def encode_batch_body(bodies: list[bytes]) -> bytes:
    body: bytes = packb(bodies)
    return body


def new_batch_packer() -> msgpack.Packer:
    """A packer for ``encode_batch_frame``: one per client, used from its event loop only
    (between packing and ``reset`` it holds the batch, which another user would clobber)."""
    return msgpack.Packer(use_bin_type=True, autoreset=False)


def encode_batch_frame(
    request_id: int, method: str, bodies: list[bytes], packer: msgpack.Packer
) -> bytes:
    """The frame of ``Request(request_id, method, encode_batch_body(bodies))``, as
    ``encode_frame`` makes it, with each body copied once on the way: into the packer,
    whose buffer goes into the frame as it is.

    The plain way copies a batch three times (into a packer, out of it as the body, into
    the frame) and allocates two buffers of its size, a megabyte for a thousand 1 KiB
    requests, which this VM must fault in afresh more often than not. ``packer`` comes from
    ``new_batch_packer`` and is left empty.
    """
    try:
        packer.pack(bodies)
        with packer.getbuffer() as body:
            return b"".join((request_frame_head(request_id, method, len(body)), body))
    finally:
        packer.reset()


def decode_batch_body(body: bytes) -> list[bytes] | None:
    """The single requests' bodies, or None if ``body`` is not a valid batch."""
    try:
        bodies = msgpack.unpackb(body)
    except Exception:
        return None
    if (
        type(bodies) is not list
        or not 0 < len(bodies) <= MAX_BATCH_REQUESTS
        or set(map(type, bodies)) != _BYTES_ONLY  # checked without a Python step per item
    ):
        return None
    return bodies


def encode_batch_answer(oks: list[bool], bodies: list[bytes]) -> bytes:
    """The body of an ``ok=True`` answer: each command's ``ok`` and ``body``, in order."""
    body: bytes = packb([oks, bodies])
    return body


def decode_batch_answer(
    body: bytes, count: int | None = None
) -> tuple[list[bool], list[bytes]] | None:
    """The ``oks`` and ``bodies`` of the answers (``count`` of them, if given) in an
    ``ok=True`` batch answer, or None if it is malformed."""
    try:
        answer = msgpack.unpackb(body)
    except Exception:
        return None
    if type(answer) is not list or len(answer) != 2:
        return None
    oks, bodies = answer
    if count is None and type(oks) is list:
        count = len(oks)
    if (
        type(oks) is not list
        or type(bodies) is not list
        or len(oks) != count
        or len(bodies) != count
        or (count and (set(map(type, oks)) != _BOOL_ONLY or set(map(type, bodies)) != _BYTES_ONLY))
    ):
        return None
    return oks, bodies
