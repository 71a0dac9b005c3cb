"""The word tracker from tinyraft's Go days, as a 3-node tinyraft_trio cluster over TCP.

Each node runs the same ``WordTracker`` state machine; words applied through the leader
are replicated to every node. Run it:

    python examples/wordtracker.py alpha beta gamma

It starts three nodes in this process on free loopback ports, waits for a leader, applies
each word, and prints the words every node holds.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import msgpack
import trio

import tinyraft_trio
from tinyraft_trio import RaftConfig, open_raft_node
from tinyraft_trio.testing import free_loopback_ports


class WordTracker:
    """A replicated list of words. ``apply(word)`` adds a word and returns how many there are."""

    def __init__(self) -> None:
        self.words: list[str] = []

    def apply(self, command: bytes) -> object:
        word = command.decode()
        if not word.isprintable() or not word:
            raise ValueError(f"not a word: {word!r}")
        self.words.append(word)
        return len(self.words)

    def snapshot(self) -> bytes:
        data: bytes = msgpack.packb(self.words)
        return data

    def restore(self, data: bytes) -> None:
        self.words = list(msgpack.unpackb(data))


async def run_cluster(words: list[str]) -> dict[str, list[str]]:
    """Start three nodes, apply ``words`` through the leader, return each node's words."""
    ports = free_loopback_ports(3)
    peers = {f"node{i}": f"127.0.0.1:{port}" for i, port in enumerate(ports, start=1)}
    trackers = {node_id: WordTracker() for node_id in peers}
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                open_raft_node(
                    RaftConfig(node_id=node_id, listen=address, peers=peers),
                    trackers[node_id],
                )
            )
            for node_id, address in peers.items()
        ]
        with trio.fail_after(10):
            leader_id = await nodes[0].wait_for_leader()
        leader = nodes[[node.id for node in nodes].index(leader_id)]
        for word in words:
            await leader.apply(word.encode())
        # Wait until every node has applied everything the leader has.
        target = leader.status().commit_index
        with trio.fail_after(10):
            for node in nodes:
                await node.wait_applied(target)
    return {node_id: tracker.words for node_id, tracker in trackers.items()}


def main(argv: list[str]) -> int:
    words = argv or ["raft", "on", "trio"]
    result = trio.run(run_cluster, words)
    for node_id, node_words in result.items():
        print(f"{node_id}: {' '.join(node_words)}")
    print(f"tinyraft_trio {tinyraft_trio.__version__}: all nodes agree", file=sys.stderr)
    return 0 if len({tuple(w) for w in result.values()}) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
