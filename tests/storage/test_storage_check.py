"""check_data_dir / repair_data_dir and the ``tinyraft-trio check`` command."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import trio
from storage_helpers import dir_bytes, encode_record, make_entries, opened, records, segments

from tinyraft_trio._core._types import HardState, Membership, SnapshotMeta
from tinyraft_trio._storage._check import NotADataDirError, check_data_dir, repair_data_dir
from tinyraft_trio._storage._file import DataDirLockedError, FileStorage, _DirLock
from tinyraft_trio.cli import main

COUNT = 40


def make_data_dir(path: pathlib.Path) -> None:
    async def write() -> None:
        meta = SnapshotMeta(index=3, term=1, membership=Membership.of_voters({"a": "h:1"}), size=4)
        async with opened(path, segment_bytes=300) as storage:
            await storage.persist(
                hard_state=HardState(current_term=2, voted_for="a"),
                first_index=1,
                entries=make_entries(1, COUNT),
            )
            await storage.save_snapshot(meta, b"snap")

    trio.run(write)
    assert len(segments(path)) >= 3


def load_entries(path: pathlib.Path) -> list[int]:
    async def load() -> list[int]:
        storage = FileStorage(path)
        try:
            return [entry.index for entry in (await storage.load()).entries]
        finally:
            await storage.close()

    return trio.run(load)


def flip_bit_in_record(path: pathlib.Path, number: int) -> int:
    """Damage the ``number``-th record of a segment; return its offset."""
    start, end, _ = records(path)[number]
    raw = bytearray(path.read_bytes())
    raw[end - 1] ^= 0x04
    path.write_bytes(bytes(raw))
    return start


def test_a_healthy_directory(tmp_path: pathlib.Path) -> None:
    make_data_dir(tmp_path)
    report = check_data_dir(tmp_path)
    assert report.ok
    assert report.problems == () and report.notes == ()
    assert (report.entries, report.first_index, report.last_index) == (COUNT, 1, COUNT)
    assert report.segments == len(segments(tmp_path))
    assert (report.current_term, report.voted_for) == (2, "a")
    assert (report.snapshot_index, report.snapshot_term, report.snapshot_bytes) == (3, 1, 4)
    assert report.data_dir == str(tmp_path)


def test_a_torn_tail_is_healthy_with_a_note_and_check_changes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    make_data_dir(tmp_path)
    last = segments(tmp_path)[-1]
    start, end, _ = records(last)[-1]
    os.truncate(last, end - 3)
    before = dir_bytes(tmp_path)
    report = check_data_dir(tmp_path)
    assert report.ok
    assert report.last_index == COUNT - 1
    [note] = report.notes
    assert f"{last} at offset {start}" in note
    assert dir_bytes(tmp_path) == before


def test_damage_is_reported_with_file_and_offset_and_repair_cuts_it(
    tmp_path: pathlib.Path,
) -> None:
    make_data_dir(tmp_path)
    files = segments(tmp_path)
    damaged = files[1]
    kept = [entry.index for *_, entry in records(damaged)][:2]
    offset = flip_bit_in_record(damaged, 2)
    later = files[2:]
    before = dir_bytes(tmp_path)

    report = check_data_dir(tmp_path)
    assert not report.ok
    [problem] = report.problems
    assert f"{damaged} at offset {offset}" in problem
    assert report.last_index == kept[-1]
    assert dir_bytes(tmp_path) == before

    repair = repair_data_dir(tmp_path)
    assert repair.ok and repair.refused is None
    assert repair.actions[0].startswith(f"cut {damaged} at offset {offset}")
    for path in later:
        assert any(action.startswith(f"deleted {path}") for action in repair.actions)
        assert not path.exists()
    # The damaged record, the intact records after it in its file, and the later files.
    assert repair.entries_lost == COUNT - kept[-1]
    assert damaged.stat().st_size == offset
    assert repair.check.ok and repair.check.last_index == kept[-1]
    assert load_entries(tmp_path) == list(range(1, kept[-1] + 1))
    # Repairing a healthy directory does nothing.
    again = repair_data_dir(tmp_path)
    assert again.ok and again.actions == () and again.entries_lost == 0


def test_repair_after_a_missing_segment_deletes_what_follows_the_gap(
    tmp_path: pathlib.Path,
) -> None:
    make_data_dir(tmp_path)
    files = segments(tmp_path)
    files[1].unlink()
    cut_records = sum(len(records(path)) for path in files[2:])
    report = check_data_dir(tmp_path)
    assert not report.ok
    assert str(files[2]) in report.problems[0] and "missing" in report.problems[0]
    repair = repair_data_dir(tmp_path)
    assert repair.ok
    assert segments(tmp_path) == files[:1]
    assert repair.entries_lost == cut_records
    last_kept = records(files[0])[-1][2].index
    assert load_entries(tmp_path) == list(range(1, last_kept + 1))


def test_repair_counts_the_entries_it_cuts(tmp_path: pathlib.Path) -> None:
    make_data_dir(tmp_path)
    files = segments(tmp_path)
    counts = [len(records(path)) for path in files]
    flip_bit_in_record(files[0], 1)
    repair = repair_data_dir(tmp_path)
    assert repair.entries_lost == COUNT - 1 == (counts[0] - 1) + sum(counts[1:])
    assert load_entries(tmp_path) == [1]


@pytest.mark.parametrize("name", ["hardstate", "snapshot"])
def test_repair_refuses_a_damaged_hardstate_or_snapshot(tmp_path: pathlib.Path, name: str) -> None:
    make_data_dir(tmp_path)
    path = tmp_path / name
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    flip_bit_in_record(segments(tmp_path)[0], 1)  # also a damaged log: still nothing changes
    before = dir_bytes(tmp_path)
    report = check_data_dir(tmp_path)
    assert any(problem.startswith(str(path)) for problem in report.problems)
    repair = repair_data_dir(tmp_path)
    assert not repair.ok and repair.actions == ()
    assert repair.refused is not None
    assert str(path) in repair.refused
    assert "backup" in repair.refused and "rejoin" in repair.refused
    assert dir_bytes(tmp_path) == before


def test_check_refuses_a_directory_in_use(tmp_path: pathlib.Path) -> None:
    make_data_dir(tmp_path)
    lock = _DirLock(str(tmp_path))
    lock.acquire()
    try:
        with pytest.raises(DataDirLockedError, match=f"process {os.getpid()}"):
            check_data_dir(tmp_path)
        with pytest.raises(DataDirLockedError):
            repair_data_dir(tmp_path)
    finally:
        lock.release()
    assert check_data_dir(tmp_path).ok


def test_check_refuses_what_is_not_a_data_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotADataDirError, match="no such directory"):
        check_data_dir(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("hi")
    with pytest.raises(NotADataDirError, match="not a tinyraft_trio data directory"):
        check_data_dir(tmp_path / "other")
    assert not (tmp_path / "other" / "LOCK").exists()


def test_check_reports_a_log_that_does_not_meet_its_snapshot(tmp_path: pathlib.Path) -> None:
    make_data_dir(tmp_path)
    (tmp_path / "log" / f"{100:020d}.seg").write_bytes(encode_record(2, 100, 0, b""))
    for path in segments(tmp_path)[:-1]:
        path.unlink()
    report = check_data_dir(tmp_path)
    assert not report.ok
    assert "after the snapshot's index 3" in report.problems[0]
    repair = repair_data_dir(tmp_path)
    assert not repair.ok and repair.refused is not None and repair.actions == ()


# ------------------------------------------------------------------------------- the CLI


def test_cli_check_healthy(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_data_dir(tmp_path)
    assert main(["check", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"{tmp_path}: healthy" in out
    assert f"log: {COUNT} entries, indexes 1..{COUNT}" in out
    assert "term 2, voted for 'a'" in out
    assert err == ""


def test_cli_check_and_repair_damage(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_data_dir(tmp_path)
    damaged = segments(tmp_path)[1]
    offset = flip_bit_in_record(damaged, 0)
    assert main(["check", "--data-dir", str(tmp_path)]) == 1
    out, _ = capsys.readouterr()
    assert "1 problem" in out
    assert f"{damaged} at offset {offset}" in out
    assert "--repair" in out
    assert main(["check", "--data-dir", str(tmp_path), "--repair"]) == 0
    out, _ = capsys.readouterr()
    assert f"{tmp_path}: repaired" in out
    assert f"{damaged}" in out and "entries lost:" in out
    assert main(["check", "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()


def test_cli_errors_are_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--data-dir", str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "no such directory" in err
    assert main([]) == 2
    assert main(["check"]) == 2  # --data-dir is required
    assert main(["--help"]) == 0
    capsys.readouterr()


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "tinyraft_trio", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_python_m_on_a_missing_or_locked_directory(tmp_path: pathlib.Path) -> None:
    missing = run_module("check", "--data-dir", str(tmp_path / "missing"))
    assert missing.returncode != 0
    assert missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "no such directory" in missing.stderr

    make_data_dir(tmp_path)
    lock = _DirLock(str(tmp_path))
    lock.acquire()
    try:
        locked = run_module("check", "--data-dir", str(tmp_path))
    finally:
        lock.release()
    assert locked.returncode != 0
    assert locked.stdout == ""
    assert locked.stderr.count("\n") == 1
    assert f"process {os.getpid()}" in locked.stderr and str(tmp_path) in locked.stderr
    assert "Traceback" not in locked.stderr

    healthy = run_module("check", "--data-dir", str(tmp_path))
    assert healthy.returncode == 0, healthy.stderr
    assert "healthy" in healthy.stdout
