"""Helpers shared by the FileStorage tests.

The record parser here is written from the layout documented in ``_file.py`` (not with the
module's own code), so the tests also check that the documented format is the real one.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack

from tinyraft_trio._core._types import Entry, EntryKind
from tinyraft_trio._storage._file import FileStorage

LOG = "log"


def make_entries(first: int, count: int, *, term: int = 1, size: int = 16) -> list[Entry]:
    def kind(index: int) -> EntryKind:
        if index % 11 == 0:
            return EntryKind.CONFIG
        if index % 7 == 0:
            return EntryKind.BATCH
        return EntryKind.NOOP if index % 5 == 0 else EntryKind.COMMAND

    return [
        Entry(
            term=term,
            index=index,
            kind=kind(index),
            data=(f"{index}:{term}:".encode() * size)[:size],
        )
        for index in range(first, first + count)
    ]


@asynccontextmanager
async def opened(
    path: str | os.PathLike[str], *, segment_bytes: int = 64 * 1024 * 1024
) -> AsyncIterator[FileStorage]:
    """A loaded FileStorage, closed on exit (its load() result is ``storage.loaded``)."""
    storage = FileStorage(path, segment_bytes=segment_bytes)
    await storage.load()
    try:
        yield storage
    finally:
        await storage.close()


def segments(data_dir: str | os.PathLike[str]) -> list[pathlib.Path]:
    return sorted(pathlib.Path(data_dir, LOG).glob("*.seg"))


def records(path: str | os.PathLike[str]) -> list[tuple[int, int, Entry]]:
    """(offset, end, entry) of every record of a segment file, which must be intact.

    The records end where the file does or where zeros fill the rest of it (preallocated).
    """
    raw = pathlib.Path(path).read_bytes()
    found = []
    offset = 0
    while offset < len(raw):
        length, crc = struct.unpack_from(">II", raw, offset)
        if length == 0 and raw.count(0, offset) == len(raw) - offset:
            break  # the zeros of a preallocated segment
        payload = raw[offset + 8 : offset + 8 + length]
        assert len(payload) == length and zlib.crc32(payload) == crc
        term, index, kind, data = msgpack.unpackb(payload)
        end = offset + 8 + length
        found.append((offset, end, Entry(term=term, index=index, kind=EntryKind(kind), data=data)))
        offset = end
    return found


def records_end(path: str | os.PathLike[str]) -> int:
    """Where a segment file's records end (after it, zeros or nothing)."""
    found = records(path)
    return found[-1][1] if found else 0


def encode_record(term: int, index: int, kind: int, data: bytes) -> bytes:
    payload: bytes = msgpack.packb([term, index, kind, data], use_bin_type=True)
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def dir_bytes(data_dir: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file under ``data_dir`` (but LOCK) and its content."""
    root = pathlib.Path(data_dir)
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "LOCK"
    }


def copy_dir(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("LOCK"))
