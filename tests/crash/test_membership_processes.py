"""Membership with real processes over TCP: bootstrap, join, promote, remove, restart all."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import trio
from test_crash_recovery import NodeHandle, NotDelivered, ProcessCluster, ReplyLost


class MembershipCluster(ProcessCluster):
    """n1 bootstraps alone; the others join through n1 (n3 as a learner)."""

    def command_line(self, handle: NodeHandle) -> list[str]:
        args = super().command_line(handle)
        # Drop the --peer flags: membership comes from bootstrap and joins.
        cleaned: list[str] = []
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg == "--peer":
                skip = True
                continue
            cleaned.append(arg)
        if handle.node_id == "n1":
            return [*cleaned, "--bootstrap"]
        if handle.node_id == "n4":
            return cleaned  # neither bootstrap nor join: waits for a leader's add_member
        cleaned += ["--join", self.handles["n1"].listen]
        if handle.node_id == "n3":
            cleaned.append("--non-voter")
        return cleaned


async def members(cluster: ProcessCluster, node_id: str) -> dict[str, bool]:
    reply = await cluster.request(node_id, {"op": "members"})
    return {m["id"]: m["voter"] for m in reply["members"]}


async def wait_for(cluster: ProcessCluster, node_id: str, expected: dict[str, bool]) -> None:
    with trio.fail_after(30):
        while True:
            try:
                if await members(cluster, node_id) == expected:
                    return
            except (NotDelivered, ReplyLost):
                pass
            await trio.sleep(0.1)


async def leader(cluster: ProcessCluster) -> str:
    # Other processes: there is no event to wait on, so ask every 100 ms.
    with trio.fail_after(30):
        while True:
            found = await cluster.find_leader()
            if found is not None:
                return found
            await trio.sleep(0.1)


async def apply(cluster: ProcessCluster, command: bytes) -> None:
    with trio.fail_after(30):
        while True:
            reply: dict[str, Any] = {}
            with contextlib.suppress(NotDelivered, ReplyLost):
                reply = await cluster.request(
                    await leader(cluster), {"op": "apply", "command": command.hex()}
                )
            if "ok" in reply:
                return
            await trio.sleep(0.1)


async def control(cluster: ProcessCluster, payload: dict[str, Any]) -> None:
    with trio.fail_after(30):
        while True:
            try:
                reply = await cluster.request(await leader(cluster), payload, reply_within=15)
            except (NotDelivered, ReplyLost):
                reply = {}
            if reply.get("ok"):
                return
            await trio.sleep(0.2)


async def test_bootstrap_join_promote_remove_and_restart_all(tmp_path: Path) -> None:
    cluster = MembershipCluster(tmp_path, 3)
    try:
        await cluster.start("n1")
        await wait_for(cluster, "n1", {"n1": True})
        await cluster.start("n2")
        await cluster.start("n3")
        await wait_for(cluster, "n1", {"n1": True, "n2": True, "n3": False})
        for i in range(20):
            await apply(cluster, f"c{i}".encode())
        # Promote the learner, then remove the first node (whichever leads).
        await control(
            cluster,
            {
                "op": "add_member",
                "id": "n3",
                "address": cluster.handles["n3"].listen,
                "voter": True,
            },
        )
        await wait_for(cluster, "n2", {"n1": True, "n2": True, "n3": True})
        await control(cluster, {"op": "remove_member", "id": "n1"})
        await wait_for(cluster, "n2", {"n2": True, "n3": True})
        for i in range(20, 30):
            await apply(cluster, f"c{i}".encode())
        await cluster.kill("n1")
        # Restart everyone still a member; they resume from their data dirs.
        await cluster.kill_many(["n2", "n3"])
        await cluster.start("n2")
        await cluster.start("n3")
        await wait_for(cluster, "n2", {"n2": True, "n3": True})
        await apply(cluster, b"final")
        states = {}
        for node_id in ("n2", "n3"):
            state = await cluster.request(node_id, {"op": "state"})
            with trio.fail_after(30):
                while (
                    state["last_applied"] < state["commit_index"]
                    or b"final".hex() not in state["commands"]
                ):
                    await trio.sleep(0.1)
                    state = await cluster.request(node_id, {"op": "state"})
            states[node_id] = state["commands"]
        assert states["n2"] == states["n3"]
        expected = [f"c{i}".encode().hex() for i in range(30)] + [b"final".hex()]
        assert states["n2"] == expected
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        await cluster.shutdown()


async def test_a_node_added_by_the_leader_alone_catches_up(tmp_path: Path) -> None:
    """A node started with neither peers, bootstrap nor join, added with add_member."""
    cluster = MembershipCluster(tmp_path, 4)
    try:
        await cluster.start("n1")
        await wait_for(cluster, "n1", {"n1": True})
        for i in range(5):
            await apply(cluster, f"c{i}".encode())
        await cluster.start("n4")
        await control(
            cluster,
            {
                "op": "add_member",
                "id": "n4",
                "address": cluster.handles["n4"].listen,
                "voter": True,
            },
        )
        await wait_for(cluster, "n4", {"n1": True, "n4": True})
        await apply(cluster, b"after")
        with trio.fail_after(30):
            while True:
                state = await cluster.request("n4", {"op": "state"})
                if b"after".hex() in state["commands"]:
                    break
                await trio.sleep(0.1)
        assert state["commands"] == [f"c{i}".encode().hex() for i in range(5)] + [b"after".hex()]
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        await cluster.shutdown()
