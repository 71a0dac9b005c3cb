"""FileStorage: round trips, truncation, segments, compaction, snapshots, atomic writes."""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Callable

import pytest
import trio
from storage_helpers import (
    copy_dir,
    dir_bytes,
    encode_record,
    make_entries,
    opened,
    records,
    records_end,
    segments,
)

from tinyraft_trio._core._types import (
    Entry,
    EntryKind,
    HardState,
    Member,
    Membership,
    SnapshotMeta,
)
from tinyraft_trio._storage import _file as file_storage_module
from tinyraft_trio._storage._base import PersistentState
from tinyraft_trio._storage._file import FileStorage, _encode_hard_state
from tinyraft_trio._storage._memory import MemoryStorage


async def reload(path: pathlib.Path, *, segment_bytes: int = 64 * 1024 * 1024) -> PersistentState:
    storage = FileStorage(path, segment_bytes=segment_bytes)
    try:
        return await storage.load()
    finally:
        await storage.close()


async def test_a_new_directory_loads_the_initial_state_and_gets_its_layout(
    tmp_path: pathlib.Path,
) -> None:
    data_dir = tmp_path / "a" / "b"
    async with opened(data_dir) as storage:
        assert (data_dir / "LOCK").read_text().strip() == str(os.getpid())
        assert (data_dir / "log").is_dir()
        assert await storage.read_snapshot() == b""
    assert await reload(data_dir) == PersistentState(
        hard_state=HardState(), snapshot=None, entries=()
    )


async def test_round_trip_matches_memory_storage(tmp_path: pathlib.Path) -> None:
    memory = MemoryStorage()
    changes: list[tuple[HardState | None, int | None, list[Entry]]] = [
        (HardState(current_term=1, voted_for="a"), 1, make_entries(1, 3)),
        (None, 4, make_entries(4, 100, size=50)),
        (HardState(current_term=2, voted_for=None), None, []),
        (None, 104, make_entries(104, 1, term=2, size=0)),
        (HardState(current_term=3, voted_for="c"), 105, make_entries(105, 7, term=3)),
    ]
    async with opened(tmp_path) as storage:
        for hard_state, first_index, entries in changes:
            for target in (storage, memory):
                await target.persist(
                    hard_state=hard_state, first_index=first_index, entries=entries
                )
    state = await reload(tmp_path)
    assert state == await memory.load()
    assert [entry.index for entry in state.entries] == list(range(1, 112))
    # The documented record format.
    assert [entry for _, _, entry in records(segments(tmp_path)[0])] == list(state.entries)


async def test_a_hard_state_alone_survives(tmp_path: pathlib.Path) -> None:
    async with opened(tmp_path) as storage:
        await storage.persist(
            hard_state=HardState(current_term=7, voted_for="b"), first_index=None, entries=()
        )
    state = await reload(tmp_path)
    assert state.hard_state == HardState(current_term=7, voted_for="b")
    assert state.entries == ()


async def test_truncating_inside_a_segment_cuts_it_in_place(tmp_path: pathlib.Path) -> None:
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 20))
        segment = segments(tmp_path)[0]
        inode = segment.stat().st_ino
        offset_of_12 = records(segment)[11][0]
        await storage.persist(
            hard_state=None, first_index=12, entries=make_entries(12, 3, term=2, size=5)
        )
        # Cut at the record of entry 12 and appended to, never rewritten.
        assert segment.stat().st_ino == inode
        assert [entry.index for _, _, entry in records(segment)] == list(range(1, 15))
        assert records(segment)[11][0] == offset_of_12
    state = await reload(tmp_path)
    assert state.entries == tuple(make_entries(1, 11) + make_entries(12, 3, term=2, size=5))


async def test_truncating_back_to_an_index_without_new_entries(tmp_path: pathlib.Path) -> None:
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 10))
        await storage.persist(hard_state=None, first_index=6, entries=())
    assert (await reload(tmp_path)).entries == tuple(make_entries(1, 5))


async def test_truncating_across_segments_deletes_the_later_ones(tmp_path: pathlib.Path) -> None:
    async with opened(tmp_path, segment_bytes=256) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 60))
        before = segments(tmp_path)
        assert len(before) > 4
        holder = next(
            path for path in before if any(entry.index == 30 for *_, entry in records(path))
        )
        kept = [path for path in before if path <= holder]
        inodes = {path: path.stat().st_ino for path in kept}
        cut = next(offset for offset, _, entry in records(holder) if entry.index == 30)
        await storage.persist(hard_state=None, first_index=30, entries=())
        assert segments(tmp_path) == kept
        assert records_end(holder) == cut
        assert {path: path.stat().st_ino for path in kept} == inodes
        await storage.persist(hard_state=None, first_index=30, entries=make_entries(30, 40, term=5))
    state = await reload(tmp_path, segment_bytes=256)
    assert state.entries == tuple(make_entries(1, 29) + make_entries(30, 40, term=5))


