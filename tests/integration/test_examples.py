"""The examples run as a user would run them."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_wordtracker_replicates_words_to_three_nodes() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "wordtracker.py"), "alpha", "beta", "gamma"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"node{i}: alpha beta gamma" for i in (1, 2, 3)]


def test_kvstore_example_writes_through_a_follower_and_reads_back() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "kvstore.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(EXAMPLES.parent)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
