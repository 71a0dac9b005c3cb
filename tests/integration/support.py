"""Helpers shared by the integration tests: free ports, node processes, in-process clusters."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tinyraft_trio import RaftConfig, RaftNode, Role, open_raft_node
from tinyraft_trio.testing import RecordingStateMachine, free_loopback_ports

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    (port,) = free_loopback_ports(1)
    return port


def environment(**variables: str) -> dict[str, str]:
    """This environment without NODE_*/RAFT_* settings, able to import the package, plus
    ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_", "RAFT_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(variables)
    return env


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM a process we started (by its handle), SIGKILL it if it lingers; its status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class TcpCluster:
    """Nodes on real TCP, each in its own task, so any one can be stopped or killed alone."""

    def __init__(self, nursery: trio.Nursery, size: int, *, election_timeout: float = 0.3) -> None:
        self.nursery = nursery
        self.election_timeout = election_timeout
        ports = free_loopback_ports(size)
        self.peers = {f"n{i}": f"127.0.0.1:{port}" for i, port in enumerate(ports, start=1)}
        self.nodes: dict[str, RaftNode] = {}
        self.machines: dict[str, RecordingStateMachine] = {}
        self._stops: dict[str, trio.Event] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._exited: dict[str, trio.Event] = {}

    async def start(self, node_id: str) -> None:
        config = RaftConfig(
            node_id=node_id,
            listen=self.peers[node_id],
            peers=self.peers,
            election_timeout=self.election_timeout,
            heartbeat_interval=self.election_timeout / 6,
        )
        machine = self.machines[node_id] = RecordingStateMachine()
        stop = self._stops[node_id] = trio.Event()
        scope = self._scopes[node_id] = trio.CancelScope()
        exited = self._exited[node_id] = trio.Event()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    async with open_raft_node(config, machine) as node:
                        self.nodes[node_id] = node
                        task_status.started()
                        await stop.wait()  # then leave the block: a graceful shutdown
            finally:
                exited.set()

        await self.nursery.start(run)

    async def stop(self, node_id: str) -> None:
        """Shut the node down gracefully (a leader hands leadership over first); return once
        it has left ``open_raft_node``."""
        self._stops.pop(node_id).set()
        self._scopes.pop(node_id)
        del self.nodes[node_id]
        await self._exited.pop(node_id).wait()

    def kill(self, node_id: str) -> None:
        """Cancel the node at once: its connections drop, no handover."""
        self._scopes.pop(node_id).cancel()
        self._stops.pop(node_id)
        self._exited.pop(node_id)
        del self.nodes[node_id]

    async def committing(self, role: str) -> str:
        """The id of the leader (``role`` "leader") or of a follower, once the leader has
        committed a command."""
        leader = await self.leader()
        await leader.apply(b"before")
        if role == "leader":
            return leader.id
        return next(node_id for node_id in self.nodes if node_id != leader.id)

    async def leader(self) -> RaftNode:
        """The running node that leads (other tasks' state: asked every 10 ms)."""
        while True:
            for node in self.nodes.values():
                if node.status().role is Role.LEADER:
                    return node
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_cluster(size: int = 3) -> AsyncIterator[TcpCluster]:
    """A ``TcpCluster`` of ``size`` nodes, all started; whatever still runs is cancelled on
    leaving the block."""
    async with trio.open_nursery() as nursery:
        cluster = TcpCluster(nursery, size)
        for node_id in cluster.peers:
            await cluster.start(node_id)
        yield cluster
        nursery.cancel_scope.cancel()


def unused_port() -> int:
    """A port nothing listens on (bound, then released, so connecting is refused)."""
    (port,) = free_loopback_ports(1)
    return port


def open_fds() -> int | None:
    """How many file descriptors this process has open (None where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def all_tasks() -> set[str]:
    """Names of every task in this trio run (the test's own included)."""
    names = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is not None:
            names.add(f"{task.name}@{id(task)}")
            pending.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return names


def record_os_writes(monkeypatch: pytest.MonkeyPatch, *, take: int | None = None) -> list[bytes]:
    """Patch ``os.write`` (the direct writes to idle sockets) to record each call's data.

    With ``take``, each call writes at most that many bytes, as a nearly full socket would.
    """
    writes: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        data = bytes(data)
        writes.append(data)
        return real_write(fd, data if take is None else data[:take])

    monkeypatch.setattr(os, "write", write)
    return writes
