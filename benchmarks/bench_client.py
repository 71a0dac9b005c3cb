"""The benchmark's client process: drives one 3-node cluster (ours or PySyncObj) over TCP.

Run by ``benchmarks/run.py``, which passes a JSON plan on the command line and reads one JSON
document from stdout. The same Trio client code drives both systems, so client-side costs are
alike; only the wire protocol differs (ours: tinyraft_trio's RPC; PySyncObj: the control
server in ``pysyncobj_node.py``).

Workloads: writes with a number of tasks in flight (``points``); reads of one key on the
leader (``reads``: ours are linearizable, ReadIndex through the node's ``query`` request;
PySyncObj's are a local read of the leader's dict, not linearizable, as it has nothing
better); leader loss (``failover``); and memory (``memory``: many writes over a bounded key
set, sampling every node's RSS from ``/proc/PID/status`` and, for durable nodes, the size of
its data dir, so that growth over a long run shows).

Outcomes of a request: ``ok`` (acknowledged; a read with the expected value), ``failed``
(answered with an error, certainly or possibly not applied; a read with a wrong value),
``unacked`` (never answered: timeout, lost connection, or an ``unknown`` outcome),
``redirected`` (``not_leader``: certainly not applied, retried).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio
from _stats import percentile

# The same parking and deadline timer for both systems' requests (see _PsoCall).
from tinyraft_trio._pending import DeadlineTimer, PendingCall

_LENGTH = struct.Struct(">I")
now = time.perf_counter


Operation = Callable[[int], Awaitable[tuple[str, Any]]]
"""One request of a workload, by task index: ``(outcome, detail)``."""


# ------------------------------------------------------------------------------ backends


class OursBackend:
    def __init__(self, client: Any) -> None:
        from tinyraft_trio._rpc import TransportError

        self.client = client
        self.transport_error = TransportError  # imported once, not per request

    @staticmethod
    def command(key: str, value: str) -> bytes:
        return msgpack.packb(["put", key, value])

    def put_operation(self, address: str, value: str, seconds: float) -> Operation:
        """``put(i)`` writes key ``k<i>``: one coroutine per request around the client's
        own, as ``PsoBackend.put_operation``, so the harness costs both systems alike."""
        request = self.client.request
        transport_error = self.transport_error

        async def put(index: int) -> tuple[str, Any]:
            command = msgpack.packb(["put", f"k{index}", value])
            try:
                response = await request(address, "apply", command, timeout=seconds)
            except transport_error as exc:
                return "unacked", exc.reason
            return _outcome(response.body)

        return put

    async def write(self, address: str, command: bytes, seconds: float) -> tuple[str, Any]:
        return await self._call(address, "apply", command, seconds)

    async def read(self, address: str, key: str, seconds: float) -> tuple[str, Any]:
        """A linearizable read (``stale`` False: the node's ReadIndex) of the key-value
        store's ``["get", key]`` query; ``("ok", value)`` on success."""
        body = msgpack.packb([msgpack.packb(["get", key]), False])
        return await self._call(address, "query", body, seconds)

    async def _call(
        self, address: str, method: str, body: bytes, seconds: float
    ) -> tuple[str, Any]:
        try:
            response = await self.client.request(address, method, body, timeout=seconds)
        except self.transport_error as exc:
            return "unacked", exc.reason
        return _outcome(response.body)

    async def is_leader(self, address: str) -> bool:
        from tinyraft_trio._rpc import TransportError

        try:
            response = await self.client.request(address, "status", b"", timeout=0.3)
        except TransportError:
            return False
        if not response.ok:
            return False
        return bool(msgpack.unpackb(response.body).get("role") == "leader")


class ConnectBackend:
    """Writes through ``tinyraft_trio.connect()``: the client a user would take, with a session
    and a sequence number per command, so each is applied exactly once however often it is
    retried. Leader discovery, for the harness, goes through ``OursBackend``."""

    def __init__(self, raw: OursBackend, client: Any) -> None:
        from tinyraft_trio import ClusterUnavailableError, CommandFailedError, OutcomeUnknownError

        self.raw = raw
        self.client = client
        self.failed = (CommandFailedError, ClusterUnavailableError)
        self.unknown = OutcomeUnknownError

    def put_operation(self, address: str, value: str, seconds: float) -> Operation:
        """``put(i)`` writes key ``k<i>`` with ``apply()``, which finds the leader itself."""
        apply = self.client.apply
        failed, unknown = self.failed, self.unknown

        async def put(index: int) -> tuple[str, Any]:
            command = msgpack.packb(["put", f"k{index}", value])
            try:
                return "ok", await apply(command, timeout=seconds)
            except unknown as exc:
                return "unacked", str(exc)
            except failed as exc:
                return "failed", str(exc)

        return put

    async def is_leader(self, address: str) -> bool:
        return await self.raw.is_leader(address)


def _outcome(body: bytes) -> tuple[str, Any]:
    """A tinyraft_trio node's answer as ``(outcome, detail)``.

    The node's answers are msgpack arrays (``ok`` is False for all but "ok" and "error");
    an RPC-level problem is plain text.
    """
    try:
        answer = msgpack.unpackb(body)
    except ValueError:
        answer = None
    if not isinstance(answer, list) or not answer:
        return "failed", body.decode(errors="replace")
    kind = answer[0]
    if kind == "ok":
        return "ok", answer[1] if len(answer) > 1 else None
    if kind == "not_leader":
        return "redirected", answer[2]
    if kind == "unknown":
        return "unacked", answer[1]
    return "failed", answer[1:]


class _PsoCall(PendingCall):
    """A request to a PySyncObj node waiting for its answer: parked, with its deadline kept
    by one timer, exactly as tinyraft_trio's ``RpcClient`` waits (``_pending``)."""

    __slots__ = ("connection", "request_id")

    def __init__(self, deadline: float, connection: _PsoConnection, request_id: int) -> None:
        super().__init__(deadline)
        self.connection = connection
        self.request_id = request_id

    def abandon(self) -> None:
        self.connection.pending.pop(self.request_id, None)


class _PsoConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.pending: dict[int, _PsoCall] = {}
        self.closed = False
        self.outbox: list[bytes] = []
        self.wakeup = trio.Event()

    def send(self, frame: bytes) -> None:
        self.outbox.append(frame)
        self.wakeup.set()

    def fail(self) -> None:
        """Wake every waiting call with no answer (``connection lost``)."""
        self.closed = True
        for call in self.pending.values():
            call.finish(None)
        self.pending.clear()

    async def writer(self) -> None:
        """The connection's only writer: everything queued goes out in one send_all."""
        try:
            while True:
                while not self.outbox:
                    self.wakeup = trio.Event()
                    await self.wakeup.wait()
                data = b"".join(self.outbox)
                self.outbox.clear()
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.fail()

    async def reader(self) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = await self.stream.receive_some(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                offset = 0
                while len(buffer) - offset >= 4:
                    (length,) = _LENGTH.unpack_from(buffer, offset)
                    if len(buffer) - offset < 4 + length:
                        break
                    message = msgpack.unpackb(buffer[offset + 4 : offset + 4 + length])
                    offset += 4 + length
                    call = self.pending.pop(message[0], None)
                    if call is not None:
                        call.finish(message)
                del buffer[:offset]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.fail()


class PsoBackend:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.connections: dict[str, _PsoConnection] = {}
        self.connecting: dict[str, trio.Event] = {}
        self.next_id = 0
        self.deadlines = DeadlineTimer()

    @staticmethod
    def command(key: str, value: str) -> tuple[str, str]:
        return (key, value)

    async def _connection(self, address: str) -> _PsoConnection:
        while True:
            connection = self.connections.get(address)
            if connection is not None and not connection.closed:
                return connection
            event = self.connecting.get(address)
            if event is not None:
                await event.wait()
                connection = self.connections.get(address)
                if connection is None or connection.closed:
                    raise OSError("connection failed")
                return connection
            event = self.connecting[address] = trio.Event()
            try:
                host, port = address.rsplit(":", 1)
                stream = await trio.open_tcp_stream(host, int(port))
                connection = _PsoConnection(stream)
                self.connections[address] = connection
                self.nursery.start_soon(connection.reader)
                self.nursery.start_soon(connection.writer)
                return connection
            finally:
                del self.connecting[address]
                event.set()

    async def _call(self, address: str, message: list[Any], seconds: float) -> tuple[str, Any]:
        deadline = trio.current_time() + seconds
        connection = self.connections.get(address)
        if connection is None or connection.closed:
            try:
                with trio.fail_at(deadline):
                    connection = await self._connection(address)
            except (OSError, trio.TooSlowError) as exc:
                return "failed", f"connect: {exc!r}"  # nothing was sent
        request_id = self.next_id = self.next_id + 1
        message[0] = request_id
        payload = msgpack.packb(message)
        call = _PsoCall(deadline, connection, request_id)
        connection.pending[request_id] = call
        # Queued for the connection's writer, which joins a burst into one send_all, as
        # tinyraft_trio's RpcClient does.
        connection.send(_LENGTH.pack(len(payload)) + payload)
        self.deadlines.watch(call, self.nursery)
        await call.wait()
        if call.timed_out:
            return "unacked", "timeout"
        answer = call.response
        if answer is None:
            return "unacked", "connection lost"
        return answer[1], answer[2]

    def put_operation(self, address: str, value: str, seconds: float) -> Operation:
        """``put(i)`` writes key ``k<i>`` (see ``OursBackend.put_operation``)."""
        call = self._call

        async def put(index: int) -> tuple[str, Any]:
            return await call(address, [0, "set", f"k{index}", value], seconds)

        return put

    async def write(
        self, address: str, command: tuple[str, str], seconds: float
    ) -> tuple[str, Any]:
        return await self._call(address, [0, "set", command[0], command[1]], seconds)

    async def read(self, address: str, key: str, seconds: float) -> tuple[str, Any]:
        """The node's dict read locally (not linearizable); ``("ok", value)``."""
        return await self._call(address, [0, "get", key], seconds)

    async def is_leader(self, address: str) -> bool:
        kind, status = await self._call(address, [0, "status"], 0.3)
        return kind == "status" and bool(status["leader"])


# ------------------------------------------------------------------------------ workloads


async def find_leader(backend: Any, addresses: list[str], deadline: float) -> str | None:
    while now() < deadline:
        found: list[str] = []

        async def probe(address: str, found: list[str] = found) -> None:
            if await backend.is_leader(address):
                found.append(address)

        async with trio.open_nursery() as nursery:
            for address in addresses:
                nursery.start_soon(probe, address)
        if found:
            return found[0]
        await trio.sleep(0.005)
    return None


async def drive(
    inflight: int,
    warmup: float,
    duration: float,
    operation: Operation,
    processes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``inflight`` tasks call ``operation(task_index)`` back to back; measure a middle window.

    Shared by writes and reads so that both systems and both kinds of request are measured
    the same way: throughput counts ``ok`` answers inside the window (after ``warmup``);
    latency is that of those requests. With ``processes`` (name: pid), the result also says
    how each of them spent the window (``sched``: see ``scheduling``).
    """
    counts = {"ok": 0, "failed": 0, "unacked": 0, "redirected": 0}
    latencies: list[float] = []
    start = now()
    window_start, window_end = start + warmup, start + warmup + duration
    window_ok = 0
    errors: list[str] = []

    async def worker(index: int) -> None:
        nonlocal window_ok
        while now() < window_end:
            sent = now()
            kind, detail = await operation(index)
            done = now()
            counts[kind] += 1
            if kind == "ok":
                if window_start <= done <= window_end:
                    window_ok += 1
                    latencies.append(done - sent)
            else:
                if len(errors) < 5:
                    errors.append(f"{kind}: {detail}")
                await trio.sleep(0.001)

    sched: dict[str, Any] = {}

    async def watch_window() -> None:
        assert processes is not None
        await trio.sleep(max(0.0, window_start - now()))
        sched.update(await scheduling(processes, window_end - now()))

    async with trio.open_nursery() as nursery:
        if processes:
            nursery.start_soon(watch_window)
        for index in range(inflight):
            nursery.start_soon(worker, index)
    return {
        "inflight": inflight,
        "throughput": window_ok / duration,
        **({"sched": sched} if processes else {}),
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "samples": len(latencies),
        "drain_s": now() - window_end,
        "counts": counts,
        "errors": errors,
    }


async def load(
    backend: Any, leader: str, point: dict[str, Any], pids: dict[str, int] | None = None
) -> dict[str, Any]:
    """Writes: task ``i`` puts key ``k<i>`` over and over (``point``: inflight, size, ...).

    With ``pids`` (each node's pid by address), the result says how this client process, the
    leader and the followers spent the measured window on the CPUs (see ``scheduling``).
    """
    write = backend.put_operation(leader, "v" * point["size"], point["timeout"])
    processes = None
    if pids:
        followers = [pid for address, pid in pids.items() if address != leader]
        processes = {"client": os.getpid(), "leader": pids.get(leader, -1)}
        processes.update({f"follower {n}": pid for n, pid in enumerate(followers, 1)})
    result = await drive(point["inflight"], point["warmup"], point["duration"], write, processes)
    return {**result, "size": point["size"]}


def scheduled_seconds(pid: int) -> tuple[float, float] | None:
    """Seconds so far that a process's threads ran on a CPU and waited, runnable, for one
    (Linux's ``/proc/PID/task/*/schedstat``); None where that cannot be read."""
    running = waiting = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/schedstat") as stat:
                fields = stat.read().split()
            running, waiting = running + int(fields[0]), waiting + int(fields[1])
        except (OSError, ValueError, IndexError):  # a thread may end meanwhile
            continue
    return running / 1e9, waiting / 1e9


def idle_seconds() -> float | None:
    """Seconds so far that all CPUs together were idle (idle and iowait in ``/proc/stat``)."""
    try:
        with open("/proc/stat") as stat:
            values = [int(value) for value in stat.readline().split()[1:]]
        return (values[3] + values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def disk_written_bytes() -> int | None:
    """Bytes written so far to the machine's disks (``/sys/block/*/stat``: whole disks, their
    partitions included; loop, RAM and device-mapper devices left out, as they pass their
    writes on to a disk counted already or to none); None where that cannot be read."""
    total = 0
    try:
        devices = os.listdir("/sys/block")
    except OSError:
        return None
    for device in devices:
        if device.startswith(("loop", "ram", "zram", "dm-", "md")):
            continue
        try:
            with open(f"/sys/block/{device}/stat") as stat:
                total += int(stat.read().split()[6]) * 512  # sectors written, always 512 B here
        except (OSError, ValueError, IndexError):
            continue
    return total


async def scheduling(processes: dict[str, int], seconds: float) -> dict[str, Any]:
    """How each process (name: pid) spent the next ``seconds``: the share of a core it ran
    (``cpu``) and the share it spent runnable but waiting for a core (``waiting``), under
    ``processes``; and how many cores sat idle meanwhile, as ``idle_cores``.

    A process that waits for a core while another sits idle is held back by the OS's
    scheduler, not by its own work; one that runs nearly a whole core is the limit itself.
    Also ``disk_write_mb_s``: what the machine's disks took a second meanwhile, from every
    process (the nodes' log and snapshots, mostly, and the file system's journal).
    """
    before = {name: scheduled_seconds(pid) for name, pid in processes.items()}
    idle_before = idle_seconds()
    written_before = disk_written_bytes()
    started = now()
    await trio.sleep(seconds)
    elapsed = now() - started
    idle_after = idle_seconds()
    written_after = disk_written_bytes()
    disk_rate = None
    if written_before is not None and written_after is not None and elapsed > 0:
        disk_rate = (written_after - written_before) / elapsed / 1e6
    idle_cores = None
    if idle_before is not None and idle_after is not None and elapsed > 0:
        idle_cores = (idle_after - idle_before) / elapsed
    found: dict[str, dict[str, float] | None] = {}
    for name, pid in processes.items():
        first, last = before[name], scheduled_seconds(pid)
        found[name] = (
            None
            if first is None or last is None or elapsed <= 0
            else {
                "cpu": (last[0] - first[0]) / elapsed,
                "waiting": (last[1] - first[1]) / elapsed,
            }
        )
    return {"processes": found, "idle_cores": idle_cores, "disk_write_mb_s": disk_rate}


async def reads(backend: Any, leader: str, point: dict[str, Any]) -> dict[str, Any]:
    """Reads of one key on the leader, after writing it; a wrong value counts as failed.

    Ours: linearizable (ReadIndex: a heartbeat round confirms the leadership, then the
    leader waits to have applied its commit index). PySyncObj: a local read of the leader's
    dict, with no such check (it has no linearizable read).
    """
    key, value, timeout = "read-key", "r" * point["size"], point["timeout"]
    kind, detail = await backend.write(leader, backend.command(key, value), timeout)
    if kind != "ok":
        return {"inflight": point["inflight"], "error": f"could not write the key: {detail}"}

    async def read(index: int) -> tuple[str, Any]:
        kind, found = await backend.read(leader, key, timeout)
        if kind == "ok" and found != value:
            return "failed", f"read {found!r:.40}, expected {value!r:.40}"
        return kind, found

    result = await drive(point["inflight"], point["warmup"], point["duration"], read)
    return {**result, "size": point["size"]}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


async def failover(
    backend: Any, addresses: list[str], pids: dict[str, int], plan: dict[str, Any]
) -> dict[str, Any]:
    """Writers write continuously; the leader is killed; time until a new write is acked."""
    sig = signal.SIGKILL if plan["signal"] == "SIGKILL" else signal.SIGTERM
    leader = await find_leader(backend, addresses, now() + 15)
    if leader is None:
        return {"error": "no leader before the kill"}
    value = "v" * 16
    counts = {"ok": 0, "failed": 0, "unacked": 0, "redirected": 0}
    state: dict[str, Any] = {"leader": leader, "kill_at": None, "first_ack": None}
    live = [a for a in addresses]
    done_event = trio.Event()
    first_ack = trio.Event()
    errors: list[str] = []

    async def rediscover() -> None:
        found = await find_leader(backend, live, now() + 0.5)
        if found is not None:
            state["leader"] = found

    async def writer(index: int) -> None:
        while not done_event.is_set():
            target = state["leader"]
            sent = now()
            kind, detail = await backend.write(target, backend.command(f"f{index}", value), 1.0)
            counts[kind] += 1
            if kind == "ok":
                kill_at = state["kill_at"]
                if kill_at is not None and sent >= kill_at and state["first_ack"] is None:
                    state["first_ack"] = now()
                    first_ack.set()
                continue
            if len(errors) < 8:
                errors.append(f"{kind}: {detail}")
            if kind == "redirected" and isinstance(detail, str) and detail in live:
                state["leader"] = detail
            elif state["leader"] == target:
                await rediscover()
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        for index in range(plan["writers"]):
            nursery.start_soon(writer, index)
        await trio.sleep(plan["before"])
        victim = state["leader"]
        live.remove(victim)
        state["kill_at"] = now()
        os.kill(pids[victim], sig)
        with trio.move_on_after(plan["limit"]):
            await first_ack.wait()
        await trio.sleep(plan["after"])
        done_event.set()
    unavailable = None
    if state["first_ack"] is not None:
        unavailable = state["first_ack"] - state["kill_at"]
    return {
        "signal": plan["signal"],
        "unavailable_ms": _ms(unavailable),
        "counts": counts,
        "errors": errors,
    }


def node_memory(pid: int) -> dict[str, int | None]:
    """A process's resident set now and at its peak (``VmRSS``/``VmHWM``, KiB), or None."""
    found: dict[str, int | None] = {"rss_kb": None, "hwm_kb": None}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    found["rss_kb"] = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    found["hwm_kb"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return found


def dir_bytes(path: str) -> int:
    """The size of the files under ``path`` (a node's data dir: log, snapshots, state)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            # A file may be removed meanwhile (a compacted segment, a replaced snapshot).
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


async def memory(
    backend: Any,
    leader: str,
    addresses: list[str],
    plan: dict[str, Any],
    pids: list[int],
    data_dirs: list[str],
) -> dict[str, Any]:
    """Many writes over a bounded key set, sampling every node's memory as they are acked.

    ``warmup`` puts first (they fill the key set and let snapshots start), then ``commands``
    puts; ``inflight`` tasks put key ``m<n % keys>`` for the n-th put. A sample (every node's
    RSS and peak RSS, and data dir size if durable) is taken when the warm-up is acked, then
    every ``sample_every`` acknowledged puts, and at the end. With snapshots compacting the
    log, the state stays ``keys`` entries, so memory should stop growing.
    """
    warmup, keys, timeout = plan["warmup"], plan["keys"], plan["timeout"]
    total = warmup + plan["commands"]
    value = "m" * plan["size"]
    counts = {"ok": 0, "failed": 0, "unacked": 0, "redirected": 0}
    errors: list[str] = []
    samples: list[dict[str, Any]] = []
    state: dict[str, Any] = {
        "issued": 0,
        "acked": 0,
        "next_sample": warmup,
        "started": now(),
        "leader": leader,
    }

    def sample() -> None:
        if state["acked"] == warmup:
            state["started"] = now()
        nodes = [node_memory(pid) for pid in pids]
        samples.append(
            {
                "acked": state["acked"] - warmup,
                "seconds": now() - state["started"],
                "rss_kb": [n["rss_kb"] for n in nodes],
                "hwm_kb": [n["hwm_kb"] for n in nodes],
                "disk_bytes": [dir_bytes(d) for d in data_dirs] or None,
            }
        )

    async def writer() -> None:
        while state["issued"] < total:
            n = state["issued"]
            state["issued"] += 1
            command = backend.command(f"m{n % keys}", value)
            kind, detail = await backend.write(state["leader"], command, timeout)
            counts[kind] += 1
            if kind == "ok":
                state["acked"] += 1
                if state["acked"] >= state["next_sample"]:
                    sample()
                    state["next_sample"] += plan["sample_every"]
                continue
            if len(errors) < 5:
                errors.append(f"{kind}: {detail}")
            if kind == "redirected" and detail in addresses:
                state["leader"] = detail
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        for _ in range(plan["inflight"]):
            nursery.start_soon(writer)
    if not samples or samples[-1]["acked"] != state["acked"] - warmup:
        sample()
    acked = samples[-1]["acked"]
    return {
        "commands": plan["commands"],
        "warmup": warmup,
        "keys": keys,
        "size": plan["size"],
        "inflight": plan["inflight"],
        "acked": acked,
        "throughput": acked / samples[-1]["seconds"] if samples[-1]["seconds"] > 0 else None,
        "leader": addresses.index(leader),
        "leader_at_end": addresses.index(state["leader"]),
        "counts": counts,
        "errors": errors,
        "samples": samples,
    }


async def main(plan: dict[str, Any]) -> dict[str, Any]:
    addresses: list[str] = plan["addresses"]
    pids = {address: pid for address, pid in zip(addresses, plan["pids"], strict=True)}
    results: dict[str, Any] = {"points": [], "failover": None}
    async with trio.open_nursery() as nursery:
        if plan["system"] == "ours":
            from tinyraft_trio._rpc import open_rpc_client

            async with open_rpc_client(client_id="bench", cluster_id="tinyraft") as client:
                results = await _run(OursBackend(client), addresses, pids, plan)
        elif plan["system"] == "ours-connect":
            from tinyraft_trio import connect
            from tinyraft_trio._rpc import open_rpc_client

            async with (
                open_rpc_client(client_id="bench", cluster_id="tinyraft") as raw,
                connect(addresses) as client,
            ):
                backend = ConnectBackend(OursBackend(raw), client)
                results = await _run(backend, addresses, pids, plan)
        else:
            results = await _run(PsoBackend(nursery), addresses, pids, plan)
        nursery.cancel_scope.cancel()
    return results


async def _run(
    backend: Any, addresses: list[str], pids: dict[str, int], plan: dict[str, Any]
) -> dict[str, Any]:
    results: dict[str, Any] = {"points": [], "reads": [], "memory": None, "failover": None}
    started = now()
    leader = await find_leader(backend, addresses, now() + 20)
    results["leader_wait_s"] = now() - started
    if leader is None:
        results["error"] = "no leader elected within 20 s"
        return results
    await trio.sleep(plan.get("settle", 0.0))
    for point in plan.get("points", []):
        leader = await find_leader(backend, addresses, now() + 10) or leader
        result = await load(backend, leader, point, pids)
        # Every node's resident set after the point: it shows a node keeping what it should
        # have dropped (as the 1 KiB points did before 2709652), which throughput hides.
        result["node_rss_kb"] = [node_memory(pid)["rss_kb"] for pid in plan["pids"]]
        results["points"].append(result)
        print(json.dumps(results["points"][-1]), file=sys.stderr, flush=True)
    for point in plan.get("reads", []):
        leader = await find_leader(backend, addresses, now() + 10) or leader
        results["reads"].append(await reads(backend, leader, point))
        print(json.dumps(results["reads"][-1]), file=sys.stderr, flush=True)
    if plan.get("memory"):
        leader = await find_leader(backend, addresses, now() + 10) or leader
        results["memory"] = await memory(
            backend, leader, addresses, plan["memory"], plan["pids"], plan.get("data_dirs", [])
        )
    if plan.get("failover"):
        results["failover"] = await failover(backend, addresses, pids, plan["failover"])
    return results


if __name__ == "__main__":
    plan = json.loads(sys.argv[1])
    if plan.get("client_gc"):
        # The load generator's own cyclic-GC passes over its thousands of waiting requests
        # compete with the nodes for the same cores; run.py says which thresholds it used.
        gc.set_threshold(*plan["client_gc"])
    print(json.dumps(trio.run(main, plan)), flush=True)
