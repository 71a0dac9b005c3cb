"""Where a node keeps its hard state and log: the Storage protocol and its implementations."""

from ._base import PersistentState as PersistentState
from ._base import Storage as Storage
from ._check import CheckReport as CheckReport
from ._check import RepairReport as RepairReport
from ._check import check_data_dir as check_data_dir
from ._check import repair_data_dir as repair_data_dir
from ._file import DataDirLockedError as DataDirLockedError
from ._file import FileStorage as FileStorage
from ._file import StorageCorruptedError as StorageCorruptedError
from ._memory import MemoryStorage as MemoryStorage
