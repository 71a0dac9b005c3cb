"""The replicated key-value store, as a 3-node cluster inside one Trio program.

The state machine is ``tinyraft_trio.examples.kv.KeyValueStore`` (also the default app of
``tinyraft-trio node``). Run it:

    python examples/kvstore.py colour=blue shape=round

It starts three nodes on free loopback ports, writes each ``key=value`` through a follower
(which forwards it to the leader), reads every key back from another node with a
linearizable query, and prints each node's store. The same store over HTTP, one process per
node, is ``tinyraft-trio node --http HOST:PORT`` (needs ``pip install 'tinyraft-trio[http]'``);
``tinyraft-trio demo`` runs a whole cluster of it, crashes its leader and checks it recovers.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import trio

from tinyraft_trio import RaftConfig, open_raft_node
from tinyraft_trio.examples.kv import KeyValueStore, get_query, put_command
from tinyraft_trio.testing import free_loopback_ports


async def run_cluster(pairs: dict[str, str]) -> dict[str, dict[str, str]]:
    """Write ``pairs`` to a 3-node cluster; return each node's store once all applied them."""
    peers = {f"node{i}": f"127.0.0.1:{port}" for i, port in enumerate(free_loopback_ports(3), 1)}
    stores = {node_id: KeyValueStore() for node_id in peers}
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                open_raft_node(RaftConfig(node_id=node_id, listen=address, peers=peers), store)
            )
            for (node_id, address), store in zip(peers.items(), stores.values(), strict=True)
        ]
        with trio.fail_after(10):
            leader_id = await nodes[0].wait_for_leader()
        followers = [node for node in nodes if node.id != leader_id]
        for key, value in pairs.items():
            await followers[0].apply(put_command(key, value))  # forwarded to the leader
        for key, value in pairs.items():
            # Linearizable: the other follower sees every write that completed before.
            assert await followers[-1].query(get_query(key)) == value
        target = max(node.status().commit_index for node in nodes)
        with trio.fail_after(10):
            for node in nodes:
                await node.wait_applied(target)
    return {node_id: store.data for node_id, store in stores.items()}


def main(argv: list[str]) -> int:
    pairs = dict(arg.partition("=")[::2] for arg in argv or ["raft=trio", "answer=42"])
    result = trio.run(run_cluster, pairs)
    for node_id, data in result.items():
        print(f"{node_id}: " + " ".join(f"{key}={value}" for key, value in sorted(data.items())))
    return 0 if all(data == pairs for data in result.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
