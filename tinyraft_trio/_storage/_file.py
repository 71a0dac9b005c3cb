"""FileStorage: a node's hard state, log and snapshot, durable in a data directory.

The design follows hashicorp/raft-wal and etcd's WAL: an append-only log cut into segment
files of checksummed records, and small state files replaced atomically. Layout::

    DATA_DIR/
      LOCK        flock()ed (LOCK_EX|LOCK_NB) while a node (or the check tool) uses the
                  directory; holds the owner's pid, for the error message of whoever is refused
      hardstate   [b"TRHS"][u32 version][u32 crc32 of the rest][msgpack [current_term, voted_for]]
      snapshot    [b"TRSN"][u32 version][u32 crc32 of the rest][u32 len(meta)][msgpack meta][data]
                  where meta is [index, term, size, [[id, address, voter], ...]]
      log/00000000000000000001.seg
                  segment files, named by the index of their first entry (20 digits), holding
                  records [u32 length][u32 crc32 of payload][payload], one per entry, with
                  payload = msgpack [term, index, kind, data]

Integers are big-endian; checksums are zlib's CRC-32 (see ``_checksum``). ``hardstate`` and
``snapshot`` are replaced atomically: written to ``NAME.tmp`` in the same directory, fsynced,
renamed over ``NAME``, and the directory fsynced, so a crash leaves the old or the new file,
never a mix. A leftover ``NAME.tmp`` is removed on start.

The log only appends and truncates. Appending writes a batch of entries to the last segment
with one ``write()`` and one ``fdatasync()`` (group commit), starting a new segment when the
last one would grow past ``segment_bytes``. Truncating cuts one segment at a record boundary
and deletes the segments after it (newest first, so a crash leaves a contiguous log).
Compaction deletes whole segments that a snapshot covers.

The segment being appended to is preallocated to ``segment_bytes`` (``posix_fallocate``, as
etcd's WAL does): its records are followed by zeros, and an append changes no file size, so its
``fdatasync`` has no metadata to commit (on ext4, 193 against 146 us at p50 for a lone flush on
the benchmark's host). The records end where the zeros begin. A segment is trimmed to its
records when the next one starts, when the storage closes and when it loads, so a directory
holds zeros only after a crash, at the end of its last segment or two.

On start, every record's checksum is verified:

- Zeros from a record boundary to the end of a segment are the unused part of its
  preallocation: the segment ends there, and nothing is said.
- A damaged final record of the last segment (incomplete, or failing its checksum), with no
  intact record after it in that file, is what a crash during a write leaves. It was never
  acknowledged: it is cut away, with one warning naming the file and offset. So is a last
  segment holding nothing but zeros (a crash right after it was created).
- Any other damage (a bad record with intact records after it, a record whose index does not
  follow the previous one, a missing segment, a segment whose name does not match its first
  record, an unreadable ``hardstate`` or ``snapshot``) refuses to start with
  ``StorageCorruptedError``, changing nothing; ``tinyraft-trio check --data-dir DIR`` reports
  it, and ``--repair`` cuts a damaged log after its last intact record.

POSIX only (``fcntl.flock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import trio

from .._core._types import (
    ENTRY_KIND_OF,
    Entry,
    EntryKind,
    HardState,
    Index,
    Member,
    Membership,
    SnapshotMeta,
    build_entry,
)
from .._exceptions import RaftError
from .._wire import entry_head
from ._base import PersistentState
from ._checksum import crc32

logger = logging.getLogger("tinyraft_trio.storage")

DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024

LOCK_NAME = "LOCK"
HARD_STATE_NAME = "hardstate"
SNAPSHOT_NAME = "snapshot"
LOG_DIR_NAME = "log"
TEMP_SUFFIX = ".tmp"
SEGMENT_SUFFIX = ".seg"

_FORMAT_VERSION = 1

_INLINE_APPEND_MAX_BYTES = 64 * 1024
_INLINE_APPEND_MAX_ENTRIES = 256
_INLINE_APPEND_MAX_SECONDS = 0.005
"""Inline appends that typically take longer block the event loop too long: to the thread."""
_INLINE_COST_WEIGHT = 1 / 8
"""Weight of the latest inline append in the running average of their durations."""
_INLINE_COST_START = 0.875 * _INLINE_APPEND_MAX_SECONDS
"""The average assumed before the first inline append, and after each spell in the thread:
pessimistic, so that one append slower than 10 ms sends the next ones to the thread."""
_INLINE_BACKOFF_APPENDS = 20
_HARD_STATE_MAGIC = b"TRHS"
_SNAPSHOT_MAGIC = b"TRSN"
# magic, format version, crc32 of everything after this header
_FILE_HEADER = struct.Struct(">4sII")
_META_LENGTH = struct.Struct(">I")
# payload length, crc32 of the payload
_RECORD_HEADER = struct.Struct(">II")
_LARGE_DATA_BYTES = 4096
"""From this many data bytes on, an entry's record is put together from pieces."""
# Every record payload is a msgpack array of 4 items, which starts with this byte.
_PAYLOAD_MARKER = b"\x94"
_SEGMENT_NAME = re.compile(r"^([0-9]{20})\.seg$")
_READ_CHUNK = 1024 * 1024


# ---------------------------------------------------------------------------------- errors


