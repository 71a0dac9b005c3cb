"""One Raft node in its own process, driven by a crash test over a small control port.

Run as::

    python tests/crash/node_process.py --id n1 --listen 127.0.0.1:P \\
        --peer n1=127.0.0.1:P --peer n2=... --data-dir DIR --control 127.0.0.1:Q

The state machine is ``tinyraft_trio.testing.RecordingStateMachine`` (deterministic: it
records every command; ``apply`` returns the command's 1-based position in that record).

The control protocol is one JSON object per line over TCP, a reply line per request line:

- ``{"op": "apply", "command": HEX, "timeout": S}`` ->
  ``{"ok": result}`` | ``{"not_leader": leader_id}`` (nothing appended: safe to retry) |
  ``{"unknown": reason}`` (LeadershipLostError, NodeClosedError or a timeout: the command
  may or may not be applied) | ``{"error": reason}`` (anything else, e.g. StorageFailedError)
- ``{"op": "state", "commands": BOOL}`` -> ``{"id", "role", "term", "leader_id",
  "commit_index", "last_applied", "last_log_index", "snapshot_index", "storage_error",
  "commands": [HEX, ...]}`` (``commands`` only unless ``"commands": false``)
- ``{"op": "wait_applied", "index": N, "timeout": S}`` -> ``{"ok": last_applied}`` |
  ``{"timeout": last_applied}``
- ``{"op": "add_member", "id": ID, "address": A, "voter": BOOL}`` and
  ``{"op": "remove_member", "id": ID}`` -> ``{"ok": true}`` | ``{"not_leader": id}`` |
  ``{"unknown": reason}`` | ``{"error": reason}``; ``{"op": "members"}`` -> ``{"members":
  [{"id", "address", "voter"}, ...]}``

Once the node runs and the control port listens, one line goes to stdout:
``ready control=HOST:PORT`` (so ``--control 127.0.0.1:0`` picks a free port). Logs go to
stderr. A startup failure ends the process with a non-zero status and a last stderr line
``node_process: startup failed: <ExceptionName>: <message>`` (exit status 3 when the data
directory is locked by another process, 4 when the listen address is in use, 1 otherwise).

The process exits when its stdin reaches end-of-file, so a node never outlives the test
that started it (the test keeps the pipe's write end open), and after ``--max-lifetime``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

import trio

from tinyraft_trio import (
    LeadershipLostError,
    NodeClosedError,
    NotLeaderError,
    RaftConfig,
    RaftNode,
    open_raft_node,
)
from tinyraft_trio.testing import RecordingStateMachine

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

EXIT_DATA_DIR_LOCKED = 3
EXIT_ADDRESS_IN_USE = 4
_MAX_LINE = 1 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", required=True, help="this node's id")
    parser.add_argument("--listen", required=True, help="host:port for Raft peers")
    parser.add_argument(
        "--peer", action="append", default=[], help="id=host:port, once per member (self too)"
    )
    parser.add_argument("--data-dir", default=None, help="durable storage; in memory if omitted")
    parser.add_argument("--control", required=True, help="host:port of the control server")
    parser.add_argument("--election-timeout", type=float, default=0.3)
    parser.add_argument("--heartbeat-interval", type=float, default=0.05)
    parser.add_argument("--snapshot-threshold", type=int, default=50)
    parser.add_argument("--trailing-entries", type=int, default=10)
    parser.add_argument("--segment-bytes", type=int, default=64 * 1024)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--bootstrap", action="store_true", help="form a one-node cluster")
    parser.add_argument("--join", action="append", default=[], help="host:port of a member")
    parser.add_argument("--non-voter", action="store_true", help="join as a learner")
    parser.add_argument("--max-lifetime", type=float, default=600.0)
    return parser.parse_args(argv)


def _split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class ControlServer:
    """Answers the control protocol for one node."""

    def __init__(self, node: RaftNode, machine: RecordingStateMachine) -> None:
        self.node = node
        self.machine = machine

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            async with stream:
                while True:
                    newline = buffer.find(b"\n")
                    if newline < 0:
                        if len(buffer) > _MAX_LINE:
                            return
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buffer += data
                        continue
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    try:
                        reply = await self.handle_request(json.loads(line))
                    except Exception as exc:  # a bad request, or the node is shutting down
                        reply = {"error": f"{type(exc).__name__}: {exc}"}
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the test client went away (or timed out); nothing to answer

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "apply":
            return await self.apply(bytes.fromhex(request["command"]), request.get("timeout", 5))
        if op == "state":
            return self.state(with_commands=request.get("commands", True))
        if op == "wait_applied":
            return await self.wait_applied(request["index"], request.get("timeout", 10))
        if op == "add_member":
            return await self.change(
                self.node.add_member(request["id"], request["address"], voter=request["voter"])
            )
        if op == "remove_member":
            return await self.change(self.node.remove_member(request["id"]))
        if op == "members":
            return {
                "members": [
                    {"id": m.id, "address": m.address, "voter": m.voter}
                    for m in self.node.status().members
                ]
            }
        return {"error": f"unknown op {op!r}"}

    async def apply(self, command: bytes, seconds: float) -> dict[str, Any]:
        try:
            with trio.move_on_after(seconds):
                return {"ok": await self.node.apply(command)}
            return {"unknown": f"no answer within {seconds} s"}
        except NotLeaderError as exc:
            return {"not_leader": exc.leader_id}
        except (LeadershipLostError, NodeClosedError) as exc:
            return {"unknown": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    async def change(self, change: Coroutine[Any, Any, None]) -> dict[str, Any]:
        try:
            with trio.move_on_after(10):
                await change
                return {"ok": True}
            return {"unknown": "no answer within 10 s"}
        except NotLeaderError as exc:
            return {"not_leader": exc.leader_id}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def state(self, *, with_commands: bool = True) -> dict[str, Any]:
        state = self.node.status().summary()
        del state["members"]  # see the "members" op
        if with_commands:
            state["commands"] = [command.hex() for command in self.machine.commands]
        return state

    async def wait_applied(self, index: int, seconds: float) -> dict[str, Any]:
        with trio.move_on_after(seconds):
            await self.node.wait_applied(index)
            return {"ok": self.node.status().last_applied}
        return {"timeout": self.node.status().last_applied}


async def _exit_on_stdin_eof(cancel_scope: trio.CancelScope) -> None:
    """The parent holds our stdin open; end-of-file means it is gone, so stop too."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(4096):
            pass
    logging.getLogger("node_process").warning("stdin closed: the test went away; exiting")
    cancel_scope.cancel()


