"""A node with a data dir keeps its term, vote, log and state across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support import free_port

from tinyraft_trio import DataDirLockedError, RaftConfig, StorageCorruptedError, open_raft_node
from tinyraft_trio._storage._file import FileStorage
from tinyraft_trio.testing import RecordingStateMachine


def durable_config(data_dir: Path, **changes: object) -> RaftConfig:
    values: dict[str, object] = {
        "node_id": "solo",
        "bootstrap": True,
        "listen": f"127.0.0.1:{free_port()}",
        "election_timeout": 0.05,
        "heartbeat_interval": 0.01,
        "data_dir": str(data_dir),
        "snapshot_threshold": 30,
        "trailing_entries": 5,
        **changes,
    }
    return RaftConfig(**values)  # type: ignore[arg-type]


async def test_restart_recovers_log_snapshot_and_state(tmp_path: Path) -> None:
    first = RecordingStateMachine()
    with trio.fail_after(20):
        async with open_raft_node(durable_config(tmp_path), first) as node:
            await node.wait_for_leader()
            for i in range(100):
                await node.apply(f"c{i}".encode())
            before = node.status()
        assert before.snapshot_index > 0
        second = RecordingStateMachine()
        async with open_raft_node(durable_config(tmp_path), second) as node:
            # Restored from the snapshot at once; the rest replays once it leads again.
            assert second.commands == first.commands[: len(second.commands)]
            assert len(second.commands) >= before.snapshot_index - 10
            await node.wait_for_leader()
            await node.apply(b"after restart")
            status = node.status()
            assert status.term > before.term
            assert second.commands == [*first.commands, b"after restart"]


async def test_a_data_dir_whose_snapshot_is_ahead_of_its_log_restarts_and_appends(
    tmp_path: Path,
) -> None:
    """A crash can keep a snapshot and tear the log write before it (see the simulation
    test of the same name): the stale log is dropped at start, and appending after the
    snapshot works, now and after another restart."""
    with trio.fail_after(20):
        async with open_raft_node(durable_config(tmp_path), RecordingStateMachine()) as node:
            await node.wait_for_leader()
            for i in range(100):
                await node.apply(f"c{i}".encode())
        storage = FileStorage(tmp_path)
        state = await storage.load()
        assert state.snapshot is not None and state.entries
        snapshot_index = state.snapshot.index
        assert state.entries[0].index < snapshot_index - 1
        # The torn write: the log ends two entries before the snapshot's index.
        await storage.persist(hard_state=None, first_index=snapshot_index - 1, entries=())
        await storage.close()
        for attempt in range(2):
            machine = RecordingStateMachine()
            async with open_raft_node(durable_config(tmp_path), machine) as node:
                await node.wait_for_leader()
                await node.apply(f"after restart {attempt}".encode())
                assert machine.commands[-1] == f"after restart {attempt}".encode()


async def test_second_node_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_raft_node(durable_config(tmp_path), RecordingStateMachine()) as node:
            await node.wait_for_leader()
            with pytest.raises(DataDirLockedError, match=str(tmp_path)):
                async with open_raft_node(durable_config(tmp_path), RecordingStateMachine()):
                    pass  # pragma: no cover


async def test_corrupted_log_refuses_to_start_and_names_the_file(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_raft_node(durable_config(tmp_path), RecordingStateMachine()) as node:
            await node.wait_for_leader()
            for i in range(10):
                await node.apply(f"c{i}".encode())
        (segment,) = sorted((tmp_path / "log").iterdir())
        data = bytearray(segment.read_bytes())
        data[12] ^= 0xFF  # inside the first record, with intact records after it
        segment.write_bytes(bytes(data))
        with pytest.raises(StorageCorruptedError) as info:
            async with open_raft_node(durable_config(tmp_path), RecordingStateMachine()):
                pass  # pragma: no cover
        assert segment.name in str(info.value)
        assert segment.read_bytes() == bytes(data)  # nothing was changed


async def test_a_generated_node_id_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    config = durable_config(tmp_path).replace(node_id=None)
    with trio.fail_after(10):
        async with open_raft_node(config, RecordingStateMachine()) as node:
            first = node.id
        async with open_raft_node(config, RecordingStateMachine()) as node:
            assert node.id == first
    assert (tmp_path / "node_id").read_text().strip() == first


async def test_existing_state_ignores_bootstrap_and_peers(tmp_path: Path) -> None:
    """The initial configuration is recorded once; a restart resumes with what is stored."""
    config = durable_config(tmp_path)
    with trio.fail_after(10):
        async with open_raft_node(config, RecordingStateMachine()) as node:
            await node.wait_for_leader()
            await node.apply(b"x")
        other_peers = config.replace(
            bootstrap=False, peers={"solo": config.listen, "ghost": "127.0.0.1:9"}
        )
        async with open_raft_node(other_peers, RecordingStateMachine()) as node:
            assert [m.id for m in node.status().members] == ["solo"]
            await node.wait_for_leader()  # alone, as before: "ghost" is not a member
            assert await node.apply(b"y") == 2
