"""Where a node keeps its hard state and log: the Storage protocol and its implementations."""

from ._base import PersistentState as PersistentState
from ._base import Storage as Storage
from ._memory import MemoryStorage as MemoryStorage
