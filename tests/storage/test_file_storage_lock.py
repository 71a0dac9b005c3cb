"""The data directory's lock: one user at a time, in this process or any other."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import trio
from storage_helpers import make_entries

from tinyraft_trio._storage._check import check_data_dir
from tinyraft_trio._storage._file import DataDirLockedError, FileStorage


async def test_a_second_storage_on_the_same_dir_is_refused_until_close(
    tmp_path: pathlib.Path,
) -> None:
    first = FileStorage(tmp_path)
    await first.load()
    await first.persist(hard_state=None, first_index=1, entries=make_entries(1, 2))
    second = FileStorage(tmp_path)
    with pytest.raises(DataDirLockedError) as caught:
        await second.load()
    assert caught.value.pid == os.getpid()
    assert caught.value.path == str(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert f"process {os.getpid()}" in str(caught.value)
    await second.close()
    await first.close()
    assert (await second.load()).entries == tuple(make_entries(1, 2))
    await second.close()


def _spawn_lock_holder(data_dir: pathlib.Path, *, write_pid: bool) -> subprocess.Popen[str]:
    script = textwrap.dedent(
        f"""
        import fcntl, os, sys, time
        fd = os.open({str(data_dir / "LOCK")!r}, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if {write_pid!r}:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True)
        time.sleep(120)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def _load(data_dir: pathlib.Path) -> None:
    async def load_and_close() -> None:
        storage = FileStorage(data_dir)
        try:
            await storage.load()
        finally:
            await storage.close()

    trio.run(load_and_close)


@pytest.mark.parametrize("write_pid", [True, False])
def test_a_directory_locked_by_another_process_is_refused_naming_its_pid(
    tmp_path: pathlib.Path, write_pid: bool
) -> None:
    if not write_pid and not os.path.exists("/proc/locks"):
        pytest.skip("finding a lock's holder without its pid in the file needs /proc/locks")
    holder = _spawn_lock_holder(tmp_path, write_pid=write_pid)
    try:
        with pytest.raises(DataDirLockedError) as caught:
            _load(tmp_path)
        assert caught.value.pid == holder.pid
        assert f"process {holder.pid}" in str(caught.value)
        assert str(tmp_path) in str(caught.value)
        with pytest.raises(DataDirLockedError):
            check_data_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    _load(tmp_path)  # the holder's death released its lock
