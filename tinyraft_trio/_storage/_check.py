"""Offline check and repair of a FileStorage data directory (``tinyraft-trio check``).

Both take the directory's lock while they run, so they refuse to touch a directory a node is
using, and a node cannot start while they run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._core._types import Index, NodeId, Term
from .._exceptions import RaftError
from ._file import (
    HARD_STATE_NAME,
    LOCK_NAME,
    LOG_DIR_NAME,
    SNAPSHOT_NAME,
    TEMP_SUFFIX,
    StorageCorruptedError,
    _DirLock,
    _LogDamage,
    _LogScan,
    _parse_record,
    _read_hard_state,
    _read_snapshot_meta,
    _salvageable,
    _scan_log,
    _sync_dir_path,
    _sync_file,
    _where,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckReport:
    """What ``check_data_dir`` found.

    Attributes:
        data_dir: the directory checked.
        ok: True if a node can start from it (possibly after cutting a torn final record).
        problems: what stops a node from starting, each naming the file (and offset).
        notes: what a node fixes by itself on start (a torn final record, temporary files).
        entries: how many intact log entries are stored (up to the first damage).
        first_index: the first stored entry's index, or None if there is none.
        last_index: the last intact entry's index, or None.
        segments: how many segment files hold intact entries.
        current_term: the stored term (0 if none was ever stored), None if unreadable.
        voted_for: the stored vote, or None.
        snapshot_index: the snapshot's last included index, or None without a (readable) one.
        snapshot_term: the snapshot's last included term, or None.
        snapshot_bytes: the snapshot's data size, or None.
    """

    data_dir: str
    ok: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    entries: int
    first_index: Index | None
    last_index: Index | None
    segments: int
    current_term: Term | None
    voted_for: NodeId | None
    snapshot_index: Index | None
    snapshot_term: Term | None
    snapshot_bytes: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class RepairReport:
    """What ``repair_data_dir`` did.

    Attributes:
        data_dir: the directory repaired.
        ok: True if the directory is healthy now.
        actions: what was cut, one line each, naming files and offsets (empty if nothing).
        entries_lost: how many log records were cut: the damaged one and every intact one
            after it.
        refused: why nothing was changed (damage a cut cannot fix), else None.
        check: the directory's state after the repair (before it, if refused).
    """

    data_dir: str
    ok: bool
    actions: tuple[str, ...]
    entries_lost: int
    refused: str | None
    check: CheckReport


class NotADataDirError(RaftError):
    """The path is not an existing tinyraft_trio data directory."""


def check_data_dir(path: str | os.PathLike[str]) -> CheckReport:
    """Verify every file of a data directory (under its lock), changing nothing.

    Raises:
        NotADataDirError: ``path`` is missing or holds no tinyraft_trio data.
        DataDirLockedError: a node (or another check) is using the directory.
        OSError: reading failed.
    """
    data_dir = _existing_data_dir(path)
    lock = _DirLock(data_dir)
    lock.acquire()
    try:
        return _check(data_dir)[0]
    finally:
        lock.release()


def repair_data_dir(path: str | os.PathLike[str]) -> RepairReport:
    """Cut a damaged log after its last intact record (under the directory's lock).

    In the first damaged segment the file is cut at the damaged record (removed if that is
    its first record); every later segment is deleted. A damaged ``hardstate`` or
    ``snapshot`` is never deleted: the repair is refused, changing nothing, with a message
    saying what to do.

    Raises:
        NotADataDirError: ``path`` is missing or holds no tinyraft_trio data.
        DataDirLockedError: a node (or another check) is using the directory.
        OSError: reading or cutting failed.
    """
    data_dir = _existing_data_dir(path)
    lock = _DirLock(data_dir)
    lock.acquire()
    try:
        before, scan, state_damage = _check(data_dir)
        if state_damage:
            return RepairReport(
                data_dir=data_dir,
                ok=False,
                actions=(),
                entries_lost=0,
                refused=" ".join(state_damage),
                check=before,
            )
        if scan.damage is None:
            refused = None
            if not before.ok:
                refused = (
                    "The log is intact but does not fit the snapshot; cutting cannot fix "
                    "that. Nothing was changed. Restore this directory from a backup, or "
                    "move it away and let the node rejoin empty (remove it from the cluster "
                    "and add it back)."
                )
            return RepairReport(
                data_dir=data_dir,
                ok=before.ok,
                actions=(),
                entries_lost=0,
                refused=refused,
                check=before,
            )
        actions, lost = _cut_log(scan.damage)
        after = _check(data_dir)[0]
        return RepairReport(
            data_dir=data_dir,
            ok=after.ok,
            actions=actions,
            entries_lost=lost,
            refused=None,
            check=after,
        )
    finally:
        lock.release()


def _existing_data_dir(path: str | os.PathLike[str]) -> str:
    data_dir = os.path.abspath(os.fspath(path))
    if not os.path.isdir(data_dir):
        raise NotADataDirError(f"{data_dir}: no such directory")
    names = (LOCK_NAME, HARD_STATE_NAME, SNAPSHOT_NAME, LOG_DIR_NAME)
    if not any(os.path.exists(os.path.join(data_dir, name)) for name in names):
        raise NotADataDirError(
            f"{data_dir}: not a tinyraft_trio data directory (no hardstate, snapshot or log/)"
        )
    return data_dir


_HARD_STATE_ADVICE = (
    "The hard state (this node's current term and vote) is lost, and guessing it could let "
    "the node vote twice in one term. It is not deleted automatically: restore the data "
    "directory from a backup, or move it away and let the node rejoin empty (remove it "
    "from the cluster, then add it back)."
)
_SNAPSHOT_ADVICE = (
    "The snapshot is damaged and the log entries it replaced are gone. It is not deleted "
    "automatically: restore the data directory from a backup, or move it away and let the "
    "node rejoin empty (remove it from the cluster, then add it back) so it catches up "
    "from the leader."
)


def _check(data_dir: str) -> tuple[CheckReport, _LogScan, list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    state_damage: list[str] = []
    current_term: Term | None = None
    voted_for: NodeId | None = None
    try:
        hard_state = _read_hard_state(os.path.join(data_dir, HARD_STATE_NAME), data_dir)
    except StorageCorruptedError as exc:
        problems.append(f"{_where(exc.path, exc.offset)}: {exc.reason}")
        state_damage.append(f"{exc.path} is damaged ({exc.reason}). {_HARD_STATE_ADVICE}")
    else:
        current_term, voted_for = hard_state.current_term, hard_state.voted_for
    snapshot = None
    try:
        found = _read_snapshot_meta(os.path.join(data_dir, SNAPSHOT_NAME), data_dir)
    except StorageCorruptedError as exc:
        problems.append(f"{_where(exc.path, exc.offset)}: {exc.reason}")
        state_damage.append(f"{exc.path} is damaged ({exc.reason}). {_SNAPSHOT_ADVICE}")
    else:
        snapshot = None if found is None else found[0]
    for name in (HARD_STATE_NAME, SNAPSHOT_NAME):
        temp = os.path.join(data_dir, name + TEMP_SUFFIX)
        if os.path.exists(temp):
            notes.append(f"{temp}: left over from an interrupted write; a node removes it")

    log_dir = os.path.join(data_dir, LOG_DIR_NAME)
    if os.path.isdir(log_dir):
        scan = _scan_log(log_dir, collect=False)
    else:
        scan = _LogScan(segments=[], entries=[], damage=None, ignored=[])
    damage = scan.damage
    if damage is not None:
        where = _where(damage.path, damage.offset)
        if damage.torn:
            notes.append(
                f"{where}: {damage.reason}; a node cuts it away when it starts "
                "(an interrupted write, never acknowledged)"
            )
        else:
            problems.append(f"{where}: {damage.reason}")
    for path in scan.ignored:
        notes.append(f"{path}: not a segment file, ignored")
    segments = scan.segments
    first_index = segments[0].first_index if segments else None
    last_index = segments[-1].last_index if segments else None
    if first_index is not None and (damage is None or damage.torn):
        if snapshot is None and first_index > 1:
            problems.append(
                f"{segments[0].path}: the log starts at index {first_index} but no snapshot "
                f"covers entries 1..{first_index - 1}"
            )
        elif snapshot is not None and first_index > snapshot.index + 1:
            problems.append(
                f"{segments[0].path}: the log starts at index {first_index}, after the "
                f"snapshot's index {snapshot.index} + 1: entries are missing"
            )
    report = CheckReport(
        data_dir=data_dir,
        ok=not problems,
        problems=tuple(problems),
        notes=tuple(notes),
        entries=sum(len(segment.offsets) for segment in segments),
        first_index=first_index,
        last_index=last_index,
        segments=len(segments),
        current_term=current_term,
        voted_for=voted_for,
        snapshot_index=None if snapshot is None else snapshot.index,
        snapshot_term=None if snapshot is None else snapshot.term,
        snapshot_bytes=None if snapshot is None else snapshot.size,
    )
    return report, scan, state_damage


def _cut_log(damage: _LogDamage) -> tuple[tuple[str, ...], int]:
    """Delete the segments after the damage (newest first), then cut the damaged one."""
    actions: list[str] = []
    lost = 0
    for path in reversed(damage.later):
        with open(path, "rb") as file:
            buffer = file.read()
        count, _ = _salvageable(buffer, 0)
        os.unlink(path)
        lost += count
        actions.insert(0, f"deleted {path} ({len(buffer)} bytes, {count} intact records)")
    if damage.later:
        _sync_dir_path(os.path.dirname(damage.path))
    with open(damage.path, "rb") as file:
        buffer = file.read()
    cut_bytes = len(buffer) - damage.cut_offset
    count, _ = _salvageable(buffer, damage.cut_offset)
    # The damaged record itself, unless the cut starts with an intact record (one whose
    # index does not follow, or a whole segment after a gap).
    damaged = int(cut_bytes > 0 and _parse_record(buffer, damage.cut_offset) is None)
    lost += count + damaged
    described = f"{count} intact records" + (" and the damaged one" if damaged else "")
    if damage.cut_offset == 0:
        os.unlink(damage.path)
        _sync_dir_path(os.path.dirname(damage.path))
        action = f"deleted {damage.path} ({cut_bytes} bytes from offset 0: {described})"
    else:
        fd = os.open(damage.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, damage.cut_offset)
            _sync_file(fd)
        finally:
            os.close(fd)
        action = (
            f"cut {damage.path} at offset {damage.cut_offset} "
            f"(removed {cut_bytes} bytes: {described})"
        )
    return (action, *actions), lost
