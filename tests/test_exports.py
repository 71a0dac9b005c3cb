"""The public API: what tinyraft_trio exports, and that the pure core does no I/O."""

from __future__ import annotations

import ast
import pathlib
import types

import tinyraft_trio
import tinyraft_trio.testing

PUBLIC = {
    "ClusterMemberStatus",
    "ClusterNodeStatus",
    "ClusterUnavailableError",
    "CommandFailedError",
    "OutcomeUnknownError",
    "RaftClient",
    "connect",
    "LeadershipTransferError",
    "MembershipChangeError",
    "DataDirLockedError",
    "FileStorage",
    "StorageCorruptedError",
    "LeadershipLostError",
    "MemberStatus",
    "MemoryStorage",
    "NodeClosedError",
    "NodeId",
    "NodeStatus",
    "NotLeaderError",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "Role",
    "StateMachine",
    "StorageFailedError",
    "Storage",
    "TcpTransport",
    "Transport",
    "open_raft_node",
}


def _exported(module: object) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_public_names_are_exported_and_nothing_private_leaks() -> None:
    assert _exported(tinyraft_trio) == PUBLIC
    for name in PUBLIC:
        value = getattr(tinyraft_trio, name)
        if value is str:  # NodeId is an alias of str
            continue
        module = getattr(value, "__module__", "tinyraft_trio")
        assert module.startswith("tinyraft_trio"), name


def test_testing_exports() -> None:
    assert _exported(tinyraft_trio.testing) == {
        "InvariantViolation",
        "MemoryCluster",
        "MemoryNetwork",
        "RecordingStateMachine",
        "SafetyChecker",
        "SimulatedDisk",
        "free_loopback_ports",
        "open_memory_cluster",
    }


def test_errors_share_one_base_class() -> None:
    for name in (
        "NotLeaderError",
        "LeadershipLostError",
        "NodeClosedError",
        "StorageFailedError",
        "StorageCorruptedError",
        "DataDirLockedError",
        "MembershipChangeError",
        "LeadershipTransferError",
    ):
        assert issubclass(getattr(tinyraft_trio, name), tinyraft_trio.RaftError)


FORBIDDEN_IN_CORE = {
    "trio",
    "msgpack",
    "socket",
    "time",
    "random",
    "os",
    "asyncio",
    "threading",
    "logging",
    "io",
    "pathlib",
    "datetime",
    "select",
    "selectors",
}


def test_core_imports_no_io_clock_or_randomness() -> None:
    """DESIGN §2: the core is pure, so it is deterministic and testable without I/O."""
    core = pathlib.Path(tinyraft_trio.__file__).parent / "_core"
    for path in core.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN_IN_CORE, f"{path.name} imports {name}"
