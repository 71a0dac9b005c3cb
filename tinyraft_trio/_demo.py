"""``tinyraft-trio demo``: a local 3-node cluster, a leader crash, and a recovery, in seconds.

The demo starts three ``tinyraft-trio node`` processes of the example key-value store on free
loopback ports with temporary data directories, writes through a client while showing each
node's role, term and commit index, kills the leader with SIGKILL, measures how long until the
next write succeeds, keeps writing, restarts the old leader from its data directory, waits for
it to catch up, and checks that every node holds the same values. Every process it started is
stopped on the way out, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from ._cli_node import CommandError
from ._client import ClusterNodeStatus, RaftClient, connect
from ._core._types import Role
from ._ports import free_loopback_ports
from .examples.kv import get_query, put_command

Handler = Callable[[argparse.Namespace], int]

NODES = 3
TIMEOUT_MS = 300
WRITES_PER_PHASE = 15
STARTUP_SECONDS = 20.0
STOP_SECONDS = 10.0


def add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> Handler:
    subparsers.add_parser(
        "demo",
        help="run a local 3-node cluster, crash its leader, and watch it recover",
        description=(
            "Start three nodes of the example key-value store as local processes, write to "
            "them, kill the leader with SIGKILL, restart it, and check every node agrees. "
            "Takes a few seconds; every process it starts is stopped at the end."
        ),
    )
    return _run_demo


def _run_demo(args: argparse.Namespace) -> int:
    demo = Demo()
    try:
        ok = trio.run(demo.run)
    except BaseException as error:
        # Trio nurseries wrap what they raise in exception groups: report the one inside.
        leaves = list(_leaves(error))
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            raise KeyboardInterrupt from None
        if len(leaves) == 1 and leaves[0] is not error and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise
    finally:
        demo.stop_all()
    return 0 if ok else 1


def _leaves(error: BaseException) -> Iterator[BaseException]:
    nested = getattr(error, "exceptions", None)
    if isinstance(nested, tuple):
        for inner in nested:
            yield from _leaves(inner)
    else:
        yield error


class Demo:
    """The demo's processes and steps; ``stop_all`` is synchronous so it runs after trio."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tinyraft-demo-"))
        ports = free_loopback_ports(NODES)
        self.ids = [f"n{i}" for i in range(1, NODES + 1)]
        self.addresses = {
            nid: f"127.0.0.1:{port}" for nid, port in zip(self.ids, ports, strict=True)
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: list[int] = []
        self.expected: dict[str, str] = {}
        self.written = 0

    # -------------------------------------------------------------- processes

    def start(self, node_id: str) -> None:
        peers = [arg for nid, a in self.addresses.items() for arg in ("--peer", f"{nid}={a}")]
        command = [
            sys.executable,
            "-m",
            "tinyraft_trio",
            "node",
            "--id",
            node_id,
            "--listen",
            self.addresses[node_id],
            "--data-dir",
            str(self.directory / node_id),
            "--timeout-ms",
            str(TIMEOUT_MS),
            "--log-level",
            "WARNING",
            *peers,
        ]
        log = (self.directory / f"{node_id}.log").open("ab")
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        self.processes[node_id] = process
        self.started_pids.append(process.pid)
        print(f"  started {node_id} on {self.addresses[node_id]} (pid {process.pid})", flush=True)

    def stop_all(self) -> None:
        """Stop every process still running (SIGTERM, then SIGKILL), remove the temp dir."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for node_id, process in self.processes.items():
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"  {node_id} (pid {process.pid}) did not stop: killing it", flush=True)
                process.kill()
                process.wait()
        self.processes.clear()
        print(f"stopped every process the demo started (pids {self._pids()})", flush=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _pids(self) -> str:
        return ", ".join(str(pid) for pid in self.started_pids)

    def _check_alive(self) -> None:
        for node_id, process in self.processes.items():
            code = process.poll()
            if code is not None:
                log = (self.directory / f"{node_id}.log").read_text(errors="replace")
                tail = log.strip().splitlines()[-1:] or ["(no output)"]
                raise CommandError(f"node {node_id} exited with status {code}: {tail[0]}")

    # -------------------------------------------------------------- views

    async def statuses(self, client: RaftClient) -> dict[str, ClusterNodeStatus]:
        return {status.id: status for status in await client.status()}

    async def show(self, client: RaftClient, title: str) -> dict[str, ClusterNodeStatus]:
        statuses = await self.statuses(client)
        print(f"\n[{title}]", flush=True)
        print(f"  {'node':<5} {'role':<10} {'term':>5} {'commit':>7} {'applied':>8}")
        for node_id in self.ids:
            status = statuses.get(node_id)
            if status is None:
                print(f"  {node_id:<5} {'down':<10}")
            else:
                print(
                    f"  {node_id:<5} {status.role.value:<10} {status.term:>5} "
                    f"{status.commit_index:>7} {status.last_applied:>8}"
                )
        return statuses

    async def wait_for_leader(self, client: RaftClient, *, exclude: str | None = None) -> str:
        with trio.fail_after(STARTUP_SECONDS):
            while True:
                self._check_alive()
                leaders = [
                    s.id
                    for s in (await self.statuses(client)).values()
                    if s.role is Role.LEADER and s.id != exclude
                ]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.1)

    # -------------------------------------------------------------- writes

    async def write(self, client: RaftClient, count: int, title: str) -> None:
        for step in range(count):
            key = f"key-{self.written:03d}"
            value = f"value-{self.written}"
            await client.apply(put_command(key, value))
            self.expected[key] = value
            self.written += 1
            if step % 5 == 4:
                await self.show(client, f"{title}: {self.written} writes")

    # -------------------------------------------------------------- the demo

    async def run(self) -> bool:
        print(f"tinyraft-trio demo: {NODES} nodes of the key-value store in {self.directory}")
        for node_id in self.ids:
            self.start(node_id)
        print(f"demo processes: pids {self._pids()}", flush=True)
        addresses = list(self.addresses.values())
        async with connect(addresses, timeout=10.0) as client:
            started = trio.current_time()
            leader = await self.wait_for_leader(client)
            print(f"\nelected {leader} in {trio.current_time() - started:.2f} s")
            await self.show(client, "cluster formed")
            await self.write(client, WRITES_PER_PHASE, "writing")

            victim = leader
            process = self.processes[victim]
            print(f"\nkilling the leader {victim} (pid {process.pid}) with SIGKILL", flush=True)
            process.kill()
            await trio.to_thread.run_sync(process.wait)
            del self.processes[victim]
            killed_at = trio.current_time()
            await self.write(client, 1, "first write after the crash")
            failover = trio.current_time() - killed_at
            new_leader = await self.wait_for_leader(client, exclude=victim)
            print(f"\nnew leader: {new_leader}; failover took {failover:.2f} s (to the next write)")
            await self.show(client, f"{victim} is down")
            await self.write(client, WRITES_PER_PHASE, "writing with 2 of 3 nodes")

            print(f"\nrestarting {victim} from its data directory", flush=True)
            self.start(victim)
            restarted_at = trio.current_time()
            target = max(s.commit_index for s in (await self.statuses(client)).values())
            await self.wait_applied(client, target)
            catch_up = trio.current_time() - restarted_at
            print(f"{victim} caught up to index {target} in {catch_up:.2f} s")
            await self.show(client, f"{victim} is back")
            await self.write(client, 5, "writing with 3 nodes again")

            final = max(s.commit_index for s in (await self.statuses(client)).values())
            await self.wait_applied(client, final)
            await self.show(client, "every node applied everything")
        identical = await self.compare_stores()
        print("\nsummary")
        print(f"  writes acknowledged:   {self.written}")
        print(f"  leader killed:         {victim} (SIGKILL); new leader {new_leader}")
        print(f"  failover:              {failover:.2f} s until the next write succeeded")
        print(f"  restart catch-up:      {catch_up:.2f} s")
        print(f"  stores identical:      {'yes' if identical else 'NO'}")
        return identical

    async def wait_applied(self, client: RaftClient, index: int) -> None:
        with trio.fail_after(STARTUP_SECONDS):
            while True:
                self._check_alive()
                statuses = await self.statuses(client)
                if len(statuses) == NODES and all(
                    s.last_applied >= index for s in statuses.values()
                ):
                    return
                await trio.sleep(0.1)

    async def compare_stores(self) -> bool:
        """Read every written key from every node's own state (stale reads), and compare."""
        stores: dict[str, dict[str, object]] = {}
        for node_id, address in self.addresses.items():
            async with connect([address], timeout=5.0) as client:
                stores[node_id] = {
                    key: await client.query(get_query(key), stale=True) for key in self.expected
                }
        identical = True
        for node_id, store in stores.items():
            differing = [key for key, value in self.expected.items() if store[key] != value]
            if differing:
                identical = False
                print(f"  {node_id} differs on {len(differing)} keys, e.g. {differing[0]}")
        print(f"\nchecked {len(self.expected)} keys on each of {len(stores)} nodes")
        return identical
