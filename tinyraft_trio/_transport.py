"""How nodes reach each other: the Transport protocol the node drives.

A transport delivers whole Raft messages between nodes, identified by node id. Delivery is
best effort: Raft tolerates lost, delayed and duplicated messages, so a transport drops rather
than blocks when a peer is slow or unreachable. ``TcpTransport`` (msgpack frames over TCP) is the
default; ``tinyraft_trio.testing.MemoryNetwork`` provides one in memory for simulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from ._core._messages import Message
from ._core._types import NodeId

MessageHandler = Callable[[NodeId, Message], None]
"""Called once for each message that arrives, with the sender's id. Must not block."""

AddressBook = Callable[[NodeId], "str | None"]
"""Gives the current ``"host:port"`` of a peer, or None if the node does not know it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportStatistics:
    """A snapshot of a transport's counters."""

    messages_sent: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    """Messages discarded before sending: peer unreachable, queue full, or connection lost."""
    connections_rejected: int = 0
    """Inbound connections closed for bad input: bad handshake, oversized or malformed frame."""


class Transport(Protocol):
    """What the node needs from a network."""

    async def serve(
        self,
        node_id: NodeId,
        deliver: MessageHandler,
        address_of: AddressBook,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept peers' connections and deliver their messages; run outbound connections.

        Calls ``task_status.started()`` once peers can connect. Never returns; cancelling it
        closes every connection and listener the transport opened.
        """
        ...

    def send_nowait(self, to: NodeId, message: Message) -> None:
        """Queue ``message`` for peer ``to`` and return at once.

        Only valid while ``serve`` runs. The message may be dropped (peer unknown,
        unreachable or too slow); Raft retries what matters.
        """
        ...

    def statistics(self) -> TransportStatistics:
        """Return the transport's counters."""
        ...
