"""The tinyraft-trio command, end to end with real processes."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from support import environment, free_loopback_ports, stop

from tinyraft_trio import _cli_node, cli
from tinyraft_trio._cli_node import NODE_GC_THRESHOLDS, config_from
from tinyraft_trio.examples.kv import (
    KeyValueStore,
    cas_command,
    delete_command,
    get_query,
    put_command,
)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tinyraft_trio", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )


def status(addresses: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tinyraft_trio", "status", "--cluster", ",".join(addresses)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


async def wait_for_one_leader(addresses: list[str]) -> str:
    with trio.fail_after(20):
        while True:
            text = await trio.to_thread.run_sync(status, addresses)
            if text.count(" leader ") == 1 and "unreachable" not in text:
                return text
            await trio.sleep(0.2)


@pytest.mark.parametrize("style", ["flags", "env"])
async def test_a_cluster_formed_by_flags_or_by_environment(style: str, tmp_path: Path) -> None:
    ports = free_loopback_ports(3)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    peers = ",".join(f"n{i}={a}" for i, a in enumerate(addresses, start=1))
    processes = []
    try:
        for i, address in enumerate(addresses, start=1):
            data_dir = str(tmp_path / f"n{i}")
            if style == "flags":
                args = [
                    "node",
                    "--id",
                    f"n{i}",
                    "--listen",
                    address,
                    "--data-dir",
                    data_dir,
                    "--timeout-ms",
                    "300",
                ]
                args += [arg for peer in peers.split(",") for arg in ("--peer", peer)]
                env = environment()
            else:
                args = ["node"]
                env = environment(
                    NODE_ID=f"n{i}",
                    NODE_LISTEN_ADDR=address,
                    RAFT_PEERS=peers,
                    RAFT_DATA_DIR=data_dir,
                    RAFT_TIMEOUT_MS="300",
                )
            processes.append(start(args, env, tmp_path / f"n{i}.log"))
        table = await wait_for_one_leader(addresses)
        assert table.count(" follower ") == 2
        codes = [stop(process) for process in processes]
        assert codes == [0, 0, 0]  # SIGTERM: a clean shutdown
    finally:
        for process in processes:
            stop(process)


def test_bad_flags_and_unreachable_clusters_are_one_line_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["node", "--listen", "nohost"]) == 2
    assert cli.main(["node", "--app", "no.such.module:App", "--bootstrap"]) == 2
    assert cli.main(["status", "--cluster", "127.0.0.1:9", "--timeout", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert "listen" in err[0]
    assert "no.such.module" in err[1]
    assert "answered" in err[2]


def test_flags_win_over_the_environment() -> None:
    args = cli._build_parser()[0].parse_args(["node", "--id", "flag", "--non-voter"])
    config = config_from(args, {"NODE_ID": "env", "RAFT_VOTER": "true", "RAFT_JOIN": "h:1"})
    assert config.node_id == "flag"
    assert config.voter is False
    assert config.join == ("h:1",)


def test_the_node_command_collects_garbage_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node command raises the GC thresholds and freezes what startup loaded before it
    serves; the library itself leaves its host's collector alone."""
    seen: dict[str, Any] = {}

    def serve_instead(*args: object) -> None:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    before = gc.get_threshold()
    monkeypatch.setattr(_cli_node.trio, "run", serve_instead)
    try:
        assert cli.main(["node", "--bootstrap", "--listen", "127.0.0.1:7000"]) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["threshold"] == NODE_GC_THRESHOLDS != before
    assert seen["frozen"] > 1000


async def test_a_node_run_by_the_library_leaves_the_collector_alone() -> None:
    before = gc.get_threshold(), gc.get_freeze_count()
    from tinyraft_trio import RaftConfig, open_raft_node

    config = RaftConfig(node_id="n1", listen="127.0.0.1:0", bootstrap=True)
    async with open_raft_node(config, KeyValueStore()) as node:
        await node.wait_for_leader()  # its own election, which a loaded machine can delay
        await node.apply(put_command("a", "1"))
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_the_key_value_store() -> None:
    store = KeyValueStore()
    assert store.apply(put_command("a", "1")) is None
    assert store.query(get_query("a")) == "1"
    assert store.apply(cas_command("a", "2", "3")) is False
    assert store.apply(cas_command("a", "1", "3")) is True
    assert store.apply(cas_command("b", None, "x")) is True
    assert store.apply(delete_command("a")) is True
    assert store.apply(delete_command("a")) is False
    copy = KeyValueStore()
    copy.restore(store.snapshot())
    assert copy.data == {"b": "x"}
    with pytest.raises(ValueError):
        store.apply(b"\xc1")
