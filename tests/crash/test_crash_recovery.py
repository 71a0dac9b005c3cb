"""Crash tests: Raft nodes as real processes, killed with SIGKILL mid-load and restarted.

Reference: DESIGN.md §5 (storage) and §7 tier 4. Each node is ``node_process.py`` in its own
process with its own data directory; the test drives it over a small JSON control port.

The main test runs a 3-node cluster under continuous writes from several concurrent clients
while nodes (the leader included; sometimes two at once; sometimes again while they are still
loading their data directory) are SIGKILLed at seeded random moments and restarted from their
data directories; once, all three are killed at the same moment. At the end every
acknowledged command must be on every node exactly once, in the same order everywhere, at
the position its acknowledgement reported, and commands whose outcome was unknown at most
once; then the idle cluster is killed and restarted once more and must recover exactly that.
Small snapshot thresholds make snapshots, log compaction and InstallSnapshot happen all along.

The other tests check, with real processes, the rest of DESIGN.md §5: a torn final record is
cut with a warning, damage before the tail refuses to start, and a locked data dir refuses a
second process.

The seed is printed; replay a schedule with ``pytest tests/crash --seed N`` (or the
``CRASH_SEED`` environment variable). Process timing is not deterministic, so a seed replays
the fault schedule (its moments and choices), not the exact interleaving.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from tinyraft_trio.testing import free_loopback_ports

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

NODE_SCRIPT = Path(__file__).resolve().with_name("node_process.py")
REPO_ROOT = Path(__file__).resolve().parents[2]

START_TIMEOUT = 30.0
"""Longest a node process may take to print its ready line (a slow CI box imports slowly)."""
APPLY_TIMEOUT = 4.0
"""How long a node waits for one command to be applied before answering "unknown"."""
REQUEST_TIMEOUT = 15.0
"""How long the test waits for any control reply before treating the node as unresponsive."""
REAP_TIMEOUT = 10.0

WRITERS = 4
CHAOS_SECONDS = 30.0
SNAPSHOT_THRESHOLD = 50
TRAILING_ENTRIES = 10


class NotDelivered(Exception):
    """The request never reached the node (it is down): nothing happened there."""


class ReplyLost(Exception):
    """The request may have reached the node, but no reply came back: outcome unknown."""


class StartFailed(Exception):
    """A node process exited (or hung) before printing its ready line."""

    def __init__(self, node_id: str, returncode: int | None, tail: str) -> None:
        self.returncode = returncode
        super().__init__(f"{node_id} did not start (exit status {returncode}); log tail:\n{tail}")


@dataclass
class NodeHandle:
    node_id: str
    listen: str
    data_dir: Path
    log_path: Path
    process: trio.Process | None = None
    control: tuple[str, int] | None = None
    starts: int = 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _sigkill(process: trio.Process) -> None:
    # returncode polls without reaping a still-running child, so while it is None the pid
    # is still our child's and cannot have been reused.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


async def _reap(process: trio.Process) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(REAP_TIMEOUT):
        await process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                await stream.aclose()


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return bytes(data)


class ProcessCluster:
    """Node processes on 127.0.0.1, each with its own data directory and log file."""

    def __init__(self, base: Path, size: int) -> None:
        self.base = base
        self.events: list[str] = []
        self.started_at = trio.current_time()
        self.handles: dict[str, NodeHandle] = {}
        self._assign_ports([f"n{i}" for i in range(1, size + 1)])

    def _assign_ports(self, node_ids: list[str]) -> None:
        ports = free_loopback_ports(len(node_ids))
        for node_id, port in zip(node_ids, ports, strict=True):
            self.handles[node_id] = NodeHandle(
                node_id=node_id,
                listen=f"127.0.0.1:{port}",
                data_dir=self.base / node_id / "data",
                log_path=self.base / node_id / "node.log",
            )
            (self.base / node_id).mkdir(parents=True, exist_ok=True)

    @property
    def peers(self) -> dict[str, str]:
        return {node_id: handle.listen for node_id, handle in self.handles.items()}

    def log(self, message: str) -> None:
        self.events.append(f"{trio.current_time() - self.started_at:8.3f}s {message}")

    def command_line(self, handle: NodeHandle) -> list[str]:
        args = [
            sys.executable,
            str(NODE_SCRIPT),
            "--id",
            handle.node_id,
            "--listen",
            handle.listen,
            "--control",
            "127.0.0.1:0",
            "--election-timeout",
            "0.3",
            "--heartbeat-interval",
            "0.05",
            "--snapshot-threshold",
            str(SNAPSHOT_THRESHOLD),
            "--trailing-entries",
            str(TRAILING_ENTRIES),
        ]
        for node_id, address in self.peers.items():
            args += ["--peer", f"{node_id}={address}"]
        return [*args, "--data-dir", str(handle.data_dir)]

    async def start_new_cluster(self) -> None:
        """Start every node for the first time; if a port we picked got taken meanwhile,
        start afresh on new ones (the addresses are part of what nodes store)."""
        for attempt in range(5):
            try:
                async with trio.open_nursery() as nursery:
                    for node_id in self.handles:
                        nursery.start_soon(self.start, node_id, 1)
                return
            except BaseException as exc:
                await self.kill_all()
                if attempt == 4 or not _only_address_in_use(exc):
                    raise
                self.log("a port was taken before the first start; choosing new ports")
                for handle in self.handles.values():
                    shutil.rmtree(handle.data_dir, ignore_errors=True)
                self._assign_ports(list(self.handles))

    async def restart_all(self) -> None:
        """Start every node from its data dir, concurrently, on its usual port."""
        async with trio.open_nursery() as nursery:
            for node_id in self.handles:
                nursery.start_soon(self.start, node_id)

    async def start(self, node_id: str, attempts: int = 40) -> None:
        """Start ``node_id`` from its data dir; retry while its fixed Raft port is in use."""
        handle = self.handles[node_id]
        assert handle.process is None, f"{node_id} is already running"
        for attempt in range(attempts):
            try:
                await self._start_once(handle)
                return
            except StartFailed as exc:
                if exc.returncode != 4 or attempt == attempts - 1:
                    raise
                self.log(f"{node_id}: listen address in use; retrying")
                await trio.sleep(0.25)

    async def _spawn(self, handle: NodeHandle) -> trio.Process:
        handle.starts += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        with handle.log_path.open("ab") as log_file:
            log_file.write(f"===== start #{handle.starts} =====\n".encode())
            log_file.flush()
            process = await trio.lowlevel.open_process(
                self.command_line(handle),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        handle.process = process
        return process

    async def kill_while_starting(self, node_id: str, after: float) -> None:
        """Start ``node_id`` and SIGKILL it ``after`` seconds later, ready or not (so while
        it may still be loading its data dir)."""
        handle = self.handles[node_id]
        assert handle.process is None, f"{node_id} is already running"
        process = await self._spawn(handle)
        await trio.sleep(after)
        self.log(f"{node_id}: SIGKILL {after:.3f}s after spawning it (pid {process.pid})")
        await self.kill(node_id)

    async def _start_once(self, handle: NodeHandle) -> None:
        process = await self._spawn(handle)
        assert process.stdout is not None
        line = b""
        with trio.move_on_after(START_TIMEOUT):
            line = await _read_line(process.stdout)
        if not line.startswith(b"ready control="):
            _sigkill(process)
            await _reap(process)
            handle.process = None
            raise StartFailed(handle.node_id, process.returncode, handle.log_tail())
        host, _, port = line.decode().strip().removeprefix("ready control=").rpartition(":")
        handle.control = (host, int(port))
        self.log(f"{handle.node_id}: started (pid {process.pid}, start #{handle.starts})")

    async def kill(self, node_id: str) -> None:
        await self.kill_many([node_id])

    async def kill_all(self) -> None:
        await self.kill_many(list(self.handles))

    async def kill_many(self, node_ids: list[str]) -> None:
        """SIGKILL these nodes back to back (the same moment, as far as they can tell)."""
        processes = []
        killed = []
        for node_id in node_ids:
            handle = self.handles[node_id]
            handle.control = None
            if handle.process is not None:
                _sigkill(handle.process)
                processes.append(handle.process)
                killed.append(f"{node_id} (pid {handle.process.pid})")
                handle.process = None
        if killed:
            self.log(f"SIGKILL {', '.join(killed)}")
        for process in processes:
            await _reap(process)

    async def request(
        self, node_id: str, payload: dict[str, Any], reply_within: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        """Send one control request to ``node_id`` and return its reply.

        Raises:
            NotDelivered: the node is down or refused the connection.
            ReplyLost: the connection broke or timed out after the request was sent.
        """
        address = self.handles[node_id].control
        if address is None:
            raise NotDelivered(f"{node_id} is down")
        try:
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream(*address)
        except (OSError, trio.TooSlowError) as exc:
            raise NotDelivered(f"{node_id}: {exc}") from None
        async with stream:
            try:
                with trio.fail_after(reply_within):
                    await stream.send_all(json.dumps(payload).encode() + b"\n")
                    line = await _read_line(stream)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                raise ReplyLost(f"{node_id}: {type(exc).__name__}: {exc}") from None
        if not line.endswith(b"\n"):
            raise ReplyLost(f"{node_id}: the connection closed before a reply")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def state(self, node_id: str, *, commands: bool = True) -> dict[str, Any] | None:
        try:
            return await self.request(node_id, {"op": "state", "commands": commands})
        except (NotDelivered, ReplyLost):
            return None

    async def find_leader(self) -> str | None:
        """The live node that says it leads in the highest term, if any."""
        best: tuple[int, str] | None = None
        for node_id in self.handles:
            state = await self.state(node_id, commands=False)
            if state is None or state["role"] != "leader":
                continue
            if best is None or state["term"] > best[0]:
                best = (state["term"], node_id)
        return None if best is None else best[1]

    async def shutdown(self) -> None:
        """Kill every process still running. Safe in ``finally``; never leaves one behind."""
        with trio.CancelScope(shield=True):
            await self.kill_all()

    def diagnostics(self) -> str:
        parts = ["events:", *self.events]
        for handle in self.handles.values():
            parts += [f"---- {handle.node_id} log tail ({handle.log_path}) ----", handle.log_tail()]
        return "\n".join(parts)


def _only_address_in_use(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_address_in_use(inner) for inner in exc.exceptions)
    return isinstance(exc, StartFailed) and exc.returncode == 4


@dataclass
class Outcome:
    command: bytes
    writer: int
    sent: float
    """When the one attempt that may have reached a node was sent (trio clock); earlier
    attempts were refused (not the leader, node down), so nothing came of them."""
    acked: float | None = None
    result: int | None = None


@dataclass
class Client:
    """Writers that apply unique commands through whichever node leads, and what came back."""

    cluster: ProcessCluster
    rng: random.Random
    leader_hint: str | None = None
    acknowledged: dict[bytes, Outcome] = field(default_factory=dict)
    unknown: dict[bytes, Outcome] = field(default_factory=dict)
    abandoned: set[bytes] = field(default_factory=set)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    async def submit(self, command: bytes, writer: int, stop: trio.Event | None = None) -> bool:
        """Apply ``command`` somewhere; record the outcome. Returns True when acknowledged.

        Retries only where nothing can have happened (not the leader; node down). Gives up
        on such retries once ``stop`` is set, recording the command as abandoned.
        """
        while True:
            if stop is not None and stop.is_set():
                self.abandoned.add(command)
                return False
            target = self.leader_hint or self.rng.choice(sorted(self.cluster.handles))
            sent = trio.current_time()
            try:
                reply = await self.cluster.request(
                    target, {"op": "apply", "command": command.hex(), "timeout": APPLY_TIMEOUT}
                )
            except NotDelivered:
                self.reasons["not delivered"] += 1
                self.leader_hint = None
                await trio.sleep(0.02)
                continue
            except ReplyLost as exc:
                self.reasons["reply lost"] += 1
                self.unknown[command] = Outcome(command, writer, sent)
                self.cluster.log(f"unknown outcome for {command!r}: {exc}")
                self.leader_hint = None
                return False
            if "not_leader" in reply:
                self.reasons["not leader"] += 1
                self.leader_hint = reply["not_leader"]
                if self.leader_hint is None or self.leader_hint == target:
                    self.leader_hint = None
                    await trio.sleep(0.05)
                continue
            outcome = Outcome(command, writer, sent)
            if "ok" in reply:
                outcome.acked = trio.current_time()
                outcome.result = reply["ok"]
                self.acknowledged[command] = outcome
                self.leader_hint = target
                return True
            # {"unknown": ...} or {"error": ...}: it may have been appended; never retried.
            reason = str(reply.get("unknown") or reply.get("error"))
            self.reasons[reason.split(":")[0]] += 1
            self.unknown[command] = outcome
            self.leader_hint = None
            return False

    async def write(self, writer: int, stop: trio.Event) -> None:
        number = 0
        while not stop.is_set():
            await self.submit(f"w{writer}-{number}".encode(), writer, stop)
            number += 1


async def run_chaos(cluster: ProcessCluster, rng: random.Random, duration: float) -> dict[str, int]:
    """SIGKILL and restart nodes at seeded random moments; once, all of them at once."""
    counts = collections.Counter[str]()
    deadline = trio.current_time() + duration
    kill_all_at = trio.current_time() + duration * rng.uniform(0.35, 0.65)
    killed_all = False
    node_ids = sorted(cluster.handles)
    while trio.current_time() < deadline:
        await trio.sleep(rng.uniform(0.3, 1.5))
        if not killed_all and trio.current_time() >= kill_all_at:
            killed_all = True
            await cluster.kill_all()
            counts["kill all"] += 1
            counts["killed"] += len(node_ids)
            await trio.sleep(rng.uniform(0.0, 0.5))
            await cluster.restart_all()
            counts["restarted"] += len(node_ids)
            continue
        roll = rng.random()
        if roll < 0.15:
            victims = rng.sample(node_ids, 2)  # a majority down: writes stall meanwhile
        elif roll < 0.6:
            leader = await cluster.find_leader()
            victims = [leader if leader is not None else rng.choice(node_ids)]
            if leader is not None:
                counts["leader killed"] += 1
        else:
            victims = [rng.choice(node_ids)]
        downtime = rng.choice([0.0, rng.uniform(0.05, 0.5), rng.uniform(1.0, 3.0)])
        kill_while_starting = rng.random() < 0.2
        await cluster.kill_many(victims)
        counts["killed"] += len(victims)
        await trio.sleep(downtime)
        for victim in victims:
            if kill_while_starting:
                await cluster.kill_while_starting(victim, rng.uniform(0.05, 0.6))
                counts["killed while starting"] += 1
            await cluster.start(victim)
            counts["restarted"] += 1
    return dict(counts)


def check_histories(
    client: Client, histories: dict[str, list[bytes]], final_command: bytes
) -> None:
    """Every acknowledged command exactly once everywhere, one order, nothing invented."""
    node_ids = sorted(histories)
    reference = histories[node_ids[0]]
    for node_id in node_ids[1:]:
        other = histories[node_id]
        if other != reference:
            first_difference = next(
                (i for i, (a, b) in enumerate(zip(reference, other, strict=False)) if a != b),
                min(len(reference), len(other)),
            )
            raise AssertionError(
                f"{node_ids[0]} and {node_id} applied different sequences: lengths "
                f"{len(reference)} and {len(other)}, first difference at position "
                f"{first_difference + 1}: {reference[first_difference : first_difference + 3]} "
                f"vs {other[first_difference : first_difference + 3]}"
            )
    duplicates = [c for c, n in collections.Counter(reference).items() if n > 1]
    assert not duplicates, f"applied more than once: {duplicates[:10]}"
    position = {command: i + 1 for i, command in enumerate(reference)}
    missing = [c for c in client.acknowledged if c not in position]
    assert not missing, f"{len(missing)} acknowledged commands were lost: {missing[:10]}"
    assert final_command in position
    wrong_position = [
        (c, o.result, position[c])
        for c, o in client.acknowledged.items()
        if o.result != position[c]
    ]
    assert not wrong_position, f"acknowledged result != position applied: {wrong_position[:10]}"
    known = client.acknowledged.keys() | client.unknown.keys()
    invented = [c for c in reference if c not in known]
    assert not invented, f"applied but never (possibly) accepted: {invented[:10]}"
    # Linearizability of writes: a command acknowledged before another was first sent must
    # come first. Walk positions from the end, keeping the earliest acknowledgement seen.
    earliest_ack_after = float("inf")
    earliest_command: bytes | None = None
    for command in reversed(reference):
        outcome = client.acknowledged.get(command) or client.unknown[command]
        assert earliest_ack_after >= outcome.sent, (
            f"{earliest_command!r} was acknowledged before {command!r} was sent, "
            "yet applied after it"
        )
        if outcome.acked is not None and outcome.acked < earliest_ack_after:
            earliest_ack_after, earliest_command = outcome.acked, command


def _seed(request: pytest.FixtureRequest) -> int:
    option = request.config.getoption("--seed")
    if option is not None:
        return int(option)
    if os.environ.get("CRASH_SEED"):
        return int(os.environ["CRASH_SEED"])
    return random.SystemRandom().randrange(2**32)


async def converge(cluster: ProcessCluster, client: Client, tag: str) -> dict[str, list[bytes]]:
    """Write one more command through the leader, wait until every node applied it, and
    return each node's applied commands (and check that no node's storage failed)."""
    number = 0
    with trio.fail_after(60):
        while not await client.submit(f"{tag}-{number}".encode(), -1):
            number += 1
    cluster.log(f"{tag}-{number} acknowledged")
    # The leader's commit index covers the acknowledged command, and no node's exceeds the
    # leader's; the node that answered may be a follower (it forwards), whose commit index
    # can lag by the leader's _COMMIT_LINGER.
    states = [await cluster.state(node_id, commands=False) for node_id in cluster.handles]
    target = max(state["commit_index"] for state in states if state is not None)
    histories: dict[str, list[bytes]] = {}
    snapshots: dict[str, int] = {}
    for node_id in sorted(cluster.handles):
        reply = await cluster.request(
            node_id, {"op": "wait_applied", "index": target, "timeout": 30}, reply_within=40
        )
        assert "ok" in reply, f"{node_id} did not apply up to {target}: {reply}"
        state = await cluster.state(node_id)
        assert state is not None
        assert state["storage_error"] is None, f"{node_id}: {state['storage_error']}"
        snapshots[node_id] = state["snapshot_index"]
        histories[node_id] = [bytes.fromhex(c) for c in state["commands"]]
    check_histories(client, histories, f"{tag}-{number}".encode())
    cluster.log(f"snapshot indexes: {snapshots}")
    return histories


async def test_acknowledged_writes_survive_sigkill_of_any_and_all_nodes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Reference: DESIGN.md §1 ("an acknowledged write is never lost"), §5, §7 tier 4.

    Several writers apply unique commands; meanwhile nodes, the leader included, are
    SIGKILLed and restarted from their data directories, and once all three at the same
    moment. Then every node must hold every acknowledged command exactly once, in one order.
    Finally the whole cluster is killed and restarted once more with no load: what the nodes
    recover from disk (snapshot plus log) must be exactly what they had.
    """
    seed = _seed(request)
    print(f"crash test seed {seed} (replay: pytest tests/crash --seed {seed})")
    rng = random.Random(seed)
    cluster = ProcessCluster(tmp_path, 3)
    client = Client(cluster, random.Random(seed + 1))
    try:
        with trio.fail_after(CHAOS_SECONDS + 180):
            await cluster.start_new_cluster()
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for writer in range(WRITERS):
                    nursery.start_soon(client.write, writer, stop)
                counts = await run_chaos(cluster, rng, CHAOS_SECONDS)
                cluster.log(f"chaos over: {counts}")
                await trio.sleep(1.0)  # some writes on a settled cluster
                stop.set()
            cluster.log("writers stopped")
            histories = await converge(cluster, client, "final")
            applied = next(iter(histories.values()))
            print(
                f"seed {seed}: {counts}; {len(client.acknowledged)} acknowledged, "
                f"{len(client.unknown)} unknown outcome "
                f"({sum(c in applied for c in client.unknown)} of them applied), "
                f"{len(client.abandoned)} abandoned; retries {dict(client.reasons)}; "
                f"{len(applied)} commands applied; "
                f"starts {[h.starts for h in cluster.handles.values()]}"
            )
            assert counts["kill all"] == 1
            assert len(client.acknowledged) > 100

            await cluster.kill_all()
            await cluster.restart_all()
            recovered = await converge(cluster, client, "after-restart")
            assert next(iter(recovered.values()))[:-1] == applied
    except BaseException:
        print(f"crash test FAILED with seed {seed} (replay: pytest tests/crash --seed {seed})")
        print(cluster.diagnostics())
        raise
    finally:
        await cluster.shutdown()


