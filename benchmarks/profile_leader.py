"""Profile a tinyraft_trio leader under load with py-spy: ``python benchmarks/profile_leader.py``.

Starts a durable 3-node cluster (as ``run.py`` does), runs the benchmark client with
``--inflight`` writes in flight, records the leader with ``py-spy record --format raw`` and
prints the functions with the most samples (self and inclusive). Needs py-spy on PATH (and
permission to ptrace the node: root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HERE, Cluster, child_env


def leader_index(addresses: list[str]) -> int | None:
    completed = subprocess.run(
        [sys.executable, "-m", "tinyraft_trio", "status", "--cluster", ",".join(addresses)],
        env=child_env(), capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    for line in completed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "leader" and fields[0] in addresses:
            return addresses.index(fields[0])
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inflight", type=int, default=1000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--config", default="ours-durable", choices=["ours-durable", "ours-memory"])
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tinyraft-profile-"))
    cluster = Cluster(args.config, workdir)
    cluster.start()
    try:
        deadline = time.monotonic() + 20
        index = None
        while index is None and time.monotonic() < deadline:
            time.sleep(0.2)
            index = leader_index(cluster.addresses)
        if index is None:
            print("no leader", file=sys.stderr)
            return 1
        pid = cluster.processes[index].pid
        point = {
            "inflight": args.inflight, "size": args.size, "warmup": 1.0,
            "duration": args.seconds + 1.0, "timeout": 10.0,
        }  # fmt: skip
        plan = {"system": "ours", "addresses": cluster.addresses,
                "pids": [p.pid for p in cluster.processes], "points": [point]}  # fmt: skip
        client = subprocess.Popen(
            [sys.executable, str(HERE / "bench_client.py"), json.dumps(plan)],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=workdir,
        )  # fmt: skip
        time.sleep(1.5)
        raw = workdir / "leader.txt"
        subprocess.run(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
             "--format", "raw", "--output", str(raw), "--nonblocking"],
            check=True, capture_output=True,
        )  # fmt: skip
        out, _ = client.communicate(timeout=120)
        result = json.loads(out.decode().strip().splitlines()[-1])["points"][0]
        print(f"load: {result['throughput']:.0f} ops/s, p50 {result['p50_ms']:.1f} ms")
        self_counts: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [f for f in stack.split(";") if f]
            total += count
            if frames:
                self_counts[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        print(f"\nleader pid {pid}: {total} samples\n\ntop self:")
        for frame, count in self_counts.most_common(args.top):
            print(f"{100 * count / total:5.1f}%  {frame}")
        print("\ntop inclusive:")
        for frame, count in inclusive.most_common(args.top + 15):
            print(f"{100 * count / total:5.1f}%  {frame}")
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
