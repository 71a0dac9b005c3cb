"""Plain values shared by the pure Raft core and the driver."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass

NodeId = str
"""A node's identity: a short string chosen by the operator, stable across restarts."""

Term = int
Index = int


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


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One log entry. Entries are immutable; the log only ever appends or truncates."""

    term: Term
    index: Index
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""


def _make_entry_builder() -> Callable[[int, int, EntryKind, bytes], Entry]:
    """Return the fastest correct way to build an Entry from already-validated fields.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which
    makes it most of the cost of proposing or decoding many entries. While Entry stays a plain
    slotted dataclass of exactly these four fields with no ``__post_init__``, writing the
    slots directly builds the same value in less than half the time.
    """
    names = tuple(field.name for field in dataclasses.fields(Entry))
    slots = vars(Entry).get("__slots__")
    if (
        names != ("term", "index", "kind", "data")
        or slots is None
        or hasattr(Entry, "__post_init__")
    ):
        return lambda term, index, kind, data: Entry(term=term, index=index, kind=kind, data=data)
    new = object.__new__
    set_term, set_index, set_kind, set_data = (vars(Entry)[name].__set__ for name in names)

    def build(term: int, index: int, kind: EntryKind, data: bytes) -> Entry:
        entry: Entry = new(Entry)
        set_term(entry, term)
        set_index(entry, index)
        set_kind(entry, kind)
        set_data(entry, data)
        return entry

    return build


build_entry = _make_entry_builder()
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
