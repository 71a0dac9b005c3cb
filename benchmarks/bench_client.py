"""The benchmark's client process: drives one 3-node cluster (ours or PySyncObj) over TCP.

Run by ``benchmarks/run.py``, which passes a JSON plan on the command line and reads one JSON
document from stdout. The same Trio client code drives both systems, so client-side costs are
alike; only the wire protocol differs (ours: tinyraft_trio's RPC; PySyncObj: the control
server in ``pysyncobj_node.py``).

Outcomes of a write: ``ok`` (acknowledged), ``failed`` (answered with an error, certainly or
possibly not applied), ``unacked`` (never answered: timeout, lost connection, or an
``unknown`` outcome), ``redirected`` (``not_leader``: certainly not applied, retried).
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import sys
import time
from typing import Any

import msgpack
import trio

_LENGTH = struct.Struct(">I")
now = time.perf_counter


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# ------------------------------------------------------------------------------ backends


class OursBackend:
    def __init__(self, client: Any) -> None:
        self.client = client

    @staticmethod
    def command(key: str, value: str) -> bytes:
        return msgpack.packb(["put", key, value])

    async def write(self, address: str, command: bytes, seconds: float) -> tuple[str, Any]:
        from tinyraft_trio._rpc import TransportError

        try:
            response = await self.client.request(address, "apply", command, timeout=seconds)
        except TransportError as exc:
            return "unacked", exc.reason
        # The node's answers are msgpack arrays (``ok`` is False for all but "ok" and "error");
        # an RPC-level problem is plain text.
        try:
            answer = msgpack.unpackb(response.body)
        except ValueError:
            answer = None
        if not isinstance(answer, list) or not answer:
            return "failed", response.body.decode(errors="replace")
        kind = answer[0]
        if kind == "ok":
            return "ok", None
        if kind == "not_leader":
            return "redirected", answer[2]
        if kind == "unknown":
            return "unacked", answer[1]
        return "failed", answer[1:]

    async def is_leader(self, address: str) -> bool:
        from tinyraft_trio._rpc import TransportError

        try:
            response = await self.client.request(address, "status", b"", timeout=0.3)
        except TransportError:
            return False
        if not response.ok:
            return False
        return bool(msgpack.unpackb(response.body).get("role") == "leader")


class _PsoConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.pending: dict[int, list[Any]] = {}
        self.send_lock = trio.StrictFIFOLock()
        self.closed = False
        self.outbox: list[bytes] = []

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
                    slot = self.pending.pop(message[0], None)
                    if slot is not None:
                        slot[1] = message
                        slot[0].set()
                del buffer[:offset]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.closed = True
            for slot in self.pending.values():
                slot[0].set()
            self.pending.clear()


class PsoBackend:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.connections: dict[str, _PsoConnection] = {}
        self.connecting: dict[str, trio.Event] = {}
        self.next_id = 0

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
                return connection
            finally:
                del self.connecting[address]
                event.set()

    async def _call(self, address: str, message: list[Any], seconds: float) -> tuple[str, Any]:
        try:
            with trio.fail_after(seconds):
                connection = await self._connection(address)
        except (OSError, trio.TooSlowError) as exc:
            return "failed", f"connect: {exc!r}"  # nothing was sent
        request_id = self.next_id = self.next_id + 1
        message[0] = request_id
        payload = msgpack.packb(message)
        slot: list[Any] = [trio.Event(), None]
        connection.pending[request_id] = slot
        try:
            with trio.fail_after(seconds):
                async with connection.send_lock:
                    await connection.stream.send_all(_LENGTH.pack(len(payload)) + payload)
                await slot[0].wait()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            connection.pending.pop(request_id, None)
            return "unacked", "timeout or connection lost"
        answer = slot[1]
        if answer is None:
            return "unacked", "connection lost"
        return answer[1], answer[2]

    async def write(
        self, address: str, command: tuple[str, str], seconds: float
    ) -> tuple[str, Any]:
        return await self._call(address, [0, "set", command[0], command[1]], seconds)

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


async def load(backend: Any, leader: str, point: dict[str, Any]) -> dict[str, Any]:
    """``inflight`` tasks write back to back; measure the middle window."""
    inflight, size = point["inflight"], point["size"]
    warmup, duration, timeout = point["warmup"], point["duration"], point["timeout"]
    value = "v" * size
    counts = {"ok": 0, "failed": 0, "unacked": 0, "redirected": 0}
    latencies: list[float] = []
    start = now()
    window_start, window_end = start + warmup, start + warmup + duration
    window_ok = 0
    errors: list[str] = []

    async def writer(index: int) -> None:
        nonlocal window_ok
        sequence = 0
        while now() < window_end:
            key = f"k{index}"
            command = backend.command(key, value)
            sequence += 1
            sent = now()
            kind, detail = await backend.write(leader, command, timeout)
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

    async with trio.open_nursery() as nursery:
        for index in range(inflight):
            nursery.start_soon(writer, index)
    return {
        "inflight": inflight,
        "size": size,
        "throughput": window_ok / duration,
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "samples": len(latencies),
        "drain_s": now() - window_end,
        "counts": counts,
        "errors": errors,
    }


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


async def main(plan: dict[str, Any]) -> dict[str, Any]:
    addresses: list[str] = plan["addresses"]
    pids = {address: pid for address, pid in zip(addresses, plan["pids"], strict=True)}
    results: dict[str, Any] = {"points": [], "failover": None}
    async with trio.open_nursery() as nursery:
        if plan["system"] == "ours":
            from tinyraft_trio._rpc import open_rpc_client

            async with open_rpc_client(client_id="bench", cluster_id="tinyraft") as client:
                results = await _run(OursBackend(client), addresses, pids, plan)
        else:
            results = await _run(PsoBackend(nursery), addresses, pids, plan)
        nursery.cancel_scope.cancel()
    return results


async def _run(
    backend: Any, addresses: list[str], pids: dict[str, int], plan: dict[str, Any]
) -> dict[str, Any]:
    results: dict[str, Any] = {"points": [], "failover": None}
    started = now()
    leader = await find_leader(backend, addresses, now() + 20)
    results["leader_wait_s"] = now() - started
    if leader is None:
        results["error"] = "no leader elected within 20 s"
        return results
    await trio.sleep(plan.get("settle", 0.0))
    for point in plan.get("points", []):
        leader = await find_leader(backend, addresses, now() + 10) or leader
        results["points"].append(await load(backend, leader, point))
        print(json.dumps(results["points"][-1]), file=sys.stderr, flush=True)
    if plan.get("failover"):
        results["failover"] = await failover(backend, addresses, pids, plan["failover"])
    return results


if __name__ == "__main__":
    plan = json.loads(sys.argv[1])
    print(json.dumps(trio.run(main, plan)), flush=True)
