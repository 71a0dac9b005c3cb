"""One PySyncObj node for the benchmark: a replicated dict plus a small TCP control server.

Run by ``benchmarks/run.py``; not part of the library. PySyncObj is thread-based, so the
control server uses threads too. Frames both ways are a 4-byte big-endian length followed
by one msgpack array:

- client -> node: ``[request_id, "set", key, value]``, ``[request_id, "get", key]`` or
  ``[request_id, "status"]``
- node -> client: ``[request_id, "ok", result]``, ``[request_id, "failed", reason]`` or
  ``[request_id, "status", {"leader": bool, "leader_address": str | None}]``

A write is answered only when PySyncObj fires its callback; a callback that never fires
leaves the request unanswered (the client counts it as "unacked"). A ``get`` answers at once
from this node's copy of the dict (``result``: the value, or None): PySyncObj has no
linearizable read, so this local read, sent to the leader, is the closest comparison; it
may be stale (a deposed leader answers too).
"""

from __future__ import annotations

import argparse
import gc
import signal
import socket
import struct
import sys
import threading
import time

import msgpack
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON

_LENGTH = struct.Struct(">I")
_FAIL_NAMES = {value: name for name, value in vars(FAIL_REASON).items() if isinstance(value, int)}


class Store(SyncObj):
    def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_address, partners, conf)
        self._data: dict[str, bytes] = {}

    @replicated
    def set(self, key: str, value: bytes) -> None:
        self._data[key] = value

    def get(self, key: str) -> bytes | None:
        """This node's value for ``key``, read locally (no leadership check)."""
        return self._data.get(key)


def _serve_connection(store: Store, sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Answers are queued and written by one thread per connection, several per sendall, as
    # tinyraft_trio's transport does: a write per answer from PySyncObj's callback would
    # cost PySyncObj's own thread a system call and the GIL for every command.
    pending: list[bytes] = []
    ready = threading.Condition()
    packer_lock = threading.Lock()

    def send(message: list[object]) -> None:
        with packer_lock:
            payload = msgpack.packb(message)
        with ready:
            pending.append(_LENGTH.pack(len(payload)) + payload)
            ready.notify()

    def write() -> None:
        while True:
            with ready:
                while not pending:
                    ready.wait()
                data = b"".join(pending)
                pending.clear()
            try:
                sock.sendall(data)
            except OSError:
                return

    threading.Thread(target=write, daemon=True).start()
    buffer = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer)
            if len(buffer) < 4 + length:
                break
            message = msgpack.unpackb(bytes(buffer[4 : 4 + length]), raw=False)
            del buffer[: 4 + length]
            request_id, method = message[0], message[1]
            if method == "set":

                def callback(result: object, error: int, request_id: int = request_id) -> None:
                    if error == FAIL_REASON.SUCCESS:
                        send([request_id, "ok", None])
                    else:
                        send([request_id, "failed", _FAIL_NAMES.get(error, str(error))])

                store.set(message[2], message[3], callback=callback)
            elif method == "get":
                send([request_id, "ok", store.get(message[2])])
            elif method == "status":
                leader = store._getLeader()
                send(
                    [
                        request_id,
                        "status",
                        {
                            "leader": bool(store._isLeader()),
                            "leader_address": None if leader is None else str(leader),
                        },
                    ]
                )
            else:
                send([request_id, "failed", f"unknown method {method!r}"])


def _collect_like_our_nodes(thresholds: str | None) -> None:
    """Collect garbage as tinyraft_trio's node command does (``tune_gc``: freeze what startup
    loaded, then ``thresholds``), so that both systems' nodes collect alike. Done here rather
    than by importing tinyraft_trio, which would add its modules (and trio's) to this
    process's memory."""
    if thresholds:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*(int(value) for value in thresholds.split(",")))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--raft", required=True, help="this node's raft address host:port")
    parser.add_argument(
        "--partner", action="append", default=[], help="other nodes' raft addresses"
    )
    parser.add_argument("--control", required=True, help="control server address host:port")
    parser.add_argument("--no-batch", action="store_true", help="appendEntriesUseBatch=False")
    parser.add_argument("--gc-threshold", help="gc.set_threshold values, after gc.freeze()")
    args = parser.parse_args()

    _collect_like_our_nodes(args.gc_threshold)
    conf = SyncObjConf(appendEntriesUseBatch=not args.no_batch)
    store = Store(args.raft, args.partner, conf)

    host, port = args.control.rsplit(":", 1)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(port)))
    server.listen(64)

    def stop(signum: int, frame: object) -> None:
        store.destroy()
        time.sleep(0.05)
        sys.stdout.flush()
        import os

        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"pysyncobj node {args.raft} control {args.control}", flush=True)
    while True:
        connection, _ = server.accept()
        threading.Thread(target=_serve_connection, args=(store, connection), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