class StorageCorruptedError(RaftError):
    """The data directory holds damage that a crash alone cannot explain; nothing was changed.

    Attributes:
        path: the damaged file (or, for a missing segment, the segment after the gap).
        offset: the byte offset of the damaged record in ``path``, or None.
        reason: what is wrong, in a few words.
        data_dir: the data directory.
    """

    def __init__(self, path: str, offset: int | None, reason: str, *, data_dir: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        self.data_dir = data_dir
        super().__init__(
            f"{_where(path, offset)}: {reason}. Nothing was changed. Run "
            f"`tinyraft-trio check --data-dir {data_dir}` to see what is damaged and how to "
            "repair it"
        )


class DataDirLockedError(RaftError):
    """Another process (or another storage object in this one) is using the data directory.

    Attributes:
        path: the data directory.
        pid: the process holding its lock, or None if unknown.
    """

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process (pid unknown)"
        super().__init__(
            f"data directory {path} is in use by {holder}: two nodes must never share a "
            "data directory"
        )


def _where(path: str, offset: int | None) -> str:
    return path if offset is None else f"{path} at offset {offset}"


# ---------------------------------------------------------------------------- low-level I/O

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_HAVE_FALLOCATE = hasattr(os, "posix_fallocate")


def _preallocate(fd: int, size: int) -> None:
    """Extend the file to at least ``size`` bytes of reserved zeros, if the platform can.

    Best effort: without it (no ``posix_fallocate``, or it fails, say for a full disk) appends
    still work, each flush then also committing the file's new size.
    """
    if _HAVE_FALLOCATE:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


def _trim_zero_tails(segments: list[_Segment]) -> None:
    """Cut the zeros a crash left after segments' records (preallocated, never trimmed).

    Not synced: zeros that come back after a crash are the end of the records again.
    """
    for segment in segments:
        if os.path.getsize(segment.path) > segment.size:
            os.truncate(segment.path, segment.size)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _iov_max() -> int:
    """The most buffers one ``os.writev`` takes: 1024 on Linux, macOS and the BSDs."""
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):  # pragma: no cover
        return 16  # what POSIX promises
    return min(limit, 1024) if limit >= 16 else 16


_IOV_MAX = _iov_max()


class _Pieces:
    """One write's bytes, in pieces: the joined records, and large entries' data each in
    its own buffer, written together with ``os.writev``.

    So a batch entry of a thousand 1 KiB commands is not copied into the records first: a
    megabyte, into memory new to the process, before the kernel copies it again.
    """

    __slots__ = ("buffers",)

    def __init__(self, records: bytearray) -> None:
        self.buffers: list[bytes | bytearray] = [records]

    def __len__(self) -> int:
        return sum(len(buffer) for buffer in self.buffers)

    def add_large(self, data: bytes) -> bytearray:
        """Add ``data`` after the records so far; return the buffer for the records after it."""
        self.buffers.append(data)
        records = bytearray()
        self.buffers.append(records)
        return records

    def write_to(self, fd: int) -> None:
        """Write every piece at ``fd``'s offset, in order (a short write is continued)."""
        buffers: list[bytes | bytearray | memoryview] = [b for b in self.buffers if b]
        if len(buffers) == 1:
            _write_all(fd, buffers[0])
            return
        while buffers:
            written = os.writev(fd, buffers[:_IOV_MAX])
            while buffers and written >= len(buffers[0]):
                written -= len(buffers.pop(0))
            if written:
                buffers[0] = memoryview(buffers[0])[written:]


def _sync_file(fd: int) -> None:
    """Make a file's data (and its size) durable."""
    if sys.platform == "darwin":  # pragma: no cover - fsync does not reach the platter there
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover
        os.fsync(fd)


def _sync_dir(fd: int) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    os.fsync(fd)


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)


def _sync_dir_path(path: str) -> None:
    fd = _open_dir(path)
    try:
        _sync_dir(fd)
    finally:
        os.close(fd)


def _make_dir(path: str) -> None:
    """Create ``path`` (and missing parents) durably, if it does not exist."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _make_dir(parent)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    if parent:
        _sync_dir_path(parent)


def _atomic_write(dir_fd: int, dir_path: str, name: str, chunks: Sequence[bytes]) -> None:
    """Replace ``dir_path/name`` with ``chunks``, durably: old or new survives a crash.

    Raises:
        _DirSyncError: everything succeeded but the final directory fsync; whether the new
            file survives a crash is unknown.
    """
    temp = os.path.join(dir_path, name + TEMP_SUFFIX)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    try:
        os.replace(temp, os.path.join(dir_path, name))
    except BaseException:
        _unlink_quietly(temp)
        raise
    try:
        _sync_dir(dir_fd)
    except OSError as exc:
        raise _DirSyncError(exc) from exc


class _DirSyncError(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


# ----------------------------------------------------------------------------- the lock


class _DirLock:
    """The data directory's LOCK file, held with flock() for as long as it is acquired."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        path = os.path.join(self.data_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                pid = _lock_holder(fd)
            finally:
                os.close(fd)
            raise DataDirLockedError(self.data_dir, pid) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def _lock_holder(fd: int) -> int | None:
    """The pid holding the flock on ``fd``'s file: as written in it, else from /proc/locks."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    if text.isdigit():
        return int(text)
    try:
        inode = os.fstat(fd).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                parts = line.split()
                if (
                    len(parts) >= 6
                    and "->" not in parts
                    and parts[1] == "FLOCK"
                    and parts[5].rsplit(":", 1)[-1] == str(inode)
                    and parts[4].isdigit()
                ):
                    return int(parts[4])
    except OSError:
        pass
    return None


# -------------------------------------------------------------------------- encodings


def _encode_hard_state(hard_state: HardState) -> bytes:
    body: bytes = msgpack.packb([hard_state.current_term, hard_state.voted_for], use_bin_type=True)
    return _FILE_HEADER.pack(_HARD_STATE_MAGIC, _FORMAT_VERSION, crc32(body)) + body


def _check_file_header(
    raw: bytes, magic: bytes, path: str, data_dir: str
) -> tuple[int, int]:  # (crc, header end)
    if len(raw) < _FILE_HEADER.size:
        raise StorageCorruptedError(
            path, None, f"file too short ({len(raw)} bytes)", data_dir=data_dir
        )
    found_magic, version, crc = _FILE_HEADER.unpack_from(raw)
    if found_magic != magic:
        raise StorageCorruptedError(
            path, None, f"not a tinyraft_trio {os.path.basename(path)} file", data_dir=data_dir
        )
    if version != _FORMAT_VERSION:
        raise StorageCorruptedError(
            path, None, f"unsupported format version {version}", data_dir=data_dir
        )
    return crc, _FILE_HEADER.size


def _read_hard_state(path: str, data_dir: str) -> HardState:
    """Read and verify ``hardstate``; a missing file is the initial state."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        return HardState()
    crc, start = _check_file_header(raw, _HARD_STATE_MAGIC, path, data_dir)
    body = raw[start:]
    if crc32(body) != crc:
        raise StorageCorruptedError(path, None, "checksum mismatch", data_dir=data_dir)
    try:
        value = msgpack.unpackb(body, raw=False)
    except Exception as exc:
        raise StorageCorruptedError(
            path, None, f"cannot decode: {exc}", data_dir=data_dir
        ) from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not _is_int(value[0])
        or value[0] < 0
        or not (value[1] is None or isinstance(value[1], str))
    ):
        raise StorageCorruptedError(
            path, None, f"unexpected content {value!r:.80}", data_dir=data_dir
        )
    return HardState(current_term=value[0], voted_for=value[1])


