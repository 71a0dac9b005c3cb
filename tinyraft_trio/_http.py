"""The example key-value store's HTTP API, served next to a node (``node --http HOST:PORT``).

A small hand-written ASGI application, served by hypercorn's Trio worker inside the node's
own Trio program (the optional extra ``tinyraft-trio[http]``):

- ``PUT /kv/{key}`` (body: the value) -> 204 once committed;
- ``GET /kv/{key}`` -> 200 with the value, or 404; linearizable; ``?stale=true`` reads this
  node's state as it is;
- ``DELETE /kv/{key}`` -> 204;
- ``POST /kv/{key}/cas`` with JSON ``{"expect": <string or null>, "value": <string>}`` ->
  200 ``{"swapped": true}``, or 409 ``{"swapped": false}`` if the current value differed;
- ``GET /status`` -> this node's Raft state as JSON (works with any ``--app``).

Any node accepts every request: a follower forwards writes to the leader and asks it for a
read index. A key is one path segment, percent-encoded (``/`` in a key is ``%2F``); keys and
values are UTF-8, keys up to ``MAX_KEY_BYTES`` and values up to ``MAX_VALUE_BYTES`` (413
beyond). 503 means the request was certainly not applied (no leader within the request
timeout, or the node is shutting down); 504 means its outcome is unknown (leadership was
lost before it committed); 400 is a bad request. Every error body is JSON
``{"error": "..."}``.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

import trio

from ._exceptions import (
    ClusterUnavailableError,
    CommandFailedError,
    LeadershipLostError,
    NodeClosedError,
    NotLeaderError,
    OutcomeUnknownError,
    RaftError,
)
from ._node import RaftNode
from .examples.kv import cas_command, delete_command, get_query, put_command

__all__ = ["MAX_KEY_BYTES", "MAX_VALUE_BYTES", "KeyValueHttpApp", "serve_http"]

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 64 * 1024
_MAX_CAS_BODY = 2 * MAX_VALUE_BYTES * 6 + 1024
"""A CAS body holds two values JSON-escaped (at most 6 bytes per byte: ``\\u00XX``)."""
DEFAULT_REQUEST_TIMEOUT = 10.0

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_log = logging.getLogger("tinyraft_trio.http")


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class KeyValueHttpApp:
    """An ASGI application over a running ``RaftNode`` whose state machine is the KV store.

    Args:
        node: the node to serve.
        request_timeout: seconds a request may wait for a leader and a commit.
    """

    def __init__(self, node: RaftNode, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self.node = node
        self.request_timeout = request_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, headers, body = await self._handle(scope, receive)
        except _HttpError as error:
            status, headers, body = _json(error.status, {"error": error.message})
        except Exception as error:  # a bug must not take the node down: answer 500
            _log.exception("HTTP request failed")
            status, headers, body = _json(500, {"error": f"internal error: {error}"})
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.split(b"?", 1)[0]
        segments = raw_path.split(b"/")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if raw_path == b"/status":
            if method != "GET":
                raise _HttpError(405, "/status: only GET")
            return _json(200, self._status())
        if len(segments) not in (3, 4) or segments[0] != b"" or segments[1] != b"kv":
            raise _HttpError(404, "no such resource; see /kv/{key} and /status")
        key = _decode_key(segments[2])
        if len(segments) == 4:
            if segments[3] != b"cas":
                raise _HttpError(404, "no such resource; see /kv/{key}/cas")
            if method != "POST":
                raise _HttpError(405, "/kv/{key}/cas: only POST")
            return await self._cas(key, await _read_body(receive, _MAX_CAS_BODY))
        if method == "GET":
            stale = query.get("stale", ["false"])[-1].lower() in ("true", "1", "yes")
            value = await self._read(key, stale=stale)
            if value is None:
                raise _HttpError(404, f"not found: {key}")
            return 200, [(b"content-type", b"text/plain; charset=utf-8")], str(value).encode()
        if method == "PUT":
            value = _decode_value(await _read_body(receive, MAX_VALUE_BYTES))
            await self._write(put_command(key, value))
            return 204, [], b""
        if method == "DELETE":
            await self._write(delete_command(key))
            return 204, [], b""
        raise _HttpError(405, f"/kv/{{key}}: method {method} not allowed")

    async def _cas(self, key: str, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _HttpError(400, "cas: the body must be JSON") from None
        if not isinstance(document, dict) or set(document) != {"expect", "value"}:
            raise _HttpError(400, 'cas: expected {"expect": <string or null>, "value": <string>}')
        expect, value = document["expect"], document["value"]
        if not isinstance(value, str) or not (expect is None or isinstance(expect, str)):
            raise _HttpError(400, "cas: value must be a string and expect a string or null")
        for name, text in (("expect", expect), ("value", value)):
            if text is not None and len(_utf8(text, name)) > MAX_VALUE_BYTES:
                raise _HttpError(413, f"cas: {name} exceeds {MAX_VALUE_BYTES} bytes")
        swapped = await self._write(cas_command(key, expect, value))
        if swapped:
            return _json(200, {"swapped": True})
        return _json(409, {"swapped": False})

    def _status(self) -> dict[str, Any]:
        return self.node.status().summary()

    async def _read(self, key: str, *, stale: bool) -> object:
        try:
            with trio.fail_after(self.request_timeout):
                return await self.node.query(get_query(key), stale=stale)
        except trio.TooSlowError:
            raise _HttpError(503, "no leader confirmed the read in time") from None
        except (NotLeaderError, LeadershipLostError, ClusterUnavailableError, NodeClosedError) as e:
            raise _HttpError(503, f"read not served: {e}") from None

    async def _write(self, command: bytes) -> object:
        try:
            with trio.fail_after(self.request_timeout):
                return await self.node.apply(command)
        except trio.TooSlowError:
            raise _HttpError(504, "outcome unknown: no commit within the request timeout") from None
        except (NotLeaderError, ClusterUnavailableError, NodeClosedError) as error:
            raise _HttpError(503, f"not applied: {error}") from None
        except (LeadershipLostError, OutcomeUnknownError) as error:
            raise _HttpError(504, f"outcome unknown: {error}") from None
        except CommandFailedError as error:
            raise _HttpError(500, str(error)) from None
        except RaftError as error:
            raise _HttpError(503, f"not applied: {error}") from None


def _json(status: int, document: object) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [(b"content-type", b"application/json")], json.dumps(document).encode()


def _utf8(text: str, name: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise _HttpError(400, f"{name}: not valid UTF-8") from None


def _decode_key(segment: bytes) -> str:
    raw = unquote_to_bytes(segment)
    if not raw:
        raise _HttpError(400, "key: must not be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise _HttpError(413, f"key: exceeds {MAX_KEY_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _HttpError(400, "key: not valid UTF-8") from None


def _decode_value(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise _HttpError(400, "value: not valid UTF-8") from None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _HttpError(400, "the client went away")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, f"the body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def hypercorn_available() -> bool:
    """Whether the ``http`` extra (hypercorn) is installed."""
    try:
        importlib.import_module("hypercorn.trio")
    except ImportError:
        return False
    return True


async def serve_http(
    node: RaftNode,
    address: str,
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP API for ``node`` on ``address`` until cancelled, or until
    ``shutdown_trigger()`` returns: then it stops listening, closes idle connections and
    returns once the requests in progress are answered (for up to a second).

    ``task_status.started`` gets the bound URLs once the socket listens.

    Raises:
        ImportError: hypercorn (``tinyraft-trio[http]``) is not installed.
    """
    hypercorn_config = importlib.import_module("hypercorn.config")
    hypercorn_trio = importlib.import_module("hypercorn.trio")
    config = hypercorn_config.Config()
    config.bind = [address]
    config.accesslog = None
    config.graceful_timeout = 1.0
    app = KeyValueHttpApp(node, request_timeout=request_timeout)
    await hypercorn_trio.serve(
        app, config, shutdown_trigger=shutdown_trigger, task_status=task_status, mode="asgi"
    )
