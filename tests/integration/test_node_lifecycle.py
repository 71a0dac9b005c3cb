"""A node over real TCP: clean shutdown, errors callers see, and hostile input."""

from __future__ import annotations

import os
import random
import struct
import threading

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import free_port

from tinyraft_trio import NotLeaderError, RaftConfig, Role, open_raft_node
from tinyraft_trio._wire import PROTOCOL_VERSION, Handshake, encode_frame
from tinyraft_trio.testing import RecordingStateMachine


def single_node_config(**changes: object) -> RaftConfig:
    address = f"127.0.0.1:{free_port()}"
    values: dict[str, object] = {
        "node_id": "solo",
        "bootstrap": True,
        "listen": address,
        "election_timeout": 0.05,
        "heartbeat_interval": 0.01,
        **changes,
    }
    return RaftConfig(**values)  # type: ignore[arg-type]


def _count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Failing:
    """A state machine whose apply raises for one command."""

    def apply(self, command: bytes) -> object:
        if command == b"boom":
            raise KeyError("boom")
        return command.upper()

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


async def test_single_node_applies_and_returns_results_and_errors() -> None:
    with trio.fail_after(10):
        async with open_raft_node(single_node_config(), Failing()) as node:
            assert await node.wait_for_leader() == "solo"
            assert await node.apply(b"abc") == b"ABC"
            with pytest.raises(KeyError, match="boom"):
                await node.apply(b"boom")
            assert await node.apply(b"after") == b"AFTER"
            status = node.status()
            assert status.role is Role.LEADER
            assert status.last_applied == status.commit_index == status.last_log_index == 4


async def test_leaving_the_context_leaves_no_task_socket_or_thread() -> None:
    """The product's shape: after the context exits, nothing of the node remains.

    Threads are compared as a set, not counted: an idle worker that Trio's thread cache kept
    from an earlier test may end meanwhile (after 10 s idle), which is not the node's doing;
    a thread the node started and left running is still caught."""
    tasks, fds, threads = _count_tasks(), _open_fds(), set(threading.enumerate())
    with trio.fail_after(10):
        async with open_raft_node(single_node_config(), RecordingStateMachine()) as node:
            await node.wait_for_leader()
            await node.apply(b"x")
            assert _count_tasks() > tasks
    assert _count_tasks() == tasks
    assert _open_fds() == fds
    assert set(threading.enumerate()) <= threads


async def test_follower_refuses_with_leader_hint() -> None:
    ports = [free_port() for _ in range(2)]
    peers = {"a": f"127.0.0.1:{ports[0]}", "b": f"127.0.0.1:{ports[1]}"}
    configs = [
        RaftConfig(
            node_id=i, listen=peers[i], peers=peers, election_timeout=0.1, heartbeat_interval=0.02
        )
        for i in peers
    ]
    with trio.fail_after(10):
        async with (
            open_raft_node(configs[0], RecordingStateMachine()) as a,
            open_raft_node(configs[1], RecordingStateMachine()) as b,
        ):
            leader_id = await a.wait_for_leader()
            await b.wait_for_leader()
            follower = b if leader_id == "a" else a
            assert await follower.wait_for_leader() == leader_id
            with pytest.raises(NotLeaderError) as info:
                await follower.apply(b"x", forward=False)
            assert info.value.leader_id == leader_id
            assert info.value.leader_address == peers[leader_id]


def _valid_frames() -> list[bytes]:
    from tinyraft_trio._core._messages import AppendEntries, RequestVote
    from tinyraft_trio._core._types import Entry

    return [
        encode_frame(
            AppendEntries(
                term=1,
                leader_id="x",
                prev_log_index=0,
                prev_log_term=0,
                entries=(Entry(term=1, index=1, data=b"hi"),),
                leader_commit=0,
            )
        ),
        encode_frame(RequestVote(term=3, candidate_id="x", last_log_index=9, last_log_term=2)),
    ]


async def _send_raw(address: str, payload: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with trio.move_on_after(0.3):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            try:
                await stream.send_all(payload)
                while await stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_and_mutated_frames_do_not_hurt_a_live_node(data: st.DataObject) -> None:
    """Garbage on a connection closes that connection only; the node keeps working."""
    config = single_node_config(cluster_id="fuzz")
    handshake = encode_frame(
        Handshake(protocol_version=PROTOCOL_VERSION, cluster_id="fuzz", node_id="intruder")
    )
    base = data.draw(st.sampled_from(_valid_frames()))
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    garbage = data.draw(st.binary(min_size=1, max_size=200))
    payloads = [
        handshake + bytes(mutated),
        handshake + garbage,
        garbage,
        struct.pack(">I", 1 << 31) + garbage,
        handshake + encode_frame(handshake_for_other_cluster()),
        msgpack.packb([0, 99, "fuzz", "x"]),
    ]

    async def scenario() -> None:
        with trio.fail_after(20):
            async with open_raft_node(config, RecordingStateMachine()) as node:
                await node.wait_for_leader()
                async with trio.open_nursery() as senders:  # one connection each, at once
                    for payload in payloads:
                        senders.start_soon(_send_raw, config.listen, payload)
                assert await node.apply(b"still alive") == 1
                status = node.status()
                assert status.role is Role.LEADER
                # The oversized frame and the foreign cluster are refused, whatever else was drawn.
                assert status.rejected_connections + status.ignored_messages >= 2

    trio.run(scenario)


def handshake_for_other_cluster() -> Handshake:
    return Handshake(protocol_version=PROTOCOL_VERSION, cluster_id="other", node_id="x")


async def test_bad_input_is_counted_in_status() -> None:
    config = single_node_config()
    with trio.fail_after(10):
        async with open_raft_node(config, RecordingStateMachine()) as node:
            await node.wait_for_leader()
            await _send_raw(config.listen, b"\x00\x00\x00\x05hello")
            await _send_raw(config.listen, random.Random(1).randbytes(64))
            # _send_raw returns once the node closed the connection, after counting it.
            assert node.status().rejected_connections == 2
            assert await node.apply(b"ok") == 1


async def test_an_exception_in_the_block_comes_out_unwrapped() -> None:
    with pytest.raises(ZeroDivisionError):
        async with open_raft_node(single_node_config(), RecordingStateMachine()) as node:
            await node.wait_for_leader()
            _ = 1 / 0
