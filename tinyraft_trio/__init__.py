"""tinyraft_trio: Raft consensus for Trio programs.

Open a node with ``open_raft_node(config, state_machine)``; see the README.
"""

from ._client import ClusterMemberStatus as ClusterMemberStatus
from ._client import ClusterNodeStatus as ClusterNodeStatus
from ._client import RaftClient as RaftClient
from ._client import connect as connect
from ._config import RaftConfig as RaftConfig
from ._core._types import NodeId as NodeId
from ._core._types import Role as Role
from ._exceptions import ClusterUnavailableError as ClusterUnavailableError
from ._exceptions import CommandFailedError as CommandFailedError
from ._exceptions import LeadershipLostError as LeadershipLostError
from ._exceptions import LeadershipTransferError as LeadershipTransferError
from ._exceptions import MembershipChangeError as MembershipChangeError
from ._exceptions import NodeClosedError as NodeClosedError
from ._exceptions import NotLeaderError as NotLeaderError
from ._exceptions import OutcomeUnknownError as OutcomeUnknownError
from ._exceptions import RaftError as RaftError
from ._exceptions import StorageFailedError as StorageFailedError
from ._node import RaftNode as RaftNode
from ._open import open_raft_node as open_raft_node
from ._state_machine import StateMachine as StateMachine
from ._status import MemberStatus as MemberStatus
from ._status import NodeStatus as NodeStatus
from ._storage import DataDirLockedError as DataDirLockedError
from ._storage import FileStorage as FileStorage
from ._storage import MemoryStorage as MemoryStorage
from ._storage import Storage as Storage
from ._storage import StorageCorruptedError as StorageCorruptedError
from ._transport import TcpTransport as TcpTransport
from ._transport import Transport as Transport

__version__ = "0.1.0"