def _encode_snapshot_meta(meta: SnapshotMeta) -> bytes:
    members = [[m.id, m.address, m.voter] for m in meta.membership.members]
    packed: bytes = msgpack.packb([meta.index, meta.term, meta.size, members], use_bin_type=True)
    return packed


def _decode_snapshot_meta(raw: bytes) -> SnapshotMeta:
    value = msgpack.unpackb(raw, raw=False)
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError("metadata is not a list of 4 items")
    index, term, size, members = value
    if not (_is_int(index) and _is_int(term) and _is_int(size)) or min(index, term, size) < 0:
        raise ValueError("bad index, term or size")
    if not isinstance(members, list):
        raise ValueError("bad membership")
    parsed = []
    for item in members:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or not isinstance(item[2], bool)
        ):
            raise ValueError(f"bad member {item!r:.80}")
        parsed.append(Member(id=item[0], address=item[1], voter=item[2]))
    return SnapshotMeta(
        index=index, term=term, membership=Membership(members=tuple(parsed)), size=size
    )


def _read_snapshot_meta(path: str, data_dir: str) -> tuple[SnapshotMeta, int] | None:
    """Verify ``snapshot`` (streaming its data, keeping none) and return (meta, data offset)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with file:
        head = file.read(_FILE_HEADER.size + _META_LENGTH.size)
        crc, start = _check_file_header(head, _SNAPSHOT_MAGIC, path, data_dir)
        if len(head) < start + _META_LENGTH.size:
            raise StorageCorruptedError(path, None, "file too short", data_dir=data_dir)
        running = crc32(head[start:])
        (meta_length,) = _META_LENGTH.unpack_from(head, start)
        meta_raw = file.read(meta_length)
        running = crc32(meta_raw, running)
        data_length = 0
        while chunk := file.read(_READ_CHUNK):
            running = crc32(chunk, running)
            data_length += len(chunk)
    if running != crc:
        raise StorageCorruptedError(path, None, "checksum mismatch", data_dir=data_dir)
    try:
        meta = _decode_snapshot_meta(meta_raw)
    except Exception as exc:
        raise StorageCorruptedError(
            path, None, f"cannot decode its metadata: {exc}", data_dir=data_dir
        ) from None
    if meta.size != data_length:
        raise StorageCorruptedError(
            path,
            None,
            f"metadata says {meta.size} bytes of data, the file holds {data_length}",
            data_dir=data_dir,
        )
    return meta, start + _META_LENGTH.size + meta_length


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_unpackb = msgpack.unpackb


def _decode_payload(payload: bytes | memoryview) -> tuple[int, int, EntryKind, bytes]:
    """Decode a record's payload (whose checksum passed) or raise ValueError."""
    try:
        value = _unpackb(payload)
    except Exception as exc:
        raise ValueError(f"cannot decode: {exc}") from None
    # type() is, not isinstance: this runs once per entry on start, and excludes bool.
    if type(value) is list and len(value) == 4:
        term, index, kind, data = value
        if type(term) is int and type(index) is int and term >= 0 and index >= 1:
            entry_kind = ENTRY_KIND_OF.get(kind) if type(kind) is int else None
            if entry_kind is not None and type(data) is bytes:
                return term, index, entry_kind, data
    raise ValueError(f"not an entry: {value!r:.80}")


# ------------------------------------------------------------------------ scanning the log


@dataclass(kw_only=True, slots=True, eq=False)
class _Segment:
    """Where one segment file's records are. Entry payloads are not kept in memory.

    Invariant: offsets[i] is the file offset of the record of entry first_index + i;
    offsets is non-empty and increasing; size is the end of its last record (the file may be
    longer: preallocated zeros).
    """

    path: str
    first_index: Index
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    size: int = 0

    @property
    def last_index(self) -> Index:
        return self.first_index + len(self.offsets) - 1


