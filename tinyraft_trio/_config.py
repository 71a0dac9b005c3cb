"""RaftConfig: everything a node needs to know before it starts."""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._core._types import NodeId


def parse_address(value: str, *, field_name: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6) or raise ValueError naming the field."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{field_name}: expected 'host:port', got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{field_name}: port must be in 0..65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _check_positive_number(name: str, value: object, *, upper: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}: must be a number > 0, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name}: must be <= {upper}, got {value!r}")


def _check_int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: must be an integer in {low}..{high}, got {value!r}")


def check_node_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable():
        raise ValueError(f"{name}: must be a non-empty printable string of at most 128 characters")
    if any(ch.isspace() for ch in value) or "=" in value or "," in value:
        raise ValueError(f"{name}: must not contain spaces, '=' or ',', got {value!r}")


@dataclass(frozen=True, kw_only=True)
class RaftConfig:
    """A node's configuration. Invalid values raise ValueError naming the field.

    Times are in seconds.

    Attributes:
        node_id: this node's id, unique in the cluster and stable across restarts. If not
            given, one is generated on first start and kept in ``data_dir`` (without a
            data dir, a new one each start).
        listen: ``"host:port"`` the node listens on for peers.
        advertise: ``"host:port"`` peers use to reach this node; defaults to ``listen``.
        peers: the initial voting members, this node included: id -> ``"host:port"``.
        cluster_id: a name shared by every node of one cluster; connections from nodes of
            another cluster are refused.
        election_timeout: a follower that hears nothing from a leader for this long (times a
            random factor drawn from [1, 2) each time) starts an election. A leader that has
            not heard from a majority for this long steps down.
        heartbeat_interval: how often an idle leader sends AppendEntries to each follower.
            Must be at most half the election timeout.
        max_entries_per_append: most entries in one AppendEntries message.
        max_bytes_per_append: most entry payload bytes in one AppendEntries message (a single
            larger entry is still sent, alone).
        max_inflight_appends: most AppendEntries messages in flight to one follower.
        max_frame_bytes: largest frame accepted from the network.
        seed: seeds the node's randomness (election timeouts, backoff jitter) so a
            simulated run can be replayed; None draws a seed from the OS.
        data_dir: where the node keeps its log, hard state and snapshots, durably (fsync
            before acknowledging). None keeps everything in memory: a restarted node then
            comes back empty.
        segment_bytes: a log segment file is closed and a new one started past this size;
            the one being appended to is preallocated to it (its flushes then commit no
            file size). Segments are deleted whole once a snapshot covers them, so this
            bounds the log kept behind the last snapshot (on disk, and its index in memory).
        snapshot_threshold: take a snapshot once this many commands were applied since
            the last one (each command of a batch entry counts; so does every other entry).
            The log since the last snapshot stays in memory, and every snapshot
            writes the whole state: a larger threshold costs memory, a smaller one CPU and
            disk when the state is large.
        trailing_entries: entries kept in the log behind a snapshot, so a follower that is
            only slightly behind catches up from the log rather than from a snapshot.
        trailing_bytes: at most this many bytes of entry data are kept behind a snapshot,
            whatever ``trailing_entries`` allows (a batch entry can hold a thousand commands).
        snapshot_chunk_bytes: most snapshot bytes in one InstallSnapshot message.
        promote_within_entries: a learner added as a voter is promoted once its log is
            within this many entries of the leader's.
        bootstrap: with no existing state, form a one-node cluster of this node.
        join: addresses of existing members to ask to add this node (it asks on every
            start: joining again is a no-op). A node with no state and neither ``peers``
            nor ``bootstrap`` waits to be added; it never forms a cluster of its own.
        voter: join as a voter (after catching up as a learner) or stay a learner.
        join_timeout: how long a joining node keeps asking before it gives up (and logs).
        session_timeout: a client session idle this long (in log time, by the leaders'
            clocks) is forgotten; its retries are then no longer recognised.
        read_mode: ``"read_index"`` (default) confirms leadership with a heartbeat round for
            every linearizable read. ``"lease"`` skips the round while the leader holds a
            lease: a majority acknowledged a heartbeat sent less than 0.9 election timeouts
            ago. That is safe only if no node's clock runs more than 10% fast or slow against
            another's over an election timeout (see the README).
    """

    node_id: NodeId | None = None
    listen: str = "127.0.0.1:7000"
    advertise: str | None = None
    peers: Mapping[NodeId, str] = field(default_factory=dict)
    cluster_id: str = "tinyraft"
    election_timeout: float = 0.5
    heartbeat_interval: float = 0.1
    max_entries_per_append: int = 2048
    max_bytes_per_append: int = 1024 * 1024
    max_inflight_appends: int = 64
    max_frame_bytes: int = 16 * 1024 * 1024
    seed: int | None = None
    data_dir: str | None = None
    segment_bytes: int = 4 * 1024 * 1024
    snapshot_threshold: int = 32768
    trailing_entries: int = 1024
    trailing_bytes: int = 4 * 1024 * 1024
    snapshot_chunk_bytes: int = 1024 * 1024
    promote_within_entries: int = 64
    bootstrap: bool = False
    join: tuple[str, ...] = ()
    voter: bool = True
    join_timeout: float = 60.0
    session_timeout: float = 3600.0
    read_mode: str = "read_index"

    def __post_init__(self) -> None:
        if self.node_id is not None:
            check_node_id("node_id", self.node_id)
        elif self.peers:
            raise ValueError("node_id: required when peers are given")
        if not isinstance(self.listen, str):
            raise ValueError(f"listen: expected 'host:port', got {self.listen!r}")
        parse_address(self.listen, field_name="listen")
        if self.advertise is None:
            object.__setattr__(self, "advertise", self.listen)
        else:
            parse_address(self.advertise, field_name="advertise")
        if not isinstance(self.peers, Mapping):
            raise ValueError("peers: expected a mapping of node id to 'host:port'")
        for peer_id, address in self.peers.items():
            check_node_id(f"peers[{peer_id!r}]", peer_id)
            if not isinstance(address, str):
                raise ValueError(f"peers[{peer_id!r}]: expected 'host:port', got {address!r}")
            parse_address(address, field_name=f"peers[{peer_id!r}]")
        if self.peers and self.node_id not in self.peers:
            raise ValueError(f"peers: must include this node ({self.node_id!r})")
        object.__setattr__(self, "peers", types.MappingProxyType(dict(self.peers)))
        if not isinstance(self.cluster_id, str) or not 0 < len(self.cluster_id) <= 128:
            raise ValueError("cluster_id: must be a non-empty string of at most 128 characters")
        _check_positive_number("election_timeout", self.election_timeout, upper=3600)
        _check_positive_number(
            "heartbeat_interval", self.heartbeat_interval, upper=self.election_timeout / 2
        )
        _check_int_range("max_entries_per_append", self.max_entries_per_append, 1, 1_000_000)
        _check_int_range("max_bytes_per_append", self.max_bytes_per_append, 1, 1 << 30)
        _check_int_range("max_inflight_appends", self.max_inflight_appends, 1, 100_000)
        _check_int_range("max_frame_bytes", self.max_frame_bytes, 1024, 1 << 31)
        if self.max_frame_bytes < self.max_bytes_per_append + 4096:
            raise ValueError(
                "max_frame_bytes: must be at least max_bytes_per_append + 4096 "
                f"({self.max_bytes_per_append + 4096}), got {self.max_frame_bytes}"
            )
        if self.data_dir is not None and (not isinstance(self.data_dir, str) or not self.data_dir):
            raise ValueError(f"data_dir: expected a non-empty path, got {self.data_dir!r}")
        _check_int_range("segment_bytes", self.segment_bytes, 4096, 1 << 40)
        _check_int_range("snapshot_threshold", self.snapshot_threshold, 1, 1 << 40)
        _check_int_range("trailing_entries", self.trailing_entries, 0, 1 << 40)
        _check_int_range("trailing_bytes", self.trailing_bytes, 0, 1 << 40)
        _check_int_range(
            "snapshot_chunk_bytes", self.snapshot_chunk_bytes, 1, self.max_frame_bytes - 4096
        )
        _check_int_range("promote_within_entries", self.promote_within_entries, 0, 1 << 40)
        if not isinstance(self.bootstrap, bool):
            raise ValueError(f"bootstrap: expected true or false, got {self.bootstrap!r}")
        if not isinstance(self.voter, bool):
            raise ValueError(f"voter: expected true or false, got {self.voter!r}")
        if isinstance(self.join, str):
            object.__setattr__(self, "join", tuple(a for a in self.join.split(",") if a))
        object.__setattr__(self, "join", tuple(self.join))
        for address in self.join:
            if not isinstance(address, str):
                raise ValueError(f"join: expected 'host:port' addresses, got {address!r}")
            parse_address(address, field_name="join")
        _check_positive_number("join_timeout", self.join_timeout, upper=86400 * 365)
        _check_positive_number("session_timeout", self.session_timeout, upper=86400 * 365)
        if self.read_mode not in ("read_index", "lease"):
            raise ValueError(f"read_mode: expected 'read_index' or 'lease', got {self.read_mode!r}")
        if self.bootstrap and (self.join or self.peers):
            raise ValueError("bootstrap: a bootstrapping node takes neither peers nor join")
        if self.seed is not None:
            _check_int_range("seed", self.seed, -(2**63), 2**63 - 1)

    @property
    def advertise_address(self) -> str:
        """The address peers use to reach this node (``advertise``, else ``listen``)."""
        return self.advertise or self.listen

    def replace(self, **changes: Any) -> RaftConfig:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RaftConfig:
        """Build a config from the environment variables of the tinyraft tradition.

        ``NODE_ID``, ``NODE_LISTEN_ADDR``, ``NODE_ADVERTISE_ADDR``, ``RAFT_TIMEOUT_MS`` (the
        election timeout in milliseconds; the heartbeat interval becomes a fifth of it),
        ``RAFT_DATA_DIR``, ``RAFT_BOOTSTRAP``, ``RAFT_JOIN`` (``host:port,...``),
        ``RAFT_VOTER`` (``true``/``false``) and ``RAFT_PEERS`` (``id=host:port,...``).
        Keyword arguments win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "NODE_ID" in env:
            values["node_id"] = env["NODE_ID"]
        if "NODE_LISTEN_ADDR" in env:
            values["listen"] = env["NODE_LISTEN_ADDR"]
        if env.get("NODE_ADVERTISE_ADDR"):
            values["advertise"] = env["NODE_ADVERTISE_ADDR"]
        if env.get("RAFT_TIMEOUT_MS"):
            text = env["RAFT_TIMEOUT_MS"]
            if not text.strip().isdigit() or int(text) <= 0:
                raise ValueError(f"RAFT_TIMEOUT_MS: must be a positive integer, got {text!r}")
            values["election_timeout"] = int(text) / 1000
            values["heartbeat_interval"] = int(text) / 5000
        if env.get("RAFT_DATA_DIR"):
            values["data_dir"] = env["RAFT_DATA_DIR"]
        if env.get("RAFT_BOOTSTRAP"):
            values["bootstrap"] = _parse_bool(env["RAFT_BOOTSTRAP"], "RAFT_BOOTSTRAP")
        if env.get("RAFT_JOIN"):
            values["join"] = tuple(a.strip() for a in env["RAFT_JOIN"].split(",") if a.strip())
        if env.get("RAFT_VOTER"):
            values["voter"] = _parse_bool(env["RAFT_VOTER"], "RAFT_VOTER")
        if env.get("RAFT_PEERS"):
            values["peers"] = parse_peers(env["RAFT_PEERS"], field_name="RAFT_PEERS")
        values.update(overrides)
        return cls(**values)


def parse_peers(text: str, *, field_name: str) -> dict[NodeId, str]:
    """Parse ``"a=host:port,b=host:port"`` into a mapping, naming ``field_name`` on error."""
    peers: dict[NodeId, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        peer_id, sep, address = item.partition("=")
        if not sep or not peer_id:
            raise ValueError(f"{field_name}: expected 'id=host:port', got {item!r}")
        parse_address(address, field_name=field_name)
        peers[peer_id] = address
    return peers


def _parse_bool(text: str, field_name: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{field_name}: expected true or false, got {text!r}")
