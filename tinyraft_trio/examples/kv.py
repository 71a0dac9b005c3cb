"""A replicated key-value store: the ``tinyraft-trio node`` command's default app.

Commands and queries are msgpack arrays, built with the ``*_command`` helpers:

- ``["put", key, value]`` -> None
- ``["delete", key]`` -> whether the key existed
- ``["cas", key, expected, value]`` -> whether it swapped (``expected`` None: key absent)
- query ``["get", key]`` -> the value, or None

Keys and values are strings. The store is deterministic, as a state machine must be.
"""

from __future__ import annotations

from typing import Any

import msgpack


def put_command(key: str, value: str) -> bytes:
    return _pack(["put", key, value])


def delete_command(key: str) -> bytes:
    return _pack(["delete", key])


def cas_command(key: str, expected: str | None, value: str) -> bytes:
    return _pack(["cas", key, expected, value])


def get_query(key: str) -> bytes:
    return _pack(["get", key])


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value)
    return data


class KeyValueStore:
    """String keys to string values."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, command: bytes) -> object:
        try:
            operation = msgpack.unpackb(command)  # not _unpack: a call less per command
        except Exception:
            raise ValueError("not msgpack") from None
        # The common case first, without ``match``'s sequence-pattern checks (a fifth of
        # a follower's time under load).
        if type(operation) is list and len(operation) == 3 and operation[0] == "put":
            key, value = operation[1], operation[2]
            if type(key) is str and type(value) is str:
                self.data[key] = value
                return None
        match operation:
            case ["put", str(key), str(value)]:
                self.data[key] = value
                return None
            case ["delete", str(key)]:
                return self.data.pop(key, None) is not None
            case ["cas", str(key), expected, str(value)] if expected is None or isinstance(
                expected, str
            ):
                if self.data.get(key) != expected:
                    return False
                self.data[key] = value
                return True
        raise ValueError(f"not a key-value command: {operation!r}"[:200])

    def query(self, query: bytes) -> object:
        operation = _unpack(query)
        match operation:
            case ["get", str(key)]:
                return self.data.get(key)
        raise ValueError(f"not a key-value query: {operation!r}"[:200])

    def snapshot(self) -> bytes:
        return _pack(self.data)

    def restore(self, data: bytes) -> None:
        restored = msgpack.unpackb(data) if data else {}
        self.data = {str(key): str(value) for key, value in restored.items()}


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data)
    except Exception:
        raise ValueError("not msgpack") from None
