"""Plain values shared by the pure Raft core and the driver."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

NodeId = str
"""A node's identity: a short string chosen by the operator, stable across restarts."""

Term = int
Index = int

_Built = TypeVar("_Built")


class Role(enum.Enum):
    """What a node currently does in its cluster (Raft §5.1)."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    """What a log entry carries; the number is its wire and disk encoding."""

    COMMAND = 0
    """A user command, handed to the state machine when committed."""
    NOOP = 1
    """Appended by each new leader so entries of earlier terms commit (§5.4.2, §8)."""
    CONFIG = 2
    """A cluster membership change."""
    SESSION = 3
    """A client's numbered command, applied at most once per number (dissertation §6.3)."""
    BATCH = 4
    """Independent commands proposed together: a msgpack array of commands (each bytes),
    applied in order, each with its own result. One entry for a client's whole batch of
    commands is one entry to encode, store, send and check instead of one per command."""
    SESSION_BATCH = 5
    """Numbered commands proposed together: a msgpack array of SESSION entries' data, each
    applied in order exactly as if it were a SESSION entry of its own."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One log entry. Entries are immutable; the log only ever appends or truncates."""

    term: Term
    index: Index
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""


def slot_builder(cls: type[_Built]) -> Callable[..., _Built]:
    """Return the fastest correct way to build a ``cls`` from already-validated fields,
    given positionally in field order.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which
    makes it most of the cost of building many small values (entries, responses). While
    ``cls`` stays a slotted dataclass whose fields are exactly its slots, with no
    ``__post_init__``, writing the slots directly builds the same value in under half the
    time (for three or four fields, what the hot paths build); otherwise this falls back to
    ``cls`` itself.
    """
    names = tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]

    def construct(*values: object) -> _Built:
        return cls(**dict(zip(names, values, strict=True)))

    slots = vars(cls).get("__slots__")
    if slots is None or tuple(slots) != names or hasattr(cls, "__post_init__"):
        return construct
    new = object.__new__
    setters = tuple(vars(cls)[name].__set__ for name in names)
    if len(setters) == 3:
        set_0, set_1, set_2 = setters

        def build_3(value_0: object, value_1: object, value_2: object) -> _Built:
            built: _Built = new(cls)
            set_0(built, value_0)
            set_1(built, value_1)
            set_2(built, value_2)
            return built

        return build_3
    if len(setters) == 4:
        set_0, set_1, set_2, set_3 = setters

        def build_4(value_0: object, value_1: object, value_2: object, value_3: object) -> _Built:
            built: _Built = new(cls)
            set_0(built, value_0)
            set_1(built, value_1)
            set_2(built, value_2)
            set_3(built, value_3)
            return built

        return build_4
    return construct


build_entry: Callable[[int, int, EntryKind, bytes], Entry] = slot_builder(Entry)
"""``build_entry(term, index, kind, data)``: an Entry of already-checked fields, fast."""

ENTRY_KIND_OF: dict[int, EntryKind] = {int(kind): kind for kind in EntryKind}
"""Each entry kind by its number, as the wire and the log file store it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HardState:
    """The state Raft must persist before answering any message (Figure 2, "Persistent state")."""

    current_term: Term = 0
    voted_for: NodeId | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Member:
    """One member of the cluster: where to reach it, and whether it votes."""

    id: NodeId
    address: str
    voter: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Membership:
    """The cluster's configuration: every member, sorted by id."""

    members: tuple[Member, ...] = ()

    @classmethod
    def of_voters(cls, addresses: dict[NodeId, str]) -> Membership:
        return cls(members=tuple(Member(id=i, address=addresses[i]) for i in sorted(addresses)))

    @property
    def voters(self) -> frozenset[NodeId]:
        return frozenset(member.id for member in self.members if member.voter)

    @property
    def ids(self) -> frozenset[NodeId]:
        return frozenset(member.id for member in self.members)

    def address_of(self, node_id: NodeId) -> str | None:
        for member in self.members:
            if member.id == node_id:
                return member.address
        return None

    def to_bytes(self) -> bytes:
        """Encode for the log, snapshots and the wire (JSON: readable in a hex dump)."""
        rows = [[member.id, member.address, member.voter] for member in self.members]
        return json.dumps(rows, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Membership:
        """Decode ``to_bytes`` output; raises ValueError on anything else."""
        try:
            rows = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"membership is not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise ValueError("membership: expected a list of [id, address, voter]")
        members = []
        for row in rows:
            if (
                not isinstance(row, list)
                or len(row) != 3
                or not isinstance(row[0], str)
                or not 0 < len(row[0]) <= 128
                or not isinstance(row[1], str)
                or len(row[1]) > 1024
                or not isinstance(row[2], bool)
            ):
                raise ValueError(f"membership: bad member {str(row)[:80]!r}")
            members.append(Member(id=row[0], address=row[1], voter=row[2]))
        ids = [member.id for member in members]
        if ids != sorted(set(ids)):
            raise ValueError("membership: members must be unique and sorted by id")
        return cls(members=tuple(members))


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotMeta:
    """What a snapshot covers: the state after applying every entry up to ``index``."""

    index: Index
    term: Term
    membership: Membership
    size: int = 0
    """The snapshot's length in bytes."""
