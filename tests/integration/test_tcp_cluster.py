"""A real three-node cluster over TCP on 127.0.0.1, in one Trio program."""

from __future__ import annotations

import socket

import trio

from tinyraft_trio import RaftConfig, RaftNode, Role, open_raft_node
from tinyraft_trio.testing import RecordingStateMachine


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TcpCluster:
    """Nodes on real TCP, each in its own task so any one can be shut down alone."""

    def __init__(self, nursery: trio.Nursery, size: int) -> None:
        self.nursery = nursery
        ports = free_ports(size)
        self.peers = {f"n{i}": f"127.0.0.1:{port}" for i, port in enumerate(ports, start=1)}
        self.nodes: dict[str, RaftNode] = {}
        self.machines: dict[str, RecordingStateMachine] = {}
        self.stops: dict[str, trio.Event] = {}

    async def start(self, node_id: str) -> None:
        config = RaftConfig(
            node_id=node_id,
            listen=self.peers[node_id],
            peers=self.peers,
            election_timeout=0.3,
            heartbeat_interval=0.05,
        )
        machine = self.machines[node_id] = RecordingStateMachine()

        stop = self.stops[node_id] = trio.Event()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with open_raft_node(config, machine) as node:
                self.nodes[node_id] = node
                task_status.started()
                await stop.wait()  # then leave the block: a graceful shutdown

        await self.nursery.start(run)

    def stop(self, node_id: str) -> None:
        self.stops.pop(node_id).set()
        del self.nodes[node_id]

    async def leader(self) -> RaftNode:
        while True:
            for node in self.nodes.values():
                if node.status().role is Role.LEADER:
                    return node
            await trio.sleep(0.01)


async def test_three_nodes_over_tcp_apply_commands_and_survive_leader_shutdown() -> None:
    """Election, 1,000 commands, leader shut down, new leader, equal state machines."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = TcpCluster(nursery, 3)
            for node_id in cluster.peers:
                await cluster.start(node_id)
            leader = await cluster.leader()

            async def propose(worker: int) -> None:
                for i in range(100):
                    await leader.apply(f"w{worker}-{i}".encode())

            async with trio.open_nursery() as clients:
                for worker in range(10):
                    clients.start_soon(propose, worker)
            assert len(cluster.machines[leader.id].commands) == 1000

            cluster.stop(leader.id)
            new_leader = await cluster.leader()
            assert new_leader.id != leader.id
            await new_leader.apply(b"after-failover")
            target = new_leader.status().commit_index
            for node in cluster.nodes.values():
                await node.wait_applied(target)
            first, second = (cluster.machines[i].commands for i in cluster.nodes)
            assert first == second
            assert len(first) == 1001
            assert cluster.machines[leader.id].commands == first[:1000]
            nursery.cancel_scope.cancel()


async def test_leaving_the_context_hands_leadership_over_without_an_election() -> None:
    """Shutting a leader down transfers leadership first: no election timeout is lost."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = TcpCluster(nursery, 3)
            for node_id in cluster.peers:
                await cluster.start(node_id)
            leader = await cluster.leader()
            await leader.apply(b"before")
            term = leader.status().term
            stopped_at = trio.current_time()
            cluster.stop(leader.id)
            new_leader = await cluster.leader()
            handover = trio.current_time() - stopped_at
            assert new_leader.status().term == term + 1  # one election, the transfer's
            assert handover < 0.3  # well under the election timeout (0.3 s, drawn up to 0.6)
            await new_leader.apply(b"after")
            nursery.cancel_scope.cancel()