def _last_segment(data_dir: Path) -> Path:
    segments = sorted((data_dir / "log").glob("*.seg"))
    assert segments, f"no log segment in {data_dir}"
    return segments[-1]


def _log_since_last_start(handle: NodeHandle) -> str:
    return handle.log_path.read_text(errors="replace").rpartition("===== start #")[2]


async def test_a_record_torn_by_a_crash_is_cut_and_the_node_rejoins(tmp_path: Path) -> None:
    """Reference: DESIGN.md §5 ("a torn last record is truncated with a warning").

    A crash in the middle of a write leaves an incomplete last record (never acknowledged,
    since acknowledging waits for the write). Here the leader is killed and such a record
    is appended to its last segment; it must restart, warn, and rejoin the cluster.
    """
    cluster = ProcessCluster(tmp_path, 3)
    client = Client(cluster, random.Random(0))
    try:
        with trio.fail_after(120):
            await cluster.start_new_cluster()
            for number in range(20):
                await client.submit(f"before-{number}".encode(), 0)
            leader = client.leader_hint
            assert leader is not None
            await cluster.kill(leader)
            segment = _last_segment(cluster.handles[leader].data_dir)
            with segment.open("ab") as file:
                # A record header promising 200 payload bytes, then only the first 21.
                file.write((200).to_bytes(4, "big") + (12345).to_bytes(4, "big"))
                file.write(b"\x94" + b"\x01" * 20)
            cluster.log(f"appended a torn record to {segment}")
            await cluster.start(leader)
            for number in range(20):
                await client.submit(f"after-{number}".encode(), 0)
            await converge(cluster, client, "final")
            assert len(client.acknowledged) >= 30
            warnings = [
                line
                for line in _log_since_last_start(cluster.handles[leader]).splitlines()
                if "WARNING" in line and segment.name in line
            ]
            assert warnings, "no warning names the segment whose torn record was cut"
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        await cluster.shutdown()