@dataclass(frozen=True, kw_only=True, slots=True)
class _LogDamage:
    """The first problem found in the log, and how cutting it away would look."""

    path: str
    offset: int | None
    reason: str
    torn: bool
    """True if this is what a crash during a write leaves (load cuts it away)."""
    cut_offset: int
    """Cutting the log keeps ``path`` up to this offset (0: removes ``path``)..."""
    later: tuple[str, ...]
    """...and removes these segments, which come after it."""


@dataclass(kw_only=True, slots=True)
class _LogScan:
    segments: list[_Segment]
    """The intact part of the log, damaged segment included up to its cut (if not empty)."""
    entries: list[Entry]
    """The intact entries, if collected."""
    damage: _LogDamage | None
    ignored: list[str]
    """Files in the log directory that are not segments."""


def _segment_name(first_index: Index) -> str:
    return f"{first_index:020d}{SEGMENT_SUFFIX}"


def _list_segments(log_dir: str) -> tuple[list[tuple[Index, str]], list[str]]:
    segments: list[tuple[Index, str]] = []
    ignored: list[str] = []
    for name in sorted(os.listdir(log_dir)):
        match = _SEGMENT_NAME.match(name)
        if match is None:
            ignored.append(os.path.join(log_dir, name))
        elif int(match.group(1)) >= 1:
            segments.append((int(match.group(1)), os.path.join(log_dir, name)))
        else:
            ignored.append(os.path.join(log_dir, name))
    return segments, ignored


def _scan_log(log_dir: str, *, collect: bool) -> _LogScan:
    """Read and verify every segment up to the first damage. Changes nothing."""
    listed, ignored = _list_segments(log_dir)
    scan = _LogScan(segments=[], entries=[], damage=None, ignored=ignored)
    expected: Index | None = None
    for position, (first_index, path) in enumerate(listed):
        later = tuple(p for _, p in listed[position + 1 :])
        with open(path, "rb") as file:
            buffer = file.read()
        first_record = _parse_record(buffer, 0)
        damage_at: int | None = None
        if first_record is not None and first_record[1] != first_index:
            reason = (
                f"the file name says this segment starts at index {first_index}, but its "
                f"first record has index {first_record[1]}"
            )
            damage_at = 0
        elif expected is not None and first_index > expected:
            missing = (
                f"entry {expected} is"
                if first_index == expected + 1
                else f"entries {expected}..{first_index - 1} are"
            )
            reason = (
                f"{missing} missing: the segment before this one ends at index "
                f"{expected - 1} (a segment file was lost)"
            )
        elif expected is not None and first_index < expected:
            reason = (
                f"this segment starts at index {first_index}, but the segment before it "
                f"ends at index {expected - 1}"
            )
        else:
            reason = ""
        if reason:
            scan.damage = _LogDamage(
                path=path,
                offset=damage_at,
                reason=reason,
                torn=False,
                cut_offset=0,
                later=later,
            )
            return scan
        segment, damage = _scan_segment(
            buffer,
            path=path,
            first_index=first_index,
            is_last=not later,
            later=later,
            entries=scan.entries if collect else None,
        )
        if segment.offsets:
            scan.segments.append(segment)
        if damage is not None:
            scan.damage = damage
            return scan
        expected = segment.last_index + 1
    return scan


def _scan_segment(
    buffer: bytes,
    *,
    path: str,
    first_index: Index,
    is_last: bool,
    later: tuple[str, ...],
    entries: list[Entry] | None,
) -> tuple[_Segment, _LogDamage | None]:
    segment = _Segment(path=path, first_index=first_index)
    view = memoryview(buffer)
    size = len(buffer)
    index = first_index
    position = 0

    def damage(reason: str, *, torn: bool) -> _LogDamage:
        segment.size = position  # the intact part ends where the damage starts
        return _LogDamage(
            path=path,
            offset=position,
            reason=reason,
            torn=torn,
            cut_offset=position,
            later=later,
        )

    if size == 0:
        # A crash right after creating the last segment leaves it empty.
        return segment, damage("empty segment file", torn=is_last)
    # Hoisted names: this loop runs once per stored entry on every start.
    header_size = _RECORD_HEADER.size
    unpack_header = _RECORD_HEADER.unpack_from
    decode = _decode_payload
    checksum = crc32
    append_offset = segment.offsets.append
    append_entry = entries.append if entries is not None else None
    while position < size:
        problem: str | None = None
        if size - position < header_size:
            problem = f"incomplete record header ({size - position} bytes at the end of the file)"
        else:
            length, crc = unpack_header(buffer, position)
            start = position + header_size
            end = start + length
            if length == 0:
                problem = "record of length 0"
            elif end > size:
                problem = (
                    f"record of {length} bytes runs past the end of the file "
                    f"({size - start} bytes left)"
                )
            elif checksum(view[start:end]) != crc:
                problem = "record checksum mismatch"
        if problem is not None:
            if buffer.count(0, position) == size - position:
                if position > 0:
                    break  # the unused, zero-filled rest of a preallocated segment
                # Nothing but zeros: preallocated, then a crash before its first record.
                return segment, damage("segment file holds only zeros", torn=is_last)
            if is_last and _find_record(buffer, position + 1, min_index=index + 1) is None:
                return segment, damage(f"torn final record: {problem}", torn=True)
            if is_last:
                problem += " (intact records follow it)"
            else:
                problem += " (in a segment before the last)"
            return segment, damage(problem, torn=False)
        try:
            term, found_index, kind, data = decode(view[start:end])
        except ValueError as exc:
            return segment, damage(f"record passes its checksum but {exc}", torn=False)
        if found_index != index:
            if position == 0:
                reason = (
                    f"the file name says this segment starts at index {first_index}, but its "
                    f"first record has index {found_index}"
                )
            else:
                reason = f"record has index {found_index}, expected {index}"
            return segment, damage(reason, torn=False)
        append_offset(position)
        if append_entry is not None:
            append_entry(build_entry(term, index, kind, data))
        position = end
        index += 1
    segment.size = position
    return segment, None