async def test_truncating_at_a_segments_first_entry_removes_that_segment(
    tmp_path: pathlib.Path,
) -> None:
    async with opened(tmp_path, segment_bytes=256) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 40))
        second = segments(tmp_path)[1]
        first_of_second = int(second.stem)
        await storage.persist(hard_state=None, first_index=first_of_second, entries=())
        assert segments(tmp_path) == segments(tmp_path)[:1]
        assert not second.exists()
    state = await reload(tmp_path)
    assert state.entries == tuple(make_entries(1, first_of_second - 1))


async def test_truncating_before_the_first_stored_entry_starts_over(
    tmp_path: pathlib.Path,
) -> None:
    async with opened(tmp_path, segment_bytes=256) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 40))
        await storage.compact(20)
        first_kept = int(segments(tmp_path)[0].stem)
        assert first_kept > 1
        await storage.persist(
            hard_state=None, first_index=first_kept - 1, entries=make_entries(first_kept - 1, 2)
        )
    state = await reload(tmp_path)
    assert state.entries == tuple(make_entries(first_kept - 1, 2))


async def test_segments_roll_at_segment_bytes(tmp_path: pathlib.Path) -> None:
    written: list[Entry] = []
    async with opened(tmp_path, segment_bytes=4096) as storage:
        for batch in range(10):
            entries = make_entries(len(written) + 1, 50, term=batch + 1, size=60)
            await storage.persist(hard_state=None, first_index=len(written) + 1, entries=entries)
            written += entries
    files = segments(tmp_path)
    assert len(files) > 5
    seen: list[Entry] = []
    for path in files:
        assert path.stat().st_size <= 4096
        found = [entry for *_, entry in records(path)]
        assert path.name == f"{found[0].index:020d}.seg"
        seen += found
    assert seen == written
    assert (await reload(tmp_path, segment_bytes=4096)).entries == tuple(written)
    # A smaller or larger segment_bytes later reads the same log.
    assert (await reload(tmp_path, segment_bytes=100)).entries == tuple(written)


needs_fallocate = pytest.mark.skipif(
    not hasattr(os, "posix_fallocate"), reason="no posix_fallocate: segments are not preallocated"
)


@needs_fallocate
async def test_the_segment_appended_to_is_preallocated_and_trimmed_when_done(
    tmp_path: pathlib.Path,
) -> None:
    """An append into preallocated zeros changes no file size, so its flush commits none."""
    async with opened(tmp_path, segment_bytes=4096) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 3))
        [first] = segments(tmp_path)
        assert first.stat().st_size == 4096
        assert not any(first.read_bytes()[records_end(first) :])
        await storage.persist(hard_state=None, first_index=4, entries=make_entries(4, 200))
        *done, last = segments(tmp_path)
        assert done and all(path.stat().st_size == records_end(path) for path in done)
        assert last.stat().st_size == 4096
        # Cutting the log inside the last segment preallocates its rest again.
        cut = records(last)[1][0]
        await storage.persist(hard_state=None, first_index=records(last)[1][2].index, entries=())
        assert (records_end(last), last.stat().st_size) == (cut, 4096)
    assert last.stat().st_size == cut


