"""A randomized fault seed's run depends on its seed alone, so a failing seed replays.

Each run of ``run_one_seed`` (from test_randomized_faults.py, with fewer fault events) is
reduced to a fingerprint: every step Trio gives a task (the virtual time and the task's name),
then what each node's storage and state machine hold at the end and the network's counters.
A seed must give the same fingerprint when run again in the same process after it changed
(objects allocated, so new objects get other addresses and id-based hashes; garbage
collected; other runs in between), and in another process with another PYTHONHASHSEED.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import hypothesis  # noqa: F401  (importing it turns on Trio's deterministic scheduling)
import trio
import trio.testing
from test_randomized_faults import run_one_seed

from tinyraft_trio.testing import MemoryCluster, RecordingStateMachine

FAULT_EVENTS = 4
SEEDS = (1, 6)
"""Short runs that between them elect leaders, write session entries, snapshot, and crash and
restart a node."""


class _StepRecorder(trio.abc.Instrument):
    """Hashes every task step Trio takes: when (virtual time) and which task (its name)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.digest.update(f"{trio.current_time()!r} {task.name}\n".encode())


def _end_state(cluster: MemoryCluster) -> bytes:
    """What every node stored and applied, and what the network counted."""
    parts: list[object] = [cluster.network.statistics()]
    for node_id in cluster.node_ids:
        storage = cluster.storages[node_id]
        state_machine = cluster.state_machines[node_id]
        assert isinstance(state_machine, RecordingStateMachine)
        parts.append((node_id, storage.hard_state, storage.first_index, storage.entries))
        parts.append((storage.snapshot, storage.snapshot_data, state_machine.commands))
    return repr(parts).encode()


def fingerprint(seed: int) -> str:
    """Run ``seed`` as the randomized fault test does, in a Trio run of its own in virtual
    time; return the hex digest of its fingerprint."""
    assert trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING, "Hypothesis did not turn it on"
    trio._core._run._r.seed(seed)
    steps = _StepRecorder()
    cluster = trio.run(
        functools.partial(run_one_seed, seed, fault_events=FAULT_EVENTS),
        clock=trio.testing.MockClock(autojump_threshold=0),
        instruments=[steps],
    )
    steps.digest.update(_end_state(cluster))
    return steps.digest.hexdigest()


def _disturb_the_process() -> list[object]:
    """Allocate objects of assorted sizes (kept by the caller) and collect garbage: objects
    made afterwards get other addresses, and the collector runs at other moments."""
    rng = random.Random(1)
    kept: list[object] = [bytearray(rng.choice((1, 64, 4096))) for _ in range(3000)]
    kept += [trio.Event() for _ in range(1000)] + [object() for _ in range(1000)]
    gc.collect()
    return kept


def test_a_seed_runs_the_same_again_in_a_changed_process() -> None:
    first = {seed: fingerprint(seed) for seed in SEEDS}
    kept = _disturb_the_process()
    again = {seed: fingerprint(seed) for seed in reversed(SEEDS)}
    assert again == first
    del kept


def test_a_seed_runs_the_same_under_another_string_hash_seed() -> None:
    """Sets of strings (node ids) iterate in another order: nothing may depend on it."""
    here = Path(__file__).parent
    other = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    path = os.pathsep.join([str(here.parents[1]), str(here), os.environ.get("PYTHONPATH", "")])
    code = f"from test_reproducible_runs import fingerprint; print(fingerprint({SEEDS[0]}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": other, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split()[-1] == fingerprint(SEEDS[0])
