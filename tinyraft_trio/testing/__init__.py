"""Tools for testing Raft clusters in one process, in simulated time (like trio.testing)."""

from .._ports import free_loopback_ports as free_loopback_ports
from ._cluster import MemoryCluster as MemoryCluster
from ._cluster import open_memory_cluster as open_memory_cluster
from ._disk import SimulatedDisk as SimulatedDisk
from ._invariants import InvariantViolation as InvariantViolation
from ._invariants import SafetyChecker as SafetyChecker
from ._network import MemoryNetwork as MemoryNetwork
from ._state_machines import RecordingStateMachine as RecordingStateMachine
