"""``tinyraft-trio demo`` runs to completion, exits 0, and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from support import environment


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # reused by another user's process: not ours
        return False
    return True


def test_the_demo_runs_to_completion_and_stops_everything() -> None:
    env = environment()
    result = subprocess.run(
        [sys.executable, "-m", "tinyraft_trio", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "Traceback" not in result.stderr
    assert "stores identical:      yes" in output
    assert re.search(r"failover took \d+\.\d+ s", output)
    assert "caught up" in output
    started = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(set(started)) == 4  # three nodes, and the old leader restarted
    stopped = re.search(r"stopped every process the demo started \(pids ([\d, ]+)\)", output)
    assert stopped is not None
    assert {int(pid) for pid in stopped.group(1).split(", ")} == set(started)
    assert [pid for pid in started if alive(pid)] == []
    # Its temporary data directories are gone too.
    directory = re.search(r"key-value store in (\S+)", output)
    assert directory is not None
    assert not Path(directory.group(1)).exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_process_the_demo_started() -> None:
    env = environment()
    demo = subprocess.Popen(
        [sys.executable, "-m", "tinyraft_trio", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background by a shell without job control inherits SIGINT
        # ignored, and so would the demo: give it the default, as a terminal's Ctrl-C has.
        preexec_fn=_default_sigint,
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("elected"):
                break
        demo.send_signal(signal.SIGINT)  # only the demo: it must stop its nodes itself
        rest, errors = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = "".join(lines) + rest
    assert demo.returncode == 130, output + errors
    assert "Traceback" not in errors
    started = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(started) == 3
    assert "stopped every process the demo started" in output
    assert [pid for pid in started if alive(pid)] == []
