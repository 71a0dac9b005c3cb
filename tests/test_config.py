"""RaftConfig: validation that names the field, defaults, and the environment variables."""

from __future__ import annotations

import dataclasses

import pytest

from tinyraft_trio import RaftConfig


def test_defaults() -> None:
    config = RaftConfig(node_id="a")
    assert config.advertise == config.listen
    assert config.heartbeat_interval == 0.1
    assert config.election_timeout == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node_id = "b"  # type: ignore[misc]


def test_peers_are_frozen_and_must_include_self() -> None:
    config = RaftConfig(node_id="a", peers={"a": "h:1", "b": "h:2"})
    with pytest.raises(TypeError):
        config.peers["c"] = "h:3"  # type: ignore[index]
    with pytest.raises(ValueError, match="peers: must include this node"):
        RaftConfig(node_id="a", peers={"b": "h:2"})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"node_id": ""}, "node_id"),
        ({"node_id": "a b"}, "node_id"),
        ({"listen": "nohost"}, "listen"),
        ({"listen": "h:70000"}, "listen"),
        ({"advertise": "h:"}, "advertise"),
        ({"peers": {"a": "bad"}}, "peers"),
        ({"election_timeout": 0}, "election_timeout"),
        ({"election_timeout": -1}, "election_timeout"),
        ({"heartbeat_interval": 0.3}, "heartbeat_interval"),
        ({"max_entries_per_append": 0}, "max_entries_per_append"),
        ({"max_bytes_per_append": True}, "max_bytes_per_append"),
        ({"max_inflight_appends": 0}, "max_inflight_appends"),
        ({"max_frame_bytes": 10}, "max_frame_bytes"),
        ({"max_frame_bytes": 2000, "max_bytes_per_append": 1000}, "max_frame_bytes"),
        ({"seed": "x"}, "seed"),
        ({"trailing_bytes": -1}, "trailing_bytes"),
        ({"cluster_id": ""}, "cluster_id"),
    ],
)
def test_invalid_values_name_the_field(changes: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"node_id": "a", **changes}
    with pytest.raises(ValueError, match=f"^{field}"):
        RaftConfig(**values)  # type: ignore[arg-type]


def test_from_env_reads_the_tinyraft_variables() -> None:
    config = RaftConfig.from_env(
        {
            "NODE_ID": "n1",
            "NODE_LISTEN_ADDR": "0.0.0.0:9000",
            "NODE_ADVERTISE_ADDR": "10.1.2.3:9000",
            "RAFT_TIMEOUT_MS": "1000",
            "RAFT_PEERS": "n1=10.1.2.3:9000,n2=10.1.2.4:9000",
        }
    )
    assert config.node_id == "n1"
    assert config.listen == "0.0.0.0:9000"
    assert config.advertise == "10.1.2.3:9000"
    assert config.election_timeout == 1.0
    assert config.heartbeat_interval == 0.2
    assert dict(config.peers) == {"n1": "10.1.2.3:9000", "n2": "10.1.2.4:9000"}


def test_from_env_errors_name_the_variable() -> None:
    assert RaftConfig.from_env({}).node_id is None  # generated on first start
    with pytest.raises(ValueError, match="RAFT_TIMEOUT_MS"):
        RaftConfig.from_env({"NODE_ID": "a", "RAFT_TIMEOUT_MS": "soon"})
    with pytest.raises(ValueError, match="RAFT_PEERS"):
        RaftConfig.from_env({"NODE_ID": "a", "RAFT_PEERS": "a:1"})


def test_keyword_arguments_win_over_the_environment() -> None:
    config = RaftConfig.from_env({"NODE_ID": "a"}, node_id="b")
    assert config.node_id == "b"


def test_node_id_is_required_with_peers() -> None:
    with pytest.raises(ValueError, match=r"^node_id: required"):
        RaftConfig(peers={"a": "h:1"})


def test_join_bootstrap_and_voter() -> None:
    config = RaftConfig.from_env({"NODE_ID": "c", "RAFT_JOIN": "h:1, h:2", "RAFT_VOTER": "false"})
    assert config.join == ("h:1", "h:2")
    assert config.voter is False
    assert RaftConfig.from_env({"NODE_ID": "a", "RAFT_BOOTSTRAP": "true"}).bootstrap
    with pytest.raises(ValueError, match=r"^RAFT_VOTER"):
        RaftConfig.from_env({"NODE_ID": "a", "RAFT_VOTER": "maybe"})
    with pytest.raises(ValueError, match=r"^bootstrap"):
        RaftConfig(node_id="a", bootstrap=True, join=("h:1",))
    with pytest.raises(ValueError, match=r"^join"):
        RaftConfig(node_id="a", join=("nohost",))
