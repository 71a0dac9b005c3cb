"""FileStorage against MemoryStorage (the reference semantics), with hypothesis.

Random sequences of appends, truncations, hard-state changes, snapshots, compactions and
reloads run on both. FileStorage compacts whole segments only, so it may keep entries that
MemoryStorage dropped: those must then be the log's real entries (checked against a plain
list that never compacts), and every entry after the compaction point must be in both.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyraft_trio._core._types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from tinyraft_trio._storage._file import FileStorage
from tinyraft_trio._storage._memory import MemoryStorage

operations = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 8), st.binary(max_size=40)),
    st.tuples(st.just("truncate"), st.integers(0, 15), st.integers(0, 6), st.binary(max_size=40)),
    st.tuples(st.just("hard_state"), st.integers(0, 9), st.sampled_from([None, "a", "b"])),
    st.tuples(st.just("compact"), st.integers(0, 15)),
    st.tuples(st.just("snapshot"), st.binary(max_size=64)),
    st.tuples(st.just("reload")),
)


@dataclass
class Model:
    """The log as it would be without compaction."""

    first: int = 1
    entries: list[Entry] = field(default_factory=list)
    term: int = 1
    compacted: int = 0

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    def write(self, first_index: int, entries: list[Entry]) -> None:
        if first_index < self.first:
            self.entries.clear()
            self.first = first_index
        del self.entries[first_index - self.first :]
        if not self.entries:
            self.first = first_index
        self.entries.extend(entries)

    def make(self, first_index: int, count: int, data: bytes) -> list[Entry]:
        kinds = list(EntryKind)
        return [
            Entry(
                term=self.term,
                index=first_index + i,
                kind=kinds[(first_index + i) % len(kinds)],
                data=data[: (first_index + i) % (len(data) + 1)],
            )
            for i in range(count)
        ]


async def compare(file: FileStorage, memory: MemoryStorage, model: Model) -> None:
    got = await file.load()
    want = await memory.load()
    assert got.hard_state == want.hard_state
    assert got.snapshot == want.snapshot
    if got.snapshot is not None:
        assert await file.read_snapshot() == await memory.read_snapshot()
        assert await file.read_snapshot(3, 5) == await memory.read_snapshot(3, 5)
    entries = got.entries
    if entries:
        first = entries[0].index
        assert [entry.index for entry in entries] == list(range(first, first + len(entries)))
    # MemoryStorage's entries are a suffix of FileStorage's.
    if want.entries:
        assert entries[len(entries) - len(want.entries) :] == want.entries
    # FileStorage's entries are the log's real ones...
    for entry in entries:
        assert model.entries[entry.index - model.first] == entry
    # ...and it holds every one after the compaction point.
    after = [entry for entry in model.entries if entry.index > model.compacted]
    assert [entry for entry in entries if entry.index > model.compacted] == after


async def run(data_dir: str, segment_bytes: int, steps: list[tuple[object, ...]]) -> None:
    memory = MemoryStorage()
    model = Model()
    file = FileStorage(data_dir, segment_bytes=segment_bytes)
    await file.load()
    try:
        for step in steps:
            kind = step[0]
            if kind == "append" or kind == "truncate":
                if kind == "append":
                    _, count, data = step
                    first_index = model.last + 1
                else:
                    _, back, count, data = step
                    assert isinstance(back, int)
                    model.term += 1
                    first_index = max(1, model.last + 1 - back)
                assert isinstance(count, int) and isinstance(data, bytes)
                entries = model.make(first_index, count, data)
                for target in (file, memory):
                    await target.persist(hard_state=None, first_index=first_index, entries=entries)
                model.write(first_index, entries)
            elif kind == "hard_state":
                _, term, vote = step
                assert isinstance(term, int) and (vote is None or isinstance(vote, str))
                hard_state = HardState(current_term=term, voted_for=vote)
                for target in (file, memory):
                    await target.persist(hard_state=hard_state, first_index=None, entries=())
            elif kind == "compact":
                _, back = step
                assert isinstance(back, int)
                through = model.last - back
                if through >= 1:
                    for target in (file, memory):
                        await target.compact(through)
                    model.compacted = max(model.compacted, through)
            elif kind == "snapshot":
                _, data = step
                assert isinstance(data, bytes)
                meta = SnapshotMeta(
                    index=max(model.last, 0),
                    term=model.term,
                    membership=Membership.of_voters({"a": "h:1"}),
                    size=len(data),
                )
                for target in (file, memory):
                    await target.save_snapshot(meta, data)
            else:
                await file.close()
                file = FileStorage(data_dir, segment_bytes=segment_bytes)
                await compare(file, memory, model)
        await file.close()
        file = FileStorage(data_dir, segment_bytes=segment_bytes)
        await compare(file, memory, model)
    finally:
        await file.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segment_bytes=st.sampled_from([40, 200, 4096]),
    steps=st.lists(operations, min_size=1, max_size=30),
)
def test_file_storage_behaves_like_memory_storage(
    segment_bytes: int, steps: list[tuple[object, ...]]
) -> None:
    data_dir = tempfile.mkdtemp(prefix="tinyraft-model-")
    try:
        trio.run(run, data_dir, segment_bytes, steps)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
