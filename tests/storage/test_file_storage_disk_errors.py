"""Disk errors (ENOSPC, EIO) reach the caller unchanged; what was acknowledged stays intact."""

from __future__ import annotations

import errno
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import pytest
from storage_helpers import make_entries, opened, records_end, segments

from tinyraft_trio._core._types import Entry, HardState, Membership, SnapshotMeta
from tinyraft_trio._storage._base import PersistentState
from tinyraft_trio._storage._file import FileStorage

MODULE = "tinyraft_trio._storage._file"


class DiskFaults:
    """Makes ``os`` functions fail, but only when called from the storage module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._armed: dict[str, tuple[int, int, bool]] = {}

    def fail(self, name: str, code: int, *, skip: int = 0, partial: bool = False) -> None:
        """Fail ``os.<name>`` with ``code`` after ``skip`` good calls.

        With ``partial`` (os.write or os.writev only), the failing call first writes half
        its data and returns, as a write meeting a full disk does; the call after it fails.
        """
        real: Callable[..., Any] = getattr(os, name)
        self._armed[name] = (code, skip, partial)

        def faulty(*args: Any) -> Any:
            if name in self._armed and sys._getframe(1).f_globals.get("__name__") == MODULE:
                code, skip, partial = self._armed[name]
                if skip > 0:
                    self._armed[name] = (code, skip - 1, partial)
                    return real(*args)
                if partial:
                    self._armed[name] = (code, 0, False)
                    fd, data = args
                    if name == "writev":
                        whole = b"".join(bytes(buffer) for buffer in data)
                        return real(fd, [whole[: max(1, len(whole) // 2)]])
                    return real(fd, bytes(data)[: max(1, len(data) // 2)])
                raise OSError(code, os.strerror(code))
            return real(*args)

        self._monkeypatch.setattr(os, name, faulty)

    def heal(self) -> None:
        self._armed.clear()


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> DiskFaults:
    return DiskFaults(monkeypatch)


async def reload(path: pathlib.Path) -> PersistentState:
    storage = FileStorage(path)
    try:
        return await storage.load()
    finally:
        await storage.close()


@pytest.mark.parametrize(("name", "size"), [("write", 16), ("writev", 8192)])
async def test_a_full_disk_mid_write_is_rolled_back(
    tmp_path: pathlib.Path, faults: DiskFaults, name: str, size: int
) -> None:
    """Small records are written joined (``os.write``), large entries' data from their own
    buffers (``os.writev``): either way a half-done append is taken back."""
    acknowledged = make_entries(1, 10)
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=acknowledged)
        size_before = records_end(segments(tmp_path)[0])
        faults.fail(name, errno.ENOSPC, partial=True)
        with pytest.raises(OSError) as caught:
            await storage.persist(
                hard_state=None, first_index=11, entries=make_entries(11, 5, size=size)
            )
        assert caught.value.errno == errno.ENOSPC
        # The half-written records were taken back.
        assert segments(tmp_path)[0].stat().st_size == size_before
        faults.heal()
        # The storage is still usable: the same entries go through now.
        await storage.persist(hard_state=None, first_index=11, entries=make_entries(11, 2))
        acknowledged += make_entries(11, 2)
    assert (await reload(tmp_path)).entries == tuple(acknowledged)


@pytest.mark.parametrize("name", ["fdatasync", "write"])
async def test_a_failing_append_leaves_only_what_was_acknowledged(
    tmp_path: pathlib.Path, faults: DiskFaults, name: str
) -> None:
    acknowledged = make_entries(1, 10)
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=acknowledged)
        faults.fail(name, errno.EIO)
        with pytest.raises(OSError) as caught:
            await storage.persist(hard_state=None, first_index=11, entries=make_entries(11, 5))
        assert caught.value.errno == errno.EIO
        faults.heal()
        if name == "fdatasync":
            # A failed fsync leaves the data's fate unknown: no more writes until reloaded.
            with pytest.raises(OSError, match="earlier failure") as refused:
                await storage.persist(hard_state=None, first_index=11, entries=make_entries(11, 1))
            assert refused.value.errno == errno.EIO
    assert (await reload(tmp_path)).entries == tuple(acknowledged)
    async with opened(tmp_path) as storage:  # a fresh load writes again
        await storage.persist(hard_state=None, first_index=11, entries=make_entries(11, 1))
    assert (await reload(tmp_path)).entries == tuple(acknowledged + make_entries(11, 1))


async def test_a_full_disk_when_starting_a_new_segment(
    tmp_path: pathlib.Path, faults: DiskFaults
) -> None:
    acknowledged = make_entries(1, 3)
    async with opened(tmp_path, segment_bytes=300) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=acknowledged)
        before = segments(tmp_path)
        faults.fail("write", errno.ENOSPC, skip=1)  # the active segment's part goes through
        batch = make_entries(4, 20)
        with pytest.raises(OSError):
            await storage.persist(hard_state=None, first_index=4, entries=batch)
        faults.heal()
        # The new segment that could not be written was removed.
        assert segments(tmp_path) == before
    entries = (await reload(tmp_path)).entries
    # What went through is a prefix of the failed batch, after everything acknowledged.
    assert entries[: len(acknowledged)] == tuple(acknowledged)
    assert entries[len(acknowledged) :] == tuple(batch[: len(entries) - len(acknowledged)])


async def test_a_failing_directory_fsync_after_a_new_segment(
    tmp_path: pathlib.Path, faults: DiskFaults
) -> None:
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 2))
        # Truncating from 1 deletes the segment (directory fsync 1), appending creates a
        # new one (directory fsync 2), which fails.
        faults.fail("fsync", errno.EIO, skip=1)
        with pytest.raises(OSError):
            await storage.persist(
                hard_state=None, first_index=1, entries=make_entries(1, 2, term=2)
            )
        faults.heal()
        with pytest.raises(OSError, match="earlier failure"):
            await storage.persist(hard_state=None, first_index=3, entries=make_entries(3, 1))
    # The truncation went through; the new segment was taken back.
    assert (await reload(tmp_path)).entries == ()


async def test_a_failing_hard_state_write_keeps_the_old_one(
    tmp_path: pathlib.Path, faults: DiskFaults
) -> None:
    old = HardState(current_term=3, voted_for="a")
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=old, first_index=1, entries=make_entries(1, 1))
        for name, code in (("write", errno.ENOSPC), ("fsync", errno.EIO)):
            faults.fail(name, code)
            with pytest.raises(OSError) as caught:
                await storage.persist(
                    hard_state=HardState(current_term=4, voted_for="b"),
                    first_index=2,
                    entries=make_entries(2, 1),
                )
            assert caught.value.errno == code
            faults.heal()
        assert not (tmp_path / "hardstate.tmp").exists()
    state = await reload(tmp_path)
    assert state.hard_state == old
    assert state.entries == tuple(make_entries(1, 1))


async def test_a_failing_snapshot_write_keeps_the_old_one(
    tmp_path: pathlib.Path, faults: DiskFaults
) -> None:
    old = SnapshotMeta(index=2, term=1, membership=Membership(), size=3)
    async with opened(tmp_path) as storage:
        await storage.save_snapshot(old, b"old")
        faults.fail("write", errno.ENOSPC, skip=1)
        with pytest.raises(OSError):
            await storage.save_snapshot(
                SnapshotMeta(index=5, term=1, membership=Membership(), size=1000), bytes(1000)
            )
        faults.heal()
        assert await storage.read_snapshot() == b"old"
    assert (await reload(tmp_path)).snapshot == old


async def test_a_failing_truncation_keeps_a_consistent_log(
    tmp_path: pathlib.Path, faults: DiskFaults
) -> None:
    written: list[Entry] = make_entries(1, 30)
    async with opened(tmp_path, segment_bytes=300) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=written)
        faults.fail("unlink", errno.EIO, skip=1)  # the newest segment goes, then a failure
        with pytest.raises(OSError):
            await storage.persist(hard_state=None, first_index=2, entries=())
        faults.heal()
        # The log is a contiguous prefix, and appending after it works.
        entries = (await storage.load()).entries
        assert entries == tuple(written[: len(entries)])
    state = await reload(tmp_path)
    assert state.entries == tuple(written[: len(state.entries)])
    assert 1 < len(state.entries) < 30