def _parse_record(buffer: bytes, position: int) -> tuple[int, Index] | None:
    """(end offset, index) of an intact record at ``position``, or None."""
    if len(buffer) - position < _RECORD_HEADER.size:
        return None
    length, crc = _RECORD_HEADER.unpack_from(buffer, position)
    start = position + _RECORD_HEADER.size
    end = start + length
    if length == 0 or end > len(buffer):
        return None
    payload = memoryview(buffer)[start:end]
    if crc32(payload) != crc:
        return None
    try:
        _, index, _, _ = _decode_payload(payload)
    except ValueError:
        return None
    return end, index


def _find_record(buffer: bytes, start: int, *, min_index: Index) -> tuple[int, Index] | None:
    """The first intact record at or after ``start`` with an index >= ``min_index``.

    Used to tell a torn final write (nothing intact after it) from damage in the middle of
    a segment (say, a flipped bit in a record's length), and to count what a repair cuts.
    """
    marker = buffer.find(_PAYLOAD_MARKER, start + _RECORD_HEADER.size)
    while marker != -1:
        position = marker - _RECORD_HEADER.size
        parsed = _parse_record(buffer, position)
        if parsed is not None and parsed[1] >= min_index:
            return position, parsed[1]
        marker = buffer.find(_PAYLOAD_MARKER, marker + 1)
    return None


def _salvageable(buffer: bytes, start: int) -> tuple[int, Index | None]:
    """Count intact records from ``start`` on (skipping damage); return (count, max index)."""
    count = 0
    highest: Index | None = None
    position = start
    while position < len(buffer):
        parsed = _parse_record(buffer, position)
        if parsed is None:
            found = _find_record(buffer, position + 1, min_index=1)
            if found is None:
                break
            position = found[0]
            continue
        end, index = parsed
        count += 1
        highest = index if highest is None else max(highest, index)
        position = end
    return count, highest


# ------------------------------------------------------------------------------ the storage