async def test_a_copy_taken_while_appending_loads_every_entry_quietly(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a crash leaves: segments that still end in preallocated zeros."""
    written = make_entries(1, 120, size=50)
    async with opened(tmp_path / "live", segment_bytes=4096) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=written)
        copy_dir(tmp_path / "live", tmp_path / "crashed")
    with caplog.at_level("WARNING", logger="tinyraft_trio.storage"):
        async with opened(tmp_path / "crashed", segment_bytes=4096) as storage:
            assert (await storage.load()).entries == tuple(written)
            more = make_entries(121, 30, term=2, size=50)
            await storage.persist(hard_state=None, first_index=121, entries=more)
    assert [r for r in caplog.records if r.name == "tinyraft_trio.storage"] == []
    for path in segments(tmp_path / "crashed"):
        assert path.stat().st_size == records_end(path)
    assert (await reload(tmp_path / "crashed")).entries == tuple(written + more)


async def test_an_entry_larger_than_a_segment_gets_a_segment_alone(
    tmp_path: pathlib.Path,
) -> None:
    big = Entry(term=1, index=3, data=b"x" * 1000)
    async with opened(tmp_path, segment_bytes=300) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 2))
        await storage.persist(hard_state=None, first_index=3, entries=[big, *make_entries(4, 2)])
    names = [path.name for path in segments(tmp_path)]
    assert names == [f"{index:020d}.seg" for index in (1, 3, 4)]
    assert (await reload(tmp_path)).entries == (*make_entries(1, 2), big, *make_entries(4, 2))


async def test_records_of_large_entries_are_the_bytes_of_packing_them_whole(
    tmp_path: pathlib.Path,
) -> None:
    """Entries from 4 KiB on are written from pieces: the records must not differ."""
    sizes = [4095, 4096, 65535, 65536, 200_000]
    terms = [1, 300, 70_000, 2**40, 2**63 - 1]
    written = [
        Entry(term=term, index=index, kind=EntryKind.BATCH, data=bytes([index]) * size)
        for index, (term, size) in enumerate(zip(terms, sizes, strict=True), 1)
    ]
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=written)
    (segment,) = segments(tmp_path)
    expected = b"".join(encode_record(e.term, e.index, int(e.kind), e.data) for e in written)
    assert segment.read_bytes() == expected
    assert (await reload(tmp_path)).entries == tuple(written)


async def test_short_writes_of_large_entries_are_continued(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large entry's data is written from its own buffer, beside the other records
    (``os.writev``); a write that takes only part of them is continued where it stopped,
    inside a buffer or at its end."""
    real_writev = os.writev
    calls = 0

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        nonlocal calls
        calls += 1
        return real_writev(fd, [b"".join(bytes(b) for b in buffers)[:1000]])

    sizes = [100, 5000, 30, 9000, 4096, 10, 4096]
    written = [
        Entry(term=2, index=index, kind=EntryKind.BATCH, data=bytes([index]) * size)
        for index, size in enumerate(sizes, 1)
    ]
    async with opened(tmp_path) as storage:
        monkeypatch.setattr(os, "writev", short_writev)
        await storage.persist(hard_state=None, first_index=1, entries=written)
        monkeypatch.undo()
    (segment,) = segments(tmp_path)
    expected = b"".join(encode_record(e.term, e.index, int(e.kind), e.data) for e in written)
    assert calls == -(-len(expected) // 1000)
    assert segment.read_bytes()[: len(expected)] == expected
    assert (await reload(tmp_path)).entries == tuple(written)


async def test_compaction_deletes_only_whole_covered_segments(tmp_path: pathlib.Path) -> None:
    async with opened(tmp_path, segment_bytes=512) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 100))
        spans = {
            path: (records(path)[0][2].index, records(path)[-1][2].index)
            for path in segments(tmp_path)
        }
        through = 50
        await storage.compact(through)
        remaining = segments(tmp_path)
        for path, (first, last) in spans.items():
            assert (path in remaining) == (last > through), (path, first, last)
        await storage.compact(10)  # already gone: nothing happens
        assert segments(tmp_path) == remaining
        await storage.persist(hard_state=None, first_index=101, entries=make_entries(101, 5))
    state = await reload(tmp_path)
    first_kept = state.entries[0].index
    assert first_kept <= through + 1
    assert state.entries == tuple(make_entries(first_kept, 105 - first_kept + 1))


async def test_compacting_everything_then_appending_after_a_snapshot(
    tmp_path: pathlib.Path,
) -> None:
    meta = SnapshotMeta(index=500, term=4, membership=Membership.of_voters({"a": "h:1"}), size=3)
    async with opened(tmp_path, segment_bytes=512) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 30))
        await storage.save_snapshot(meta, b"abc")
        await storage.compact(500)
        assert segments(tmp_path) == []
        await storage.persist(
            hard_state=None, first_index=501, entries=make_entries(501, 3, term=4)
        )
    state = await reload(tmp_path)
    assert state.snapshot == meta
    assert state.entries == tuple(make_entries(501, 3, term=4))


