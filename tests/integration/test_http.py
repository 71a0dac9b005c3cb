"""The key-value HTTP API (``node --http``), with real node processes and a real HTTP client."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from support import environment, free_loopback_ports, stop

pytest.importorskip("hypercorn")
httpx = pytest.importorskip("httpx")

from tinyraft_trio._http import MAX_KEY_BYTES, MAX_VALUE_BYTES  # noqa: E402


@contextlib.contextmanager
def http_cluster(directory: Path) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """Three node processes, each serving HTTP: node id -> base URL, and node id -> process.
    Each is stopped with SIGTERM on exit (if still running) and must exit cleanly."""
    ports = free_loopback_ports(6)
    raft = [f"127.0.0.1:{port}" for port in ports[:3]]
    http = [f"127.0.0.1:{port}" for port in ports[3:]]
    peers = [arg for i, a in enumerate(raft, 1) for arg in ("--peer", f"n{i}={a}")]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(1, 4):
            command = ["node", "--id", f"n{i}", "--listen", raft[i - 1], "--http", http[i - 1]]
            command += ["--timeout-ms", "300", *peers]
            processes[f"n{i}"] = subprocess.Popen(
                [sys.executable, "-m", "tinyraft_trio", *command],
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=(directory / f"n{i}.log").open("wb"),
            )
        yield {f"n{i}": f"http://{address}" for i, address in enumerate(http, 1)}, processes
    finally:
        codes = [stop(process) for process in processes.values()]
    assert codes == [0, 0, 0]  # SIGTERM stops the HTTP server and the node cleanly


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three nodes, each serving HTTP; yields node id -> base URL."""
    with http_cluster(tmp_path_factory.mktemp("http")) as (found, _):
        yield found


