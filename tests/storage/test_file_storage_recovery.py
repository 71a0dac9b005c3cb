"""FileStorage on start: torn final records are cut, any other damage refuses to start."""

from __future__ import annotations

import logging
import os
import pathlib
import random

import pytest
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

from tinyraft_trio._core._types import HardState, Membership, SnapshotMeta
from tinyraft_trio._exceptions import RaftError
from tinyraft_trio._storage._base import PersistentState
from tinyraft_trio._storage._file import DataDirLockedError, FileStorage, StorageCorruptedError

LOGGER = "tinyraft_trio.storage"
SEGMENT_BYTES = 300


async def make_pristine(path: pathlib.Path, count: int = 40) -> None:
    """A data dir with a hard state, a snapshot and ``count`` entries over several segments."""
    meta = SnapshotMeta(index=3, term=1, membership=Membership.of_voters({"a": "h:1"}), size=4)
    async with opened(path, segment_bytes=SEGMENT_BYTES) as storage:
        await storage.persist(
            hard_state=HardState(current_term=2, voted_for="a"),
            first_index=1,
            entries=make_entries(1, count // 2),
        )
        await storage.save_snapshot(meta, b"snap")
        await storage.persist(
            hard_state=None,
            first_index=count // 2 + 1,
            entries=make_entries(count // 2 + 1, count - count // 2, term=2),
        )
    assert len(segments(path)) >= 3


def expected_entries(count: int = 40) -> tuple[object, ...]:
    return tuple(
        make_entries(1, count // 2) + make_entries(count // 2 + 1, count - count // 2, term=2)
    )


async def reload(path: pathlib.Path) -> PersistentState:
    storage = FileStorage(path, segment_bytes=SEGMENT_BYTES)
    try:
        return await storage.load()
    finally:
        await storage.close()


def storage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------- torn tails


async def test_every_torn_final_record_is_cut_with_one_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    pristine = tmp_path / "pristine"
    await make_pristine(pristine)
    expected = expected_entries()
    last_segment = segments(pristine)[-1].name
    start, end, _ = records(segments(pristine)[-1])[-1]
    assert end - start > 20
    work = tmp_path / "work"
    torn_record = (segments(pristine)[-1]).read_bytes()[start:end]
    for cut in range(start, end):
        copy_dir(pristine, work)
        os.truncate(work / "log" / last_segment, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            async with opened(work, segment_bytes=SEGMENT_BYTES) as storage:
                state = await storage.load()  # a second load re-reads the (cut) directory
                assert state.entries == expected[:-1], cut
                assert state.hard_state == HardState(current_term=2, voted_for="a")
                warnings = storage_warnings(caplog)
                if not any(torn_record[: cut - start]):
                    # At a record boundary, or in the zero bytes that begin the record's
                    # length: the records end there, as before preallocated zeros.
                    assert warnings == []
                    assert records_end(work / "log" / last_segment) == start
                else:
                    assert len(warnings) == 1, [w.getMessage() for w in warnings]
                    message = warnings[0].getMessage()
                    assert str(work / "log" / last_segment) in message
                    assert f"offset {start}" in message
                    assert (work / "log" / last_segment).stat().st_size == start
                # Appending after the cut works and survives a reload.
                more = make_entries(40, 3, term=3)
                await storage.persist(hard_state=None, first_index=40, entries=more)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            async with opened(work, segment_bytes=SEGMENT_BYTES) as storage:
                state = await storage.load()
        assert state.entries == expected[:-1] + tuple(more)
        assert storage_warnings(caplog) == []


async def test_a_final_record_failing_its_checksum_at_the_end_is_torn(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    await make_pristine(tmp_path)
    last = segments(tmp_path)[-1]
    start, end, _ = records(last)[-1]
    raw = bytearray(last.read_bytes())
    raw[end - 3] ^= 0xFF
    last.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with opened(tmp_path) as storage:
            assert (await storage.load()).entries == expected_entries()[:-1]
    [warning] = storage_warnings(caplog)
    assert f"{last} at offset {start}" in warning.getMessage()


@pytest.mark.parametrize("which", ["last", "before the last"])
async def test_zeros_after_the_records_end_the_segment_quietly(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, which: str
) -> None:
    """What a crash leaves of a preallocated segment (or of a file system that shows zeros
    where an interrupted write extended a file): nothing is lost, nothing to warn about."""
    await make_pristine(tmp_path)
    segment = segments(tmp_path)[-1 if which == "last" else -2]
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(bytes(4096))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with opened(tmp_path, segment_bytes=SEGMENT_BYTES) as storage:
            assert (await storage.load()).entries == expected_entries()
            more = make_entries(41, 3, term=3)
            await storage.persist(hard_state=None, first_index=41, entries=more)
    assert storage_warnings(caplog) == []
    assert segment.stat().st_size == size  # trimmed when the storage closed or moved on
    assert (await reload(tmp_path)).entries == expected_entries() + tuple(more)


async def test_a_segment_of_zeros_before_the_last_refuses(tmp_path: pathlib.Path) -> None:
    await make_pristine(tmp_path)
    middle = segments(tmp_path)[1]
    middle.write_bytes(bytes(middle.stat().st_size))
    error = await expect_corruption(tmp_path)
    assert error.path == str(middle)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(encode_record(2, 41, 0, b"lost")[:-2], id="torn first record"),
        # Created and preallocated, then a crash before its first record was written.
        pytest.param(bytes(SEGMENT_BYTES), id="zeros"),
    ],
)
async def test_a_last_segment_without_an_intact_record_is_removed(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    await make_pristine(tmp_path)
    before = segments(tmp_path)
    new_segment = tmp_path / "log" / f"{41:020d}.seg"
    new_segment.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with opened(tmp_path) as storage:
            assert (await storage.load()).entries == expected_entries()
    [warning] = storage_warnings(caplog)
    assert f"{new_segment} at offset 0" in warning.getMessage()
    assert segments(tmp_path) == before


async def test_an_empty_last_segment_is_removed(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    await make_pristine(tmp_path)
    empty = tmp_path / "log" / f"{41:020d}.seg"
    empty.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with opened(tmp_path) as storage:
            assert (await storage.load()).entries == expected_entries()
            await storage.persist(hard_state=None, first_index=41, entries=make_entries(41, 1))
    assert len(storage_warnings(caplog)) == 1
    async with opened(tmp_path) as storage:
        assert (await storage.load()).entries[-1].index == 41


# ---------------------------------------------------------------------------- corruption


async def expect_corruption(path: pathlib.Path) -> StorageCorruptedError:
    """Loading ``path`` refuses, changes nothing, and releases the lock."""
    before = dir_bytes(path)
    storage = FileStorage(path)
    with pytest.raises(StorageCorruptedError) as caught:
        await storage.load()
    await storage.close()
    assert dir_bytes(path) == before
    # The lock was released: loading again meets the same damage, not a lock.
    with pytest.raises(StorageCorruptedError):
        await FileStorage(path).load()
    error = caught.value
    assert isinstance(error, RaftError)
    assert "Nothing was changed" in str(error)
    assert f"tinyraft-trio check --data-dir {path}" in str(error)
    assert error.path in str(error)
    return error


@pytest.mark.parametrize("seed", range(12))
async def test_flipped_bits_before_the_last_record_refuse_to_start(
    tmp_path: pathlib.Path, seed: int
) -> None:
    await make_pristine(tmp_path)
    rng = random.Random(seed)
    files = segments(tmp_path)
    candidates = [
        (path, start, end)
        for path in files
        for start, end, _ in records(path)
        if not (path == files[-1] and end == path.stat().st_size)
    ]
    path, start, end = rng.choice(candidates)
    raw = bytearray(path.read_bytes())
    for bit in rng.sample(range((end - start) * 8), rng.randint(1, 3)):
        raw[start + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(raw))
    error = await expect_corruption(tmp_path)
    assert error.path == str(path)
    assert error.offset == start
    assert f"{path} at offset {start}" in str(error)


async def test_a_bad_length_in_the_last_segment_is_not_taken_for_a_torn_tail(
    tmp_path: pathlib.Path,
) -> None:
    """A length that runs past the end, with intact records after it, is damage."""
    await make_pristine(tmp_path)
    last = segments(tmp_path)[-1]
    start, _, _ = records(last)[0]
    raw = bytearray(last.read_bytes())
    raw[start] = 0x7F  # the length now runs far past the end of the file
    last.write_bytes(bytes(raw))
    error = await expect_corruption(tmp_path)
    assert (error.path, error.offset) == (str(last), start)


async def test_a_missing_middle_segment_refuses_naming_the_gap(tmp_path: pathlib.Path) -> None:
    await make_pristine(tmp_path)
    files = segments(tmp_path)
    lost_entries = [entry.index for *_, entry in records(files[1])]
    files[1].unlink()
    error = await expect_corruption(tmp_path)
    assert error.path == str(files[2])
    assert f"entries {lost_entries[0]}..{lost_entries[-1]} are missing" in str(error)


async def test_a_segment_named_after_the_wrong_index_refuses(tmp_path: pathlib.Path) -> None:
    await make_pristine(tmp_path)
    last = segments(tmp_path)[-1]
    first = int(last.stem)
    renamed = last.with_name(f"{first + 1:020d}.seg")
    last.rename(renamed)
    error = await expect_corruption(tmp_path)
    assert error.path == str(renamed)
    assert "missing" not in str(error)  # the gap check names the file, then its first record
    assert str(first + 1) in str(error)


async def test_a_record_whose_index_does_not_follow_refuses(tmp_path: pathlib.Path) -> None:
    await make_pristine(tmp_path)
    last = segments(tmp_path)[-1]
    size = last.stat().st_size
    with last.open("ab") as file:
        file.write(encode_record(2, 45, 0, b"skips 41..44"))
    error = await expect_corruption(tmp_path)
    assert (error.path, error.offset) == (str(last), size)
    assert "index 45, expected 41" in str(error)


@pytest.mark.parametrize(
    "content",
    [b"garbage", b"", b"TRHS\x00\x00\x00\x01\x00\x00\x00\x00\x92\x01\xc0", b"XXXX" + bytes(20)],
)
async def test_a_damaged_hardstate_refuses(tmp_path: pathlib.Path, content: bytes) -> None:
    await make_pristine(tmp_path)
    (tmp_path / "hardstate").write_bytes(content)
    error = await expect_corruption(tmp_path)
    assert error.path == str(tmp_path / "hardstate")


async def test_a_flipped_bit_in_the_hardstate_refuses(tmp_path: pathlib.Path) -> None:
    await make_pristine(tmp_path)
    path = tmp_path / "hardstate"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    error = await expect_corruption(tmp_path)
    assert error.path == str(path)
    assert "checksum" in str(error)


@pytest.mark.parametrize("where", [0, 5, 14, -1])
async def test_a_damaged_snapshot_refuses(tmp_path: pathlib.Path, where: int) -> None:
    await make_pristine(tmp_path)
    path = tmp_path / "snapshot"
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0x10
    path.write_bytes(bytes(raw))
    error = await expect_corruption(tmp_path)
    assert error.path == str(path)


async def test_a_truncated_snapshot_refuses(tmp_path: pathlib.Path) -> None:
    await make_pristine(tmp_path)
    path = tmp_path / "snapshot"
    os.truncate(path, path.stat().st_size - 1)
    error = await expect_corruption(tmp_path)
    assert error.path == str(path)


async def test_a_locked_directory_is_not_read(tmp_path: pathlib.Path) -> None:
    await make_pristine(tmp_path)
    async with opened(tmp_path):
        with pytest.raises(DataDirLockedError):
            await FileStorage(tmp_path).load()