async def test_persist_rejects_gaps_and_unordered_entries_writing_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 5))
        before = dir_bytes(tmp_path)
        hard_state = HardState(current_term=9, voted_for="z")
        with pytest.raises(ValueError, match="gap"):
            await storage.persist(hard_state=hard_state, first_index=7, entries=make_entries(7, 1))
        with pytest.raises(ValueError, match="follow"):
            await storage.persist(hard_state=hard_state, first_index=6, entries=make_entries(7, 1))
        with pytest.raises(ValueError, match="first_index"):
            await storage.persist(
                hard_state=hard_state, first_index=None, entries=make_entries(6, 1)
            )
        assert dir_bytes(tmp_path) == before


async def test_using_storage_before_load_is_an_error(tmp_path: pathlib.Path) -> None:
    storage = FileStorage(tmp_path)
    with pytest.raises(RuntimeError, match="load"):
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 1))
    await storage.close()
    await storage.close()


async def test_snapshot_save_read_and_reload(tmp_path: pathlib.Path) -> None:
    membership = Membership(
        members=(Member(id="a", address="h:1"), Member(id="b", address="h:2", voter=False))
    )
    data = bytes(range(256)) * 40
    meta = SnapshotMeta(index=77, term=3, membership=membership, size=len(data))
    async with opened(tmp_path) as storage:
        await storage.save_snapshot(meta, data)
        assert await storage.read_snapshot() == data
        assert await storage.read_snapshot(100, 50) == data[100:150]
        assert await storage.read_snapshot(len(data) - 10, 100) == data[-10:]
        assert await storage.read_snapshot(len(data) + 5, 10) == b""
        assert await storage.read_snapshot(9000) == data[9000:]
        with pytest.raises(ValueError, match="size"):
            await storage.save_snapshot(meta, data[:-1])
    state = await reload(tmp_path)
    assert state.snapshot == meta
    async with opened(tmp_path) as storage:
        assert await storage.read_snapshot(1000, 1000) == data[1000:2000]
        newer = SnapshotMeta(index=99, term=4, membership=membership, size=2)
        await storage.save_snapshot(newer, b"hi")
        assert await storage.read_snapshot() == b"hi"
    assert (await reload(tmp_path)).snapshot == newer
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


async def test_leftover_temp_files_are_ignored_and_removed(tmp_path: pathlib.Path) -> None:
    old = HardState(current_term=2, voted_for="a")
    meta = SnapshotMeta(index=5, term=2, membership=Membership(), size=3)
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=old, first_index=1, entries=make_entries(1, 5))
        await storage.save_snapshot(meta, b"old")
    # A crash after writing the temp files but before renaming them: a complete, valid new
    # hard state, and a half-written snapshot.
    (tmp_path / "hardstate.tmp").write_bytes(_encode_hard_state(HardState(current_term=3)))
    (tmp_path / "snapshot.tmp").write_bytes(b"TRSN\x00\x00")
    state = await reload(tmp_path)
    assert state.hard_state == old
    assert state.snapshot == meta
    assert not (tmp_path / "hardstate.tmp").exists()
    assert not (tmp_path / "snapshot.tmp").exists()
    async with opened(tmp_path) as storage:
        assert await storage.read_snapshot() == b"old"


async def test_an_unchanged_hard_state_is_not_rewritten(tmp_path: pathlib.Path) -> None:
    hard_state = HardState(current_term=1, voted_for="a")
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=hard_state, first_index=None, entries=())
        inode = (tmp_path / "hardstate").stat().st_ino
        await storage.persist(hard_state=hard_state, first_index=1, entries=make_entries(1, 1))
        assert (tmp_path / "hardstate").stat().st_ino == inode
        await storage.persist(hard_state=HardState(current_term=2), first_index=None, entries=())
        assert (tmp_path / "hardstate").stat().st_ino != inode


@pytest.mark.parametrize(
    ("size", "in_thread"), [(16, False), (128 * 1024, True)], ids=["inline", "in-thread"]
)
async def test_a_persist_cancelled_in_flight_completes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, size: int, in_thread: bool
) -> None:
    """Once it started writing, persist is not interrupted: the change is durable. Small
    appends are written on the event loop, large ones in a worker thread."""
    real_fdatasync = os.fdatasync
    scope = trio.CancelScope()
    threads: list[int] = []

    def fdatasync_and_cancel(fd: int) -> None:
        threads.append(threading.get_ident())
        if threading.get_ident() == loop_thread:
            scope.cancel()
        else:
            trio.from_thread.run_sync(scope.cancel)
        real_fdatasync(fd)

    loop_thread = threading.get_ident()
    entries = make_entries(1, 3, size=size)
    async with opened(tmp_path) as storage:
        monkeypatch.setattr(os, "fdatasync", fdatasync_and_cancel)
        returned = False
        with scope:
            await storage.persist(hard_state=None, first_index=1, entries=entries)
            returned = True
            await trio.lowlevel.checkpoint()
        monkeypatch.undo()
        assert returned and scope.cancelled_caught
        assert (threads[0] != loop_thread) is in_thread
    assert (await reload(tmp_path)).entries == tuple(entries)