_started = False


async def run(args: argparse.Namespace) -> None:
    global _started
    peers = dict(item.split("=", 1) for item in args.peer)
    config = RaftConfig(
        node_id=args.id,
        listen=args.listen,
        peers=peers,
        election_timeout=args.election_timeout,
        heartbeat_interval=args.heartbeat_interval,
        data_dir=args.data_dir,
        snapshot_threshold=args.snapshot_threshold,
        trailing_entries=args.trailing_entries,
        segment_bytes=args.segment_bytes,
        seed=args.seed,
        bootstrap=args.bootstrap,
        join=tuple(args.join),
        voter=not args.non_voter,
    )
    machine = RecordingStateMachine()
    host, port = _split_address(args.control)
    with trio.move_on_after(args.max_lifetime) as scope:
        async with open_raft_node(config, machine) as node, trio.open_nursery() as nursery:
            server = ControlServer(node, machine)
            listeners = await trio.open_tcp_listeners(port, host=host)
            control_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, server.handle_connection, listeners)
            nursery.start_soon(_exit_on_stdin_eof, scope)
            print(f"ready control={host}:{control_port}", flush=True)
            _started = True


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {args.id}[{os.getpid()}] %(name)s %(levelname)s %(message)s",
    )
    try:
        trio.run(run, args)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        leaves = _leaves(exc)
        for leaf in leaves:
            if type(leaf).__name__ == "DataDirLockedError":
                print(f"node_process: startup failed: DataDirLockedError: {leaf}", file=sys.stderr)
                return EXIT_DATA_DIR_LOCKED
        for leaf in leaves:
            if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
                print(f"node_process: startup failed: address in use: {leaf}", file=sys.stderr)
                return EXIT_ADDRESS_IN_USE
        logging.getLogger("node_process").exception("%s: crashed", args.id)
        first = leaves[0]
        what = "crashed" if _started else "startup failed"
        print(f"node_process: {what}: {type(first).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
