"""Small state machines for tests and examples."""

from __future__ import annotations

import msgpack


class RecordingStateMachine:
    """Records every command it applies, in order; ``apply`` returns the command's position.

    Useful to check that every node applied the same commands in the same order, and that
    each acknowledged command was applied exactly once.
    """

    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def apply(self, command: bytes) -> object:
        self.commands.append(command)
        return len(self.commands)

    def query(self, query: bytes) -> object:
        """How many commands were applied (whatever ``query`` is)."""
        return len(self.commands)

    def snapshot(self) -> bytes:
        data: bytes = msgpack.packb(self.commands, use_bin_type=True)
        return data

    def restore(self, data: bytes) -> None:
        commands = msgpack.unpackb(data, raw=False)
        self.commands = [bytes(command) for command in commands]