async def statuses(client: Any, urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    with trio.fail_after(20):
        while True:
            found = {}
            for node_id, url in urls.items():
                try:
                    response = await client.get(f"{url}/status")
                except httpx.TransportError:
                    break
                found[node_id] = response.json()
            else:
                roles = [s["role"] for s in found.values()]
                if roles.count("leader") == 1 and all(
                    s["leader_id"] is not None for s in found.values()
                ):
                    return found
            await trio.sleep(0.1)


async def leader_and_followers(client: Any, urls: dict[str, str]) -> tuple[str, list[str]]:
    found = await statuses(client, urls)
    leader = next(node_id for node_id, s in found.items() if s["role"] == "leader")
    return urls[leader], [urls[n] for n in found if n != leader]


async def test_status_json(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=15) as client:
        found = await statuses(client, urls)
    for node_id, status in found.items():
        assert status["id"] == node_id
        assert status["role"] in ("leader", "follower")
        assert isinstance(status["term"], int)
        assert isinstance(status["commit_index"], int)
        assert isinstance(status["last_applied"], int)
        assert {m["id"] for m in status["members"]} == {"n1", "n2", "n3"}
    assert len({s["leader_id"] for s in found.values()}) == 1


async def test_put_get_delete_through_followers_and_the_leader(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=15) as client:
        leader, followers = await leader_and_followers(client, urls)
        # A write through a follower is forwarded; a read anywhere right after sees it.
        response = await client.put(f"{followers[0]}/kv/greeting", content="hello, wörld")
        assert response.status_code == 204
        for url in (leader, *followers):
            response = await client.get(f"{url}/kv/greeting")
            assert (response.status_code, response.text) == (200, "hello, wörld")
        response = await client.get(f"{leader}/kv/greeting", params={"stale": "true"})
        assert (response.status_code, response.text) == (200, "hello, wörld")

        # Keys are one percent-encoded path segment, so may hold "/" and any UTF-8.
        response = await client.put(f"{leader}/kv/a%2Fb%20%C3%A9", content="slash")
        assert response.status_code == 204
        response = await client.get(f"{followers[1]}/kv/a%2Fb%20%C3%A9")
        assert (response.status_code, response.text) == (200, "slash")

        response = await client.delete(f"{followers[1]}/kv/greeting")
        assert response.status_code == 204
        response = await client.get(f"{followers[0]}/kv/greeting")
        assert response.status_code == 404
        assert "error" in response.json()


async def test_compare_and_swap(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=15) as client:
        leader, followers = await leader_and_followers(client, urls)
        cas = f"{followers[0]}/kv/counter/cas"
        response = await client.post(cas, json={"expect": None, "value": "1"})
        assert (response.status_code, response.json()) == (200, {"swapped": True})
        response = await client.post(cas, json={"expect": None, "value": "1"})
        assert (response.status_code, response.json()) == (409, {"swapped": False})
        response = await client.post(f"{leader}/kv/counter/cas", json={"expect": "1", "value": "2"})
        assert response.status_code == 200
        response = await client.post(cas, json={"expect": "1", "value": "3"})
        assert response.status_code == 409
        response = await client.get(f"{followers[1]}/kv/counter")
        assert response.text == "2"


async def test_bad_requests(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=15) as client:
        _leader, followers = await leader_and_followers(client, urls)
        url = followers[0]
        for body in (b"not json", b"[1, 2]", b'{"value": "x"}', b'{"expect": 1, "value": "x"}'):
            response = await client.post(f"{url}/kv/k/cas", content=body)
            assert response.status_code == 400, body
            assert isinstance(response.json()["error"], str)
        response = await client.put(f"{url}/kv/k", content=b"\xff\xfe")
        assert response.status_code == 400
        response = await client.get(f"{url}/kv/%FF")
        assert response.status_code == 400
        response = await client.get(f"{url}/nothing/here")
        assert response.status_code == 404
        response = await client.post(f"{url}/kv/k")
        assert response.status_code == 405


async def test_size_limits(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=15) as client:
        leader, followers = await leader_and_followers(client, urls)
        url = followers[0]
        response = await client.put(f"{url}/kv/{'k' * (MAX_KEY_BYTES + 1)}", content="v")
        assert response.status_code == 413
        response = await client.put(f"{url}/kv/big", content=b"v" * (MAX_VALUE_BYTES + 1))
        assert response.status_code == 413
        response = await client.post(
            f"{url}/kv/big/cas", json={"expect": None, "value": "v" * (MAX_VALUE_BYTES + 1)}
        )
        assert response.status_code == 413
        # The largest allowed ones work.
        key = "k" * MAX_KEY_BYTES
        response = await client.put(f"{url}/kv/{key}", content=b"v" * MAX_VALUE_BYTES)
        assert response.status_code == 204
        response = await client.get(f"{leader}/kv/{key}")
        assert (response.status_code, len(response.content)) == (200, MAX_VALUE_BYTES)


@pytest.fixture
def lonely_url(tmp_path: Path) -> Iterator[str]:
    """n1 alone of three: it never gets a quorum, so it never learns of a leader."""
    ports = free_loopback_ports(4)
    raft = [f"127.0.0.1:{port}" for port in ports[:3]]
    peers = [arg for i, a in enumerate(raft, 1) for arg in ("--peer", f"n{i}={a}")]
    command = ["node", "--id", "n1", "--listen", raft[0], "--http", f"127.0.0.1:{ports[3]}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "tinyraft_trio", *command, "--timeout-ms", "300", *peers],
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "n1.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{ports[3]}"
    finally:
        assert stop(process) == 0


async def test_without_a_leader_writes_get_503_and_stale_reads_still_work(
    lonely_url: str,
) -> None:
    url = lonely_url
    async with httpx.AsyncClient(timeout=15) as client:
        with trio.fail_after(20):
            while True:
                try:
                    status = (await client.get(f"{url}/status")).json()
                    break
                except httpx.TransportError:
                    await trio.sleep(0.1)
        assert status["leader_id"] is None
        response = await client.put(f"{url}/kv/k", content="v")
        assert response.status_code == 503
        assert "error" in response.json()
        response = await client.get(f"{url}/kv/k")
        assert response.status_code == 503
        response = await client.get(f"{url}/kv/k", params={"stale": "true"})
        assert response.status_code == 404


@pytest.mark.parametrize("stopping", ["follower", "leader"])
async def test_a_node_stopped_by_sigterm_answers_the_writes_it_took(
    stopping: str, tmp_path: Path
) -> None:
    """Clients keep writing through one node's HTTP API while it is stopped with SIGTERM.
    Each write gets 204, or 503 (certainly not applied: it names the leader) while the node
    drains; none gets 504 or a dropped connection (outcome unknown), as when the HTTP server
    stopped before the node had handed over and drained."""
    with http_cluster(tmp_path) as (urls, processes):
        async with httpx.AsyncClient(timeout=15) as client:
            found = await statuses(client, urls)
            node_id = next(
                n
                for n, status in found.items()
                if (status["role"] == "leader") == (stopping == "leader")
            )
            url = urls[node_id]
            outcomes: list[str] = []
            busy = trio.Event()

            async def write(worker: int) -> None:
                for i in range(10_000):
                    try:
                        response = await client.put(f"{url}/kv/w{worker}", content=f"{i}")
                    except httpx.ConnectError:
                        outcomes.append("refused")  # the request was never sent
                        return
                    except httpx.HTTPError as exc:
                        outcomes.append(f"lost: {exc!r}")
                        return
                    outcomes.append(str(response.status_code))
                    if len(outcomes) >= 100:
                        busy.set()  # every writer is under way
                    if response.status_code != 204:
                        return  # 503 names the leader: a client goes there

            with trio.fail_after(30):
                async with trio.open_nursery() as writers:
                    for worker in range(10):
                        writers.start_soon(write, worker)
                    await busy.wait()
                    processes[node_id].send_signal(signal.SIGTERM)
                assert await trio.to_thread.run_sync(processes[node_id].wait) == 0
    unclear = [o for o in outcomes if o not in ("204", "503", "refused")]
    assert not unclear, unclear
    assert outcomes.count("204") >= 100