async def test_a_damaged_record_before_the_tail_stops_the_node_from_starting(
    tmp_path: Path,
) -> None:
    """Reference: DESIGN.md §5 ("a bad CRC before the tail refuses to start, naming file
    and offset"). The process exits with a clear last line and changes nothing on disk."""
    cluster = ProcessCluster(tmp_path, 1)
    client = Client(cluster, random.Random(0))
    handle = cluster.handles["n1"]
    try:
        with trio.fail_after(60):
            await cluster.start_new_cluster()
            for number in range(5):
                assert await client.submit(f"c{number}".encode(), 0)
            await cluster.kill("n1")
            segment = _last_segment(handle.data_dir)
            data = bytearray(segment.read_bytes())
            data[10] ^= 0xFF  # inside the first record's payload; intact records follow
            segment.write_bytes(data)
            before = {
                path: path.read_bytes()
                for path in handle.data_dir.rglob("*")
                if path.is_file() and path.name != "LOCK"
            }
            with pytest.raises(StartFailed) as failure:
                await cluster.start("n1", attempts=1)
            assert failure.value.returncode == 1, str(failure.value)
            last_line = handle.log_tail(1)
            assert "startup failed: StorageCorruptedError" in last_line, last_line
            assert f"{segment} at offset 0" in last_line, last_line
            after = {
                path: path.read_bytes()
                for path in handle.data_dir.rglob("*")
                if path.is_file() and path.name != "LOCK"
            }
            assert after == before
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        await cluster.shutdown()


async def test_a_second_node_process_refuses_a_locked_data_dir(tmp_path: Path) -> None:
    """Reference: DESIGN.md §5 ("a lock file stops two processes sharing a data dir")."""
    first = ProcessCluster(tmp_path / "first", 1)
    second = ProcessCluster(tmp_path / "second", 1)
    handle = second.handles["n1"]
    handle.data_dir = first.handles["n1"].data_dir  # the same data directory
    try:
        with trio.fail_after(60):
            await first.start_new_cluster()
            holder = first.handles["n1"].process
            assert holder is not None
            with pytest.raises(StartFailed) as failure:
                await second.start("n1", attempts=1)
            assert failure.value.returncode == 3, str(failure.value)
            last_line = handle.log_tail(1)
            assert "startup failed: DataDirLockedError" in last_line, last_line
            assert str(handle.data_dir) in last_line
            assert f"process {holder.pid}" in last_line
            # The first node still runs, and still serves.
            client = Client(first, random.Random(0))
            assert await client.submit(b"x", 0)
            assert client.acknowledged[b"x"].result == 1
    except BaseException:
        print(first.diagnostics())
        print(second.diagnostics())
        raise
    finally:
        await first.shutdown()
        await second.shutdown()
