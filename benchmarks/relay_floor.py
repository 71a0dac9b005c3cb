"""The floor under a sequential write on this machine: its hops, and nothing of Raft.

``python benchmarks/relay_floor.py [--seconds S] [--dir D]`` prints one JSON line with the
p50 / p99 latency of one client writing sequentially through a bare relay of four processes
on 127.0.0.1, shaped like a durable write to a 3-node cluster: the client sends a command to
the "leader", which sends it to both "followers" and then appends it to its own file; each
follower appends it and answers; the leader answers the client once its own append and one
follower's answer are in. Appends are ``os.write`` + ``fdatasync`` on the event loop
(``durable``) or the ``os.write`` alone (``memory``). Trio, msgpack frames, non-blocking
sockets read with ``os.read``: the same tools as tinyraft_trio, with no log, no core, no
validation.

A Raft node on Trio does all of this and more for each sequential write (decoding and
checking messages, the log, the commit rule, applying, answering), so ``run.py`` records the
relay beside the sequential rows, as it records the disk: the sequential latency targets are
read against what the machine gives at that hour.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import trio
from _stats import percentile

_LENGTH = struct.Struct(">I")
MODES = ("durable", "memory")


class _Frames:
    """Reads length-prefixed msgpack frames from one socket."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buffer = bytearray()

    async def next(self) -> Any:
        while True:
            if len(self.buffer) >= 4:
                (size,) = _LENGTH.unpack_from(self.buffer)
                if len(self.buffer) >= 4 + size:
                    message = msgpack.unpackb(bytes(self.buffer[4 : 4 + size]))
                    del self.buffer[: 4 + size]
                    return message
            try:
                data = os.read(self.sock.fileno(), 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except ConnectionResetError:
                data = b""  # killed with our frame unread: gone all the same
            if not data:
                raise EOFError
            self.buffer += data


def _frame(message: Any) -> bytes:
    payload: bytes = msgpack.packb(message)
    return _LENGTH.pack(len(payload)) + payload


def _appender(path: str) -> Callable[[bytes, bool], None]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sync = getattr(os, "fdatasync", os.fsync)

    def append(data: bytes, durable: bool) -> None:
        os.write(fd, data)
        if durable:
            sync(fd)

    return append


async def _listen() -> trio.socket.SocketType:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    return listener


async def _accept(listener: trio.socket.SocketType) -> trio.socket.SocketType:
    sock, _ = await listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def follower(path: str) -> None:
    append = _appender(path)
    sock = await _accept(await _listen())
    frames = _Frames(sock)
    try:
        while True:
            index, durable, command = await frames.next()
            append(command, durable)
            os.write(sock.fileno(), _frame([index, True]))
    except EOFError:
        return  # the leader is gone: the measurement is over


async def leader(path: str, follower_ports: list[int]) -> None:
    append = _appender(path)
    followers = [await _connect(port) for port in follower_ports]
    client = await _accept(await _listen())
    highest_answered = 0
    answer_came = trio.Event()

    async def read_answers(sock: trio.socket.SocketType) -> None:
        nonlocal highest_answered
        frames = _Frames(sock)
        while True:
            index, _ = await frames.next()
            if index > highest_answered:
                highest_answered = index
                answer_came.set()

    async with trio.open_nursery() as nursery:
        for sock in followers:
            nursery.start_soon(read_answers, sock)
        requests = _Frames(client)
        index = 0
        while True:
            try:
                durable, command = await requests.next()
            except EOFError:
                nursery.cancel_scope.cancel()  # the client is done
                return
            index += 1
            message = _frame([index, durable, command])
            for sock in followers:
                os.write(sock.fileno(), message)
            append(command, durable)
            while highest_answered < index:  # one follower's answer, besides our append
                answer_came = trio.Event()
                await answer_came.wait()
            os.write(client.fileno(), _frame([index, None]))


async def client(port: int, seconds: float) -> dict[str, dict[str, float]]:
    """Write sequentially for ``seconds`` (after a warm-up) in each mode, durable first."""
    sock = await _connect(port)
    answers = _Frames(sock)
    found = {}
    number = 0
    for mode in MODES:
        took: list[float] = []
        warm_until = time.monotonic() + min(1.0, seconds / 3)
        end = warm_until + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            command = msgpack.packb(["put", f"k{number}", "v" * 16])
            os.write(sock.fileno(), _frame([mode == "durable", command]))
            await answers.next()
            if time.monotonic() >= warm_until:
                took.append(time.perf_counter() - started)
            number += 1
        p50, p99 = percentile(took, 0.50), percentile(took, 0.99)
        if p50 is None or p99 is None:
            raise RuntimeError(f"no {mode} write was measured")
        found[mode] = {
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "writes_per_s": len(took) / seconds,
        }
    return found


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE)


def _port(process: subprocess.Popen[bytes]) -> int:
    """The port the relay listens on, once it does."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError(f"a relay exited with status {process.returncode} before listening")
    return int(line)


def measure(seconds: float, directory: str | None = None) -> dict[str, dict[str, float]]:
    """Start the three relays, appending in a new folder in ``directory`` (default: the
    system's temporary one), write sequentially for ``seconds`` in each mode, stop them (by
    PID) and remove the folder."""
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="relay-floor-", dir=directory) as folder:
        try:
            for name in ("follower-1", "follower-2"):  # started together: they start slowly
                processes.append(_start(["follower", str(Path(folder, name))]))
            ports = [_port(process) for process in processes]
            processes.append(_start(["leader", str(Path(folder, "leader")), *map(str, ports)]))
            return trio.run(client, _port(processes[-1]), seconds)
        finally:
            for process in reversed(processes):  # the leader first: followers then see it go
                process.kill()
                process.wait()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "follower":
        trio.run(follower, sys.argv[2])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "leader":
        trio.run(leader, sys.argv[2], [int(p) for p in sys.argv[3:]])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per mode, after a warm-up")
    parser.add_argument("--dir", help="where the relays append (default: a new temp dir)")
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