class FileStorage:
    """Durable storage in a data directory (the layout is in this module's docstring).

    Construct it, ``await load()`` (which takes the directory's lock), use it, and
    ``await close()``. Every method that touches the disk does all its blocking work in one
    worker thread, so the event loop never waits on the disk. ``persist`` and ``compact`` must
    not run concurrently with each other; ``save_snapshot``/``read_snapshot`` may run
    concurrently with them (not with each other).

    An ``OSError`` from the disk (ENOSPC, EIO, ...) propagates unchanged; what was acknowledged
    before stays intact. After a failed fsync (whose outcome is unknown: the kernel may have
    dropped the data) the object refuses further writes with ``OSError(EIO)``: close it and
    load a new one.

    Args:
        data_dir: the directory; created (with its parents) on load if missing.
        segment_bytes: a segment file is closed and a new one started when the next record
            would make it grow past this size (a single larger record gets a segment alone).
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> None:
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int):
            raise TypeError(f"segment_bytes: expected an int, got {segment_bytes!r}")
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes: must be >= 1, got {segment_bytes}")
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self.segment_bytes = segment_bytes
        self._log_dir = os.path.join(self.data_dir, LOG_DIR_NAME)
        self._lock = _DirLock(self.data_dir)
        self._dir_fd: int | None = None
        self._log_dir_fd: int | None = None
        # Invariant: segments are contiguous (each starts at the previous one's
        # last_index + 1), none is empty, and they match the files in log/.
        self._segments: list[_Segment] = []
        # Invariant: when not None, a descriptor of self._segments[-1], preallocated,
        # positioned at the segment's size (the end of its last record).
        self._active_fd: int | None = None
        self._hard_state = HardState()
        self._snapshot: tuple[SnapshotMeta, int] | None = None
        self._packer = msgpack.Packer(use_bin_type=True)
        # Set when a write's outcome is unknown; every later write raises OSError(EIO).
        self._broken: str | None = None
        self._loaded = False
        # Appends to send to the worker thread before trying one inline again, and the
        # running average of inline appends' durations (see _inline_append_is_cheap).
        self._inline_slow_until = 0
        self._inline_cost = _INLINE_COST_START

    def __repr__(self) -> str:
        return f"FileStorage({self.data_dir!r})"

    # --------------------------------------------------------------- the Storage protocol

    async def load(self) -> PersistentState:
        """Lock the data directory (on the first call) and read back what was persisted.

        Creates the directory if it does not exist. Cuts away a torn final log record (with a
        warning), trims the zeros a crash left after segments' records and removes leftover
        temporary files; changes nothing else.

        Raises:
            DataDirLockedError: another FileStorage (in any process) uses the directory.
            StorageCorruptedError: the directory is damaged; nothing was changed and the
                lock is released.
            OSError: reading failed.

        Cancelled before its worker thread starts, it changes nothing; once started, it
        completes (the storage is then loaded and locked) and the cancellation is delivered
        at the caller's next checkpoint.
        """
        return await trio.to_thread.run_sync(self._load_sync)

    async def persist(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> None:
        """Durably record ``hard_state`` (if given) and the log change, then return.

        Raises:
            ValueError: ``entries`` do not start at ``first_index`` and follow each other, or
                would leave a gap after the stored log. Nothing was written.
            OSError: the disk failed. Entries of this call may or may not have been stored;
                earlier ones are intact.

        Cancelled before it starts writing, it writes nothing; once started, it is not
        interrupted: the whole change becomes durable and the call returns normally (the
        cancellation is delivered at the caller's next checkpoint). Small appends are
        written on the event loop, larger ones and hard state in a worker thread.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        entries = tuple(entries)
        if self.persist_now(hard_state=hard_state, first_index=first_index, entries=entries):
            return  # no schedule point: the caller sends what depends on this at once
        if self._inline_slow_until > 0:
            self._inline_slow_until -= 1
        await trio.to_thread.run_sync(self._persist_sync, hard_state, first_index, entries)

    def persist_now(
        self, *, hard_state: HardState | None, first_index: Index | None, entries: Sequence[Entry]
    ) -> bool:
        """``persist`` on the event loop, if the change is a small append: True once it is
        durable; False, having written nothing, if it belongs in a worker thread.

        Raises what ``persist`` raises.
        """
        entries = tuple(entries)
        if hard_state is not None or not self._inline_append_is_cheap(entries):
            return False
        segments = len(self._segments)
        started = time.perf_counter()
        try:
            self._persist_sync(None, first_index, entries)
        finally:
            # Starting a segment also syncs the directory: rare, and no sign of a slow disk.
            if len(self._segments) == segments:
                self._note_inline_append(time.perf_counter() - started)
        return True

    def _inline_append_is_cheap(self, entries: tuple[Entry, ...]) -> bool:
        """Whether to append on the event loop rather than in a worker thread.

        A trip to a worker thread costs about 100 us of CPU, and more in latency (measured
        with ``trio.to_thread.run_sync``), as much as a small append and its ``fdatasync``
        take on a fast disk (75 to 900 us on the benchmark's machine, where three nodes
        share one disk). So small appends run inline while the running average of their
        durations stays under 5 ms: an event loop held up that long now and then costs a
        node nothing (its heartbeats are 100 ms apart by default), an occasional slow
        fsync (10 ms or more on a shared disk) does not count for much, but a slow disk
        soon does. Then the next 20 appends go to the thread before one is tried inline
        again, so a slow disk blocks the event loop for about one write in 20.
        """
        if self._inline_slow_until > 0:
            return False
        if len(entries) > _INLINE_APPEND_MAX_ENTRIES:
            return False
        size = 0
        for entry in entries:
            size += len(entry.data)
        return size <= _INLINE_APPEND_MAX_BYTES

    def _note_inline_append(self, seconds: float) -> None:
        self._inline_cost += (seconds - self._inline_cost) * _INLINE_COST_WEIGHT
        if self._inline_cost > _INLINE_APPEND_MAX_SECONDS:
            self._inline_slow_until = _INLINE_BACKOFF_APPENDS
            self._inline_cost = _INLINE_COST_START

    async def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Atomically and durably replace the snapshot. ``meta.size`` must be ``len(data)``.

        Cancelled before its worker thread starts, it writes nothing; once started, the
        save completes and the call returns normally.
        """
        if meta.size != len(data):
            raise ValueError(f"meta.size is {meta.size} but the data has {len(data)} bytes")
        await trio.to_thread.run_sync(self._save_snapshot_sync, meta, bytes(data))

    async def read_snapshot(self, offset: int = 0, size: int | None = None) -> bytes:
        """Read ``size`` bytes (all, if None) of the stored snapshot's data from ``offset``.

        Returns fewer bytes (maybe none) past the end of the data, and b"" without a snapshot.
        Cancelled before its worker thread starts, it raises ``Cancelled``; once started,
        the read completes and returns.
        """
        if offset < 0 or (size is not None and size < 0):
            raise ValueError("offset and size must be >= 0")
        return await trio.to_thread.run_sync(self._read_snapshot_sync, offset, size)

    async def compact(self, through_index: Index) -> None:
        """Delete the segment files whose entries are all at or before ``through_index``.

        Cancelled before its worker thread starts, it deletes nothing; once started, it
        completes and returns normally.
        """
        await trio.to_thread.run_sync(self._compact_sync, through_index)

    async def close(self) -> None:
        """Close the files and release the lock. Safe to call more than once.

        The storage is closed even if this is cancelled.
        """
        self._close_sync()
        await trio.lowlevel.checkpoint()

    # ----------------------------------------------------------------------- sync parts

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("FileStorage: call load() first (or it was closed)")

    def _require_writable(self) -> None:
        self._require_loaded()
        if self._broken is not None:
            raise OSError(
                errno.EIO,
                f"{self.data_dir}: storage refuses writes after an earlier failure "
                f"({self._broken}); close it and load it again",
            )

    def _mark_broken(self, error: BaseException) -> None:
        self._broken = f"{type(error).__name__}: {error}"
        logger.error("%s: storage unusable until reloaded: %s", self.data_dir, error)

    def _load_sync(self) -> PersistentState:
        self._close_files()
        try:
            _make_dir(self.data_dir)
            self._lock.acquire()
            if not os.path.isdir(self._log_dir):
                _make_dir(self._log_dir)
            hard_state_path = os.path.join(self.data_dir, HARD_STATE_NAME)
            snapshot_path = os.path.join(self.data_dir, SNAPSHOT_NAME)
            hard_state = _read_hard_state(hard_state_path, self.data_dir)
            snapshot = _read_snapshot_meta(snapshot_path, self.data_dir)
            scan = _scan_log(self._log_dir, collect=True)
            damage = scan.damage
            if damage is not None and not damage.torn:
                raise StorageCorruptedError(
                    damage.path, damage.offset, damage.reason, data_dir=self.data_dir
                )
            # Everything is readable: from here on, clean up what a crash left.
            self._dir_fd = _open_dir(self.data_dir)
            self._log_dir_fd = _open_dir(self._log_dir)
            for name in (HARD_STATE_NAME, SNAPSHOT_NAME):
                _unlink_quietly(os.path.join(self.data_dir, name + TEMP_SUFFIX))
            if damage is not None:
                self._cut_torn_tail(damage)
            _trim_zero_tails(scan.segments)
            for path in scan.ignored:
                logger.warning("%s: not a segment file, ignored", path)
        except BaseException:
            self._loaded = False
            self._segments = []
            self._close_files()
            self._lock.release()
            raise
        self._segments = scan.segments
        self._hard_state = hard_state
        self._snapshot = snapshot
        self._broken = None
        self._loaded = True
        return PersistentState(
            hard_state=hard_state,
            snapshot=None if snapshot is None else snapshot[0],
            entries=tuple(scan.entries),
        )

    def _cut_torn_tail(self, damage: _LogDamage) -> None:
        assert self._log_dir_fd is not None
        size = os.path.getsize(damage.path)
        if damage.cut_offset == 0:
            os.unlink(damage.path)
            _sync_dir(self._log_dir_fd)
            action = "removed the segment, which held nothing else"
        else:
            fd = os.open(damage.path, os.O_WRONLY | _O_CLOEXEC)
            try:
                os.ftruncate(fd, damage.cut_offset)
                _sync_file(fd)
            finally:
                os.close(fd)
            action = f"cut the file to {damage.cut_offset} bytes"
        logger.warning(
            "%s at offset %d: %s (%d bytes; left by a crash during a write, never "
            "acknowledged); %s",
            damage.path,
            damage.cut_offset,
            damage.reason,
            size - damage.cut_offset,
            action,
        )

    def _last_index(self) -> Index | None:
        return self._segments[-1].last_index if self._segments else None

    def _persist_sync(
        self, hard_state: HardState | None, first_index: Index | None, entries: tuple[Entry, ...]
    ) -> None:
        self._require_writable()
        if first_index is None:
            if entries:
                raise ValueError("entries given without first_index")
        else:
            if first_index < 1:
                raise ValueError(f"first_index must be >= 1, got {first_index}")
            for offset, entry in enumerate(entries):
                if entry.index != first_index + offset:
                    raise ValueError(
                        f"entries must follow each other from first_index {first_index}; "
                        f"entry {offset} has index {entry.index}"
                    )
            last = self._last_index()
            if last is not None and first_index > last + 1:
                raise ValueError(f"gap in the log: writing from {first_index} after {last}")
        if hard_state is not None and hard_state != self._hard_state:
            self._write_hard_state(hard_state)
        if first_index is None:
            return
        self._truncate_from(first_index)
        if entries:
            self._append(entries)

    def _write_hard_state(self, hard_state: HardState) -> None:
        assert self._dir_fd is not None
        try:
            _atomic_write(
                self._dir_fd, self.data_dir, HARD_STATE_NAME, [_encode_hard_state(hard_state)]
            )
        except _DirSyncError as exc:
            self._hard_state = hard_state  # the file was renamed; only its durability is unknown
            self._mark_broken(exc.error)
            raise exc.error from None
        self._hard_state = hard_state

    def _active(self) -> int:
        """The last segment's append descriptor, opened (and preallocated) if needed."""
        if self._active_fd is None:
            segment = self._segments[-1]
            fd = os.open(segment.path, os.O_WRONLY | _O_CLOEXEC)
            try:
                _preallocate(fd, self.segment_bytes)
                os.lseek(fd, segment.size, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            self._active_fd = fd
        return self._active_fd

    def _drop_active(self) -> None:
        """Close the last segment's descriptor, trimming the segment's unused zeros.

        Not synced: a crash before the trim is durable leaves zeros after the last record,
        which load takes for the end of the segment.
        """
        fd, self._active_fd = self._active_fd, None
        if fd is not None and self._segments:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._segments[-1].size)
        _close_quietly(fd)

    def _truncate_from(self, first_index: Index) -> None:
        """Drop every stored entry at or after ``first_index``, never rewriting the log."""
        last = self._last_index()
        if last is None or first_index > last:
            return
        assert self._log_dir_fd is not None
        removed = False
        try:
            # Newest first, so that a crash in between leaves a contiguous log.
            while self._segments and self._segments[-1].first_index >= first_index:
                self._drop_active()
                os.unlink(self._segments[-1].path)
                self._segments.pop()
                removed = True
        finally:
            if removed:
                self._sync_dir_or_break(self._log_dir_fd)
        if not self._segments:
            return
        segment = self._segments[-1]
        if segment.last_index < first_index:
            return
        keep = first_index - segment.first_index
        cut = segment.offsets[keep]
        fd = self._active()
        os.ftruncate(fd, cut)
        del segment.offsets[keep:]
        segment.size = cut
        os.lseek(fd, cut, os.SEEK_SET)
        _preallocate(fd, self.segment_bytes)  # zeros again where the cut records were
        self._sync_file_or_break(fd)

    def _sync_file_or_break(self, fd: int) -> None:
        try:
            _sync_file(fd)
        except OSError as exc:
            self._mark_broken(exc)
            raise

    def _sync_dir_or_break(self, fd: int) -> None:
        try:
            _sync_dir(fd)
        except OSError as exc:
            self._mark_broken(exc)
            raise

    def _append(self, entries: tuple[Entry, ...]) -> None:
        """Append ``entries`` (which follow the stored log): one write + one fdatasync per
        segment written."""
        assert self._log_dir_fd is not None
        # Encode everything first: (segment first index, new segment?, pieces, offsets).
        batches: list[tuple[Index, bool, _Pieces, array[int]]] = []
        if self._segments:
            current_first, current_new = self._segments[-1].first_index, False
            current_size = self._segments[-1].size
        else:
            current_first, current_new, current_size = entries[0].index, True, 0
        # Small records are joined in ``records``; a large entry's data is not copied: it is
        # written from its own buffer, between the records before and after it.
        records = bytearray()
        pieces = _Pieces(records)
        offsets: array[int] = array("Q")
        pack = self._packer.pack
        header = _RECORD_HEADER.pack
        limit = self.segment_bytes
        checksum = crc32
        for entry in entries:
            entry_data = entry.data
            if len(entry_data) < _LARGE_DATA_BYTES:
                payload = pack([entry.term, entry.index, entry.kind, entry_data])  # IntEnum kind
                length, crc, entry_data = len(payload), checksum(payload), b""
            else:
                # The same payload as packing it whole, its data not copied into the packer.
                payload = entry_head(entry.term, entry.index, entry.kind, len(entry_data))
                length = len(payload) + len(entry_data)
                crc = checksum(entry_data, checksum(payload))
            if current_size and current_size + _RECORD_HEADER.size + length > limit:
                batches.append((current_first, current_new, pieces, offsets))
                current_first, current_new, current_size = entry.index, True, 0
                records = bytearray()
                pieces = _Pieces(records)
                offsets = array("Q")
            offsets.append(current_size)
            records += header(length, crc)
            records += payload
            if entry_data:
                records = pieces.add_large(entry_data)
            current_size += _RECORD_HEADER.size + length
        batches.append((current_first, current_new, pieces, offsets))
        for segment_first, new, data, data_offsets in batches:
            if data:
                self._write_batch(segment_first, new, data, data_offsets)

    def _write_batch(
        self, first_index: Index, new: bool, data: _Pieces, offsets: array[int]
    ) -> None:
        assert self._log_dir_fd is not None
        if new:
            path = os.path.join(self._log_dir, _segment_name(first_index))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
            _preallocate(fd, self.segment_bytes)
            segment = _Segment(path=path, first_index=first_index)
        else:
            fd = self._active()
            segment = self._segments[-1]
        stage = "write"
        try:
            data.write_to(fd)
            stage = "sync"
            _sync_file(fd)
            if new:
                stage = "sync the directory"
                _sync_dir(self._log_dir_fd)
        except BaseException as exc:
            # Take back what was written, so the file again ends with the last acknowledged
            # record (a later append must not follow garbage). After a failed fsync the
            # kernel may have dropped the data, so nothing this object wrote can be trusted.
            try:
                if new:
                    os.close(fd)
                    os.unlink(segment.path)
                else:
                    os.ftruncate(fd, segment.size)
                    os.lseek(fd, segment.size, os.SEEK_SET)
            except OSError as rollback_error:
                self._mark_broken(rollback_error)
            if stage != "write" and isinstance(exc, OSError):
                self._mark_broken(exc)
            raise
        segment.offsets.extend(offsets)
        segment.size += len(data)
        if new:
            self._drop_active()
            self._segments.append(segment)
            self._active_fd = fd

    def _compact_sync(self, through_index: Index) -> None:
        self._require_writable()
        assert self._log_dir_fd is not None
        removed = False
        try:
            # Oldest first, so that a crash in between leaves a contiguous log.
            while self._segments and self._segments[0].last_index <= through_index:
                if len(self._segments) == 1:
                    self._drop_active()
                os.unlink(self._segments[0].path)
                self._segments.pop(0)
                removed = True
        finally:
            if removed:
                self._sync_dir_or_break(self._log_dir_fd)

    def _save_snapshot_sync(self, meta: SnapshotMeta, data: bytes) -> None:
        self._require_writable()
        assert self._dir_fd is not None
        meta_raw = _encode_snapshot_meta(meta)
        rest_head = _META_LENGTH.pack(len(meta_raw))
        crc = crc32(data, crc32(meta_raw, crc32(rest_head)))
        header = _FILE_HEADER.pack(_SNAPSHOT_MAGIC, _FORMAT_VERSION, crc)
        data_offset = len(header) + len(rest_head) + len(meta_raw)
        try:
            _atomic_write(
                self._dir_fd, self.data_dir, SNAPSHOT_NAME, [header + rest_head + meta_raw, data]
            )
        except _DirSyncError as exc:
            self._snapshot = (meta, data_offset)
            self._mark_broken(exc.error)
            raise exc.error from None
        self._snapshot = (meta, data_offset)

    def _read_snapshot_sync(self, offset: int, size: int | None) -> bytes:
        self._require_loaded()
        snapshot = self._snapshot
        if snapshot is None:
            return b""
        meta, data_offset = snapshot
        available = max(0, meta.size - offset)
        wanted = available if size is None else min(size, available)
        if wanted == 0:
            return b""
        parts: list[bytes] = []
        fd = os.open(os.path.join(self.data_dir, SNAPSHOT_NAME), os.O_RDONLY | _O_CLOEXEC)
        try:
            position = data_offset + offset
            while wanted > 0:
                chunk = os.pread(fd, wanted, position)
                if not chunk:
                    break
                parts.append(chunk)
                position += len(chunk)
                wanted -= len(chunk)
        finally:
            os.close(fd)
        return b"".join(parts)

    def _close_files(self) -> None:
        self._drop_active()
        for name in ("_dir_fd", "_log_dir_fd"):
            fd: int | None = getattr(self, name)
            setattr(self, name, None)
            _close_quietly(fd)

    def _close_sync(self) -> None:
        self._loaded = False
        self._close_files()  # trims the last segment: needs self._segments
        self._segments = []
        self._lock.release()