class PlayedFsyncs:
    """Stands in for ``os.fdatasync`` and for the clock FileStorage times its inline appends
    with: fsync number ``n`` (from 1) records its thread and takes ``duration(n)`` seconds
    of that clock. Nothing reaches this machine's disk, so its speed cannot change a test."""

    def __init__(self, duration: Callable[[int], float]) -> None:
        self.threads: list[int] = []
        self.now = 0.0
        self._duration = duration

    def fdatasync(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        self.now += self._duration(len(self.threads))

    def perf_counter(self) -> float:
        return self.now


def play_fsyncs(monkeypatch: pytest.MonkeyPatch, duration: Callable[[int], float]) -> PlayedFsyncs:
    played = PlayedFsyncs(duration)
    monkeypatch.setattr(os, "fdatasync", played.fdatasync)
    monkeypatch.setattr(file_storage_module, "time", played)  # its only use: perf_counter
    return played


async def test_after_a_slow_inline_append_appends_go_to_a_worker_thread(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk blocks the event loop for one small append in 21, not for every one;
    once it is fast again, appends come back to the event loop."""
    loop_thread = threading.get_ident()
    async with opened(tmp_path) as storage:
        # The first append starts a segment (and syncs the directory): not judged.
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 1))
        # The disk takes 10 ms per fsync for 25 appends, then no time at all.
        played = play_fsyncs(monkeypatch, lambda n: 0.010 if n <= 25 else 0.0)
        for index in range(2, 62):
            await storage.persist(
                hard_state=None, first_index=index, entries=make_entries(index, 1)
            )
        monkeypatch.undo()
    inline = [thread == loop_thread for thread in played.threads]
    # One slow append inline, the next 20 in the thread, one inline again (still slow: 20
    # more in the thread), then the disk is fast: the rest inline.
    assert inline == [True] + [False] * 20 + [True] + [False] * 20 + [True] * 18
    assert (await reload(tmp_path)).entries == tuple(make_entries(1, 61))


async def test_persist_now_writes_small_appends_and_declines_the_rest_writing_nothing(
    tmp_path: pathlib.Path,
) -> None:
    """The node's synchronous path: a small append is durable when it returns True; a hard
    state or a large append is declined (False) untouched, for ``persist`` in a thread."""
    async with opened(tmp_path) as storage:
        assert storage.persist_now(hard_state=None, first_index=1, entries=make_entries(1, 3))
        before = dir_bytes(tmp_path)
        hard_state = HardState(current_term=2, voted_for="b")
        assert not storage.persist_now(
            hard_state=hard_state, first_index=4, entries=make_entries(4, 1)
        )
        large = make_entries(4, 3, size=64 * 1024)
        assert not storage.persist_now(hard_state=None, first_index=4, entries=large)
        assert dir_bytes(tmp_path) == before
        await storage.persist(hard_state=hard_state, first_index=4, entries=large)
    state = await reload(tmp_path)
    assert state.hard_state == hard_state
    assert state.entries == (*make_entries(1, 3), *large)


async def test_an_occasional_slow_inline_append_keeps_appends_inline(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fast disk, a slow fsync now and then (disks shared by several nodes have them)
    does not send the following appends to a worker thread: only a slow disk does."""
    slow = {12, 30}  # the 12th and 30th appends take 15 ms; the others no time at all
    loop_thread = threading.get_ident()
    async with opened(tmp_path) as storage:
        await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 1))
        played = play_fsyncs(monkeypatch, lambda n: 0.015 if n in slow else 0.0)
        for index in range(2, 42):
            await storage.persist(
                hard_state=None, first_index=index, entries=make_entries(index, 1)
            )
        monkeypatch.undo()
    threads = played.threads
    assert len(threads) == 40 and all(thread == loop_thread for thread in threads)
    assert (await reload(tmp_path)).entries == tuple(make_entries(1, 41))


async def test_a_persist_cancelled_before_it_starts_writes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async with opened(tmp_path) as storage:
        with trio.CancelScope() as scope:
            scope.cancel()
            await storage.persist(hard_state=None, first_index=1, entries=make_entries(1, 3))
    assert (await reload(tmp_path)).entries == ()
