"""``tinyraft-trio kv`` and ``tinyraft-trio members`` against a real 3-process cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support import environment, free_loopback_ports, stop

from tinyraft_trio import Role, cli, connect


def start_node(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tinyraft_trio", "node", "--timeout-ms", "300", *args],
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three in-memory nodes; yields their addresses."""
    directory = tmp_path_factory.mktemp("cli-client")
    addresses = [f"127.0.0.1:{port}" for port in free_loopback_ports(3)]
    peers = [arg for i, a in enumerate(addresses, 1) for arg in ("--peer", f"n{i}={a}")]
    processes = [
        start_node(["--id", f"n{i}", "--listen", address, *peers], directory / f"n{i}.log")
        for i, address in enumerate(addresses, 1)
    ]
    try:
        yield addresses
    finally:
        assert [stop(process) for process in processes] == [0, 0, 0]


def wait_until_answers(capsys: pytest.CaptureFixture[str], address: str) -> None:
    deadline = time.monotonic() + 10
    while run(capsys, "status", "--cluster", address, "--timeout", "0.5")[0] != 0:
        assert time.monotonic() < deadline, f"{address} never answered"
        time.sleep(0.05)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_kv_commands(cluster: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--cluster", ",".join(cluster)]
    # Each command goes through whichever node; followers forward.
    assert run(capsys, "kv", "put", "colour", "blue", *flags) == (0, "", "")
    assert run(capsys, "kv", "get", "colour", *flags) == (0, "blue\n", "")
    one_node = ["--cluster", cluster[2]]
    assert run(capsys, "kv", "get", "colour", *one_node) == (0, "blue\n", "")
    code, out, err = run(capsys, "kv", "get", "colour", "--stale", *flags)
    assert code == 0
    assert out in ("blue\n", "")  # a stale read may lag, never invent

    code, out, err = run(capsys, "kv", "get", "missing", *flags)
    assert (code, out) == (1, "")
    assert "not found" in err
    assert len(err.strip().splitlines()) == 1

    assert run(capsys, "kv", "cas", "colour", "red", "green", *flags)[:2] == (0, "not swapped\n")
    assert run(capsys, "kv", "cas", "colour", "blue", "green", *flags)[:2] == (0, "swapped\n")
    assert run(capsys, "kv", "get", "colour", *flags)[:2] == (0, "green\n")
    assert run(capsys, "kv", "cas", "shape", "--absent", "round", *flags)[:2] == (0, "swapped\n")
    assert run(capsys, "kv", "cas", "shape", "--absent", "square", *flags)[:2] == (
        0,
        "not swapped\n",
    )
    assert run(capsys, "kv", "delete", "shape", *flags) == (0, "", "")
    assert run(capsys, "kv", "get", "shape", *flags)[0] == 1


def test_members_commands(
    cluster: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    flags = ["--cluster", ",".join(cluster)]
    target = next(
        node_id for node_id, voter in members(cluster).items() if node_id != leader(cluster)
    )
    code, out, err = run(capsys, "members", "transfer-leader", target, *flags)
    assert (code, out, err) == (0, f"leader: {target}\n", "")
    code, out, err = run(capsys, "members", "transfer-leader", target, *flags)
    assert (code, out, err) == (0, f"leader: {target} (already the leader)\n", "")

    # n4 joins as a learner (asking a member); `members add` then makes it a voter.
    address = f"127.0.0.1:{free_loopback_ports(1)[0]}"
    learner = start_node(
        ["--id", "n4", "--listen", address, "--join", cluster[0], "--non-voter"],
        tmp_path / "n4.log",
    )
    try:
        wait_until_answers(capsys, address)
        assert run(capsys, "kv", "put", "after-join", "yes", *flags)[0] == 0
        deadline = time.monotonic() + 10
        while run(capsys, "kv", "get", "after-join", "--stale", "--cluster", address)[1] != "yes\n":
            assert time.monotonic() < deadline, "the new member never caught up"
            time.sleep(0.05)
        assert members(cluster) == {"n1": True, "n2": True, "n3": True, "n4": False}

        code, out, err = run(capsys, "members", "add", "n4", address, *flags)
        assert (code, out, err) == (0, f"added n4 at {address}\n", "")
        assert members(cluster) == {"n1": True, "n2": True, "n3": True, "n4": True}

        code, out, err = run(capsys, "members", "remove", "n4", *flags)
        assert (code, out, err) == (0, "removed n4\n", "")
        assert members(cluster) == {"n1": True, "n2": True, "n3": True}

        code, out, err = run(capsys, "members", "remove", "n9", *flags)
        assert code == 2
        assert "n9" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        assert stop(learner) == 0


def leader(cluster: list[str]) -> str:
    async def ask() -> str:
        async with connect(cluster, timeout=5) as client:
            with trio.fail_after(10):
                while True:
                    for status in await client.status():
                        if status.role is Role.LEADER:
                            return status.id
                    await trio.sleep(0.05)

    return trio.run(ask)


def members(cluster: list[str]) -> dict[str, bool]:
    """The membership the leader reports: id -> voter."""

    async def ask() -> dict[str, bool]:
        async with connect(cluster, timeout=5) as client:
            for status in await client.status():
                if status.role is Role.LEADER:
                    return {m.id: m.voter for m in status.members}
        raise AssertionError("no leader answered")

    return trio.run(ask)


def test_client_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_loopback_ports(1)[0]}"
    for argv in (
        ["kv", "get", "k", "--cluster", dead, "--timeout", "0.5"],
        ["kv", "put", "k", "v", "--cluster", dead, "--timeout", "0.5"],
        ["members", "remove", "n9", "--cluster", dead, "--timeout", "0.5"],
        ["kv", "get", "k", "--cluster", "nohost"],
        ["kv", "get", "k", "--cluster", dead, "--timeout", "-1"],
        ["kv", "cas", "k", "old", "new", "--absent", "--cluster", dead],
        ["members", "add", "n9", "not-an-address", "--cluster", dead],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert out == "", argv
        lines = err.strip().splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith(f"tinyraft-trio {argv[0]}: error: "), lines


def test_no_traceback_from_the_real_command() -> None:
    dead = f"127.0.0.1:{free_loopback_ports(1)[0]}"
    for argv in (
        ["kv", "get", "k", "--cluster", dead, "--timeout", "0.5"],
        ["kv", "get", "k", "--bogus-flag", "--cluster", dead],
        ["members", "frobnicate", "--cluster", dead],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "tinyraft_trio", *argv],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2, argv
        assert "Traceback" not in result.stderr
        assert "error" in result.stderr.strip().splitlines()[-1]


def test_http_without_hypercorn_says_what_to_install(tmp_path: Path) -> None:
    # A stand-in package that fails to import, as if hypercorn were not installed.
    (tmp_path / "hypercorn").mkdir()
    (tmp_path / "hypercorn" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    result = subprocess.run(
        [sys.executable, "-m", "tinyraft_trio", "node", "--bootstrap", "--http", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "tinyraft-trio[http]" in lines[0]
