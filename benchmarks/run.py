"""Benchmark tinyraft_trio against PySyncObj (issue 6): ``python benchmarks/run.py [--quick]``.

One invocation runs both systems, alternating them: a 3-node cluster as separate processes on
127.0.0.1 and a client in its own process (``bench_client.py``). Configurations:

- ``ours-durable``: tinyraft_trio with data dirs (fsync before acknowledging);
- ``ours-memory``: tinyraft_trio in memory;
- ``pso-default``: PySyncObj with its defaults (no journal: nothing on disk);
- ``pso-nobatch``: PySyncObj with ``appendEntriesUseBatch=False``.

Workloads:

- writes with 1 (sequential), 64, 1000 and 8000 in flight, 16 B and 1 KiB values;
- reads of one key on the leader with 1, 64 and 1000 in flight, after the writes: ours are
  linearizable (ReadIndex); PySyncObj has no linearizable read, so its reads are local reads
  of the leader's dict, not linearizable (labelled so in the table);
- leader SIGKILL failover and graceful leader shutdown (SIGTERM) with a client writing
  continuously;
- memory: 1,000,000 writes (``--memory-commands``) with 1000 in flight over 10,000 keys, each
  node's RSS sampled as they are acknowledged (start after a warm-up, middle, end, max,
  growth per half) and the data dir size for ours-durable. Not under ``--quick``; it is the
  longest part of the full run. Runs on each config but pso-nobatch (PySyncObj's memory is
  measured once, with its defaults).

Results go to ``<out>/bench-<time>.json`` and ``.md``, and the Markdown to
``benchmarks/LATEST.md``. Never asserted in tests.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ["ours-durable", "pso-default", "ours-memory", "pso-nobatch", "ours-connect"]
WRITES_ONLY = {"ours-connect"}
"""Configs run for the write points only: ``ours-connect`` is the durable cluster written
through ``connect()`` (exactly once, with sessions) instead of single requests."""
SIZES = [16, 1024]
INFLIGHT = [1, 64, 1000, 8000]
READ_INFLIGHT = [1, 64, 1000]
MEMORY_COMMANDS = 1_000_000
MEMORY_SKIPPED = {"pso-nobatch"}
"""Configs without a memory run: batching does not change what PySyncObj keeps in memory."""
CLIENT_GC: list[int] | None = [100_000, 20, 10]
"""``gc.set_threshold`` of the client process, for both systems: with Python's default
(700, 10, 10) a third of the load generator's CPU goes to collections walking its thousands of
waiting requests, on the cores the nodes need. The first threshold must exceed the objects
those requests hold (a few each, 8,000 requests): each turnover of them counts as that many
new objects, and at 20,000 every turnover set off a collection walking all of them (1.2 to
1.5 us per request, timed with ``gc.callbacks``; none at 100,000, and no request leaves
garbage in cycles). ``--client-default-gc`` keeps the default."""


# ------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def disk_sync_latency(directory: Path, samples: int = 300) -> dict[str, float]:
    """How long ``fdatasync`` of a small append takes in ``directory`` now (µs, p50/p99).

    The disk is shared with whatever else runs on the host, and its sync latency can double
    from one hour to the next; durable writes, sequential ones above all, follow it. So
    each round records it, as the load above records the CPUs. The appends are 1 ms apart,
    like a sequential writer's.
    """
    path = directory / "sync-probe"
    sync = getattr(os, "fdatasync", os.fsync)
    took: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(samples):
            os.write(fd, b"x" * 100)
            started = time.perf_counter()
            sync(fd)
            took.append(time.perf_counter() - started)
            time.sleep(0.001)
    finally:
        os.close(fd)
        path.unlink()
    return {
        "p50_us": statistics.median(took) * 1e6,
        "p99_us": statistics.quantiles(took, n=100)[98] * 1e6,
    }


def disk_write_rate(directory: Path, seconds: float = 0.5) -> float:
    """How many MB a second one writer gets onto the disk in ``directory`` now, appending
    1 MiB and calling ``fdatasync`` after each (what a busy durable node does with a batch).

    At 1 KiB and thousands of writes in flight our three nodes together write to the one
    shared disk a good part of what this allows; the report sets the rate they reached in the
    window (``disk_write_mb_s`` of a write point) beside it.
    """
    path = directory / "rate-probe"
    sync = getattr(os, "fdatasync", os.fsync)
    block = os.urandom(1024 * 1024)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            written += os.write(fd, block)
            sync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return written / elapsed / 1e6


def disk_probe(directory: Path) -> dict[str, float]:
    """The disk's sync latency and write rate now (``disk_sync_latency``, ``disk_write_rate``)."""
    return {**disk_sync_latency(directory), "write_mb_s": disk_write_rate(directory)}


def relay_floor(directory: Path, seconds: float) -> dict[str, Any] | None:
    """What a sequential write's hops cost on this machine now, with nothing of Raft in them
    (``relay_floor.py``), durable and in memory; None if the relay failed.

    Measured in each round beside the disk probe: both move with the host from one hour to
    the next, and the sequential latency targets are judged against them.
    """
    import relay_floor as relay  # here, so that --render needs neither trio nor msgpack

    try:
        return dict(relay.measure(seconds, str(directory)))
    except (OSError, RuntimeError, EOFError) as exc:
        print(f"relay floor failed: {exc!r}", flush=True)
        return None


def _busy_seconds() -> float | None:
    """All CPUs' busy time so far (from /proc/stat), in seconds."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    busy = sum(values[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("trio", "msgpack", "pysyncobj", "tinyraft_trio"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed (source tree)" if name == "tinyraft_trio" else "missing"
    return found


# ------------------------------------------------------------------------------ clusters


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


SOURCE = ROOT
"""The folder holding the ``tinyraft_trio`` package the nodes run (``--source``)."""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH", "")]))
    return env


def library_info() -> dict[str, str]:
    """Which tinyraft_trio the nodes import, and the repository's commit and state."""
    info: dict[str, str] = {}
    found = subprocess.run(
        [sys.executable, "-c", "import tinyraft_trio; print(tinyraft_trio.__file__)"],
        env=child_env(), capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    info["imported_from"] = str(Path(found.stdout.strip()).parent)
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    info["repo_head"] = head.stdout.strip() or "unknown"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "tinyraft_trio"], capture_output=True, text=True
    )
    if Path(info["imported_from"]).resolve() == (ROOT / "tinyraft_trio").resolve():
        changed = len(dirty.stdout.splitlines())
        info["tree"] = (
            f"working tree with {changed} uncommitted library file(s)" if changed else "clean"
        )
    else:
        info["tree"] = "--source " + str(SOURCE)
    return info


def _ask_library(query: str) -> str:
    """What ``query`` (Python source) prints, run by the library under test.

    Asked of a child process: the library under test may not be the one importable here."""
    answer = subprocess.run(
        [sys.executable, "-c", query],
        env=child_env(), capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    return answer.stdout


@functools.cache
def node_gc_thresholds() -> tuple[int, ...] | None:
    """The GC thresholds tinyraft_trio's ``node`` command sets (after ``gc.freeze()``), for
    the PySyncObj runner to set too; None for a source tree whose nodes keep the default."""
    query = "from tinyraft_trio._cli_node import NODE_GC_THRESHOLDS as t; print(*t)"
    return tuple(int(value) for value in _ask_library(query).split()) or None


@functools.cache
def snapshot_threshold() -> int | None:
    """The library's default ``snapshot_threshold``, which the benchmark's nodes run with."""
    query = "from tinyraft_trio import RaftConfig; print(RaftConfig().snapshot_threshold)"
    answer = _ask_library(query).strip()
    return int(answer) if answer.isdigit() else None


class Cluster:
    def __init__(self, config: str, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.addresses: list[str] = []
        self.logs: list[Path] = []
        self.data_dirs: list[Path] = []

    def start(self) -> None:
        env = child_env()
        if self.config.startswith("ours"):
            ports = free_ports(3)
            addresses = [f"127.0.0.1:{p}" for p in ports]
            peers = [f"--peer=n{i + 1}={a}" for i, a in enumerate(addresses)]
            for i, address in enumerate(addresses):
                command = [
                    sys.executable, "-m", "tinyraft_trio", "node", "--id", f"n{i + 1}",
                    "--listen", address, *peers, "--log-level", "WARNING",
                ]  # fmt: skip
                if self.config in ("ours-durable", "ours-connect"):
                    data_dir = self.workdir / f"n{i + 1}"
                    data_dir.mkdir(parents=True, exist_ok=True)
                    command += ["--data-dir", str(data_dir)]
                    self.data_dirs.append(data_dir)
                self._spawn(command, env, f"n{i + 1}")
            self.addresses = addresses
        else:
            ports = free_ports(6)
            raft = [f"127.0.0.1:{p}" for p in ports[:3]]
            control = [f"127.0.0.1:{p}" for p in ports[3:]]
            for i in range(3):
                command = [
                    sys.executable, str(HERE / "pysyncobj_node.py"), "--raft", raft[i],
                    *[f"--partner={p}" for j, p in enumerate(raft) if j != i],
                    "--control", control[i],
                ]  # fmt: skip
                if self.config == "pso-nobatch":
                    command.append("--no-batch")
                if thresholds := node_gc_thresholds():
                    command.append("--gc-threshold=" + ",".join(map(str, thresholds)))
                self._spawn(command, env, f"p{i + 1}")
            self.addresses = control

    def _spawn(self, command: list[str], env: dict[str, str], name: str) -> None:
        log = self.workdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as handle:
            self.processes.append(
                # cwd: not the repository, whose tinyraft_trio ``-m`` would put first on the path.
                subprocess.Popen(
                    command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=self.workdir
                )
            )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def run_client(self, plan: dict[str, Any], timeout: float) -> dict[str, Any]:
        system = "pso"
        if self.config.startswith("ours"):
            system = "ours-connect" if self.config == "ours-connect" else "ours"
        plan = dict(plan, system=system, addresses=self.addresses, client_gc=CLIENT_GC,
                    pids=[p.pid for p in self.processes],
                    data_dirs=[str(d) for d in self.data_dirs])  # fmt: skip
        try:
            completed = subprocess.run(
                [sys.executable, str(HERE / "bench_client.py"), json.dumps(plan)],
                env=child_env(), capture_output=True, timeout=timeout, cwd=self.workdir,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"error": f"client timed out after {timeout:.0f} s"}
        lines = completed.stdout.decode().strip().splitlines()
        if completed.returncode != 0 or not lines:
            return {"error": completed.stderr.decode()[-2000:]}
        return json.loads(lines[-1])


# ------------------------------------------------------------------------------ running


def run_config(config: str, plan: dict[str, Any], workroot: Path, timeout: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{config}-", dir=workroot))
    cluster = Cluster(config, workdir)
    cluster.start()
    try:
        result = cluster.run_client(plan, timeout)
    finally:
        cluster.stop()
    if "error" in result:
        tail = b"".join(log.read_bytes()[-600:] for log in cluster.logs if log.exists())
        result["node_logs_tail"] = tail.decode(errors="replace")
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> int:
    global CLIENT_GC, SOURCE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (under two minutes)")
    parser.add_argument("--out", default="results", help="folder for JSON and Markdown results")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--rounds", type=int, help="load rounds per config (median reported)")
    parser.add_argument("--render", metavar="JSON", help="only re-render a results file")
    parser.add_argument(
        "--memory-commands",
        type=int,
        metavar="N",
        help="run only the memory workload, with N commands (the full run: "
        f"{MEMORY_COMMANDS:,} after the other workloads; never under --quick)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="the full run without the memory workload"
    )
    parser.add_argument(
        "--client-default-gc",
        action="store_true",
        help="leave the client process at Python's GC thresholds (default: "
        f"{tuple(CLIENT_GC or ())}, for both systems)",
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help="folder holding the tinyraft_trio package to run (default: this repository's), "
        "e.g. one exported with: git archive HEAD tinyraft_trio | tar -x -C DIR",
    )
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    if args.client_default_gc:
        CLIENT_GC = None
    if args.source:
        SOURCE = Path(args.source).resolve()
    if args.render:
        markdown = render(json.loads(Path(args.render).read_text()))
        Path(args.render).with_suffix(".md").write_text(markdown)
        (HERE / "LATEST.md").write_text(markdown)
        print(markdown)
        return 0

    if args.quick:
        warmup, duration, rounds, failover_rounds = 0.4, 0.8, 1, 1
    else:
        # Five SIGKILL runs: the time to elect a new leader is randomized (election timeouts),
        # so three runs give a median that moves by a few hundred ms between invocations.
        warmup, duration, rounds, failover_rounds = 1.0, 3.0, 3, 5
    rounds = args.rounds or rounds
    memory_commands = 0 if args.quick or args.no_memory else MEMORY_COMMANDS
    if args.memory_commands is not None:  # the memory workload alone
        rounds, failover_rounds, memory_commands = 0, 0, args.memory_commands
    load_plan = {
        "points": [
            {"inflight": k, "size": s, "warmup": warmup, "duration": duration, "timeout": 10.0}
            for s in SIZES
            for k in INFLIGHT
        ],
        "reads": [
            {"inflight": k, "size": 16, "warmup": warmup, "duration": duration, "timeout": 10.0}
            for k in READ_INFLIGHT
        ],
        "settle": 0.3,
        "failover": _failover_plan("SIGTERM"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workroot = Path(tempfile.mkdtemp(prefix="tinyraft-bench-"))
    started_wall = time.time()
    busy0, own0, load0 = _busy_seconds(), _own_seconds(), os.getloadavg()
    runs: dict[str, Any] = {
        c: {"load": [], "failover": [], "graceful": [], "memory": []} for c in configs
    }
    disk: list[dict[str, float]] = []
    floor: list[dict[str, Any] | None] = []
    try:
        for _ in range(rounds):
            disk.append(disk_probe(workroot))
            print(f"[{time.time() - started_wall:6.1f}s] relay floor", flush=True)
            floor.append(relay_floor(workroot, 0.5 if args.quick else duration))
            for config in configs:
                print(f"[{time.time() - started_wall:6.1f}s] {config}: load", flush=True)
                plan = load_plan
                if config in WRITES_ONLY:
                    plan = {"points": load_plan["points"], "settle": load_plan["settle"]}
                result = run_config(config, plan, workroot, timeout=300)
                runs[config]["load"].append(result)
                if config not in WRITES_ONLY:
                    runs[config]["graceful"].append(result.get("failover"))
        for _ in range(failover_rounds):
            for config in [c for c in configs if c not in WRITES_ONLY]:
                print(f"[{time.time() - started_wall:6.1f}s] {config}: SIGKILL", flush=True)
                result = run_config(config, {"points": [], "settle": 0.3,
                                             "failover": _failover_plan("SIGKILL")},
                                    workroot, timeout=60)  # fmt: skip
                runs[config]["failover"].append(result.get("failover") or result)
            if args.quick:
                break
        for _ in range(min(2, failover_rounds - 1)):  # and one graceful stop per load round
            for config in [c for c in configs if c not in WRITES_ONLY]:
                print(f"[{time.time() - started_wall:6.1f}s] {config}: SIGTERM", flush=True)
                result = run_config(config, {"points": [], "settle": 0.3,
                                             "failover": _failover_plan("SIGTERM")},
                                    workroot, timeout=60)  # fmt: skip
                runs[config]["graceful"].append(result.get("failover") or result)
        for config in configs if memory_commands > 0 else []:
            if config in MEMORY_SKIPPED or config in WRITES_ONLY:
                continue
            print(f"[{time.time() - started_wall:6.1f}s] {config}: memory", flush=True)
            result = run_config(config, _memory_plan(memory_commands), workroot,
                                timeout=120 + memory_commands / 1000)  # fmt: skip
            runs[config]["memory"].append(result.get("memory") or result)
        disk.append(disk_probe(workroot))
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    wall = time.time() - started_wall
    busy1, own1, load1 = _busy_seconds(), _own_seconds(), os.getloadavg()
    others = None
    if busy0 is not None and busy1 is not None:
        others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "memory_commands": memory_commands,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": versions(),
        "library": library_info(),
        "client_gc": CLIENT_GC,
        "node_gc": node_gc_thresholds(),
        "snapshot_threshold": snapshot_threshold(),
        "wall_seconds": wall,
        "load": {
            "our_cores": (own1 - own0) / wall,
            "other_cores": others,
            "loadavg_before": load0,
            "loadavg_after": load1,
        },
        "disk_sync": disk,
        "relay_floor": floor,
        "runs": runs,
    }
    markdown = render(report)
    print(markdown)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=1))
    (out / f"bench-{stamp}.md").write_text(markdown)
    (HERE / "LATEST.md").write_text(markdown)
    print(f"written: {out / f'bench-{stamp}.json'}, .md and {HERE / 'LATEST.md'}")
    return 0


def _failover_plan(sig: str) -> dict[str, Any]:
    return {"signal": sig, "writers": 8, "before": 0.5, "limit": 10.0, "after": 0.3}


def _memory_plan(commands: int) -> dict[str, Any]:
    """``commands`` puts with 1000 in flight over 10,000 keys (16 B values), after a warm-up
    (20,000 puts, or a tenth of ``commands`` if fewer); about 20 samples of memory."""
    memory = {
        "commands": commands,
        "warmup": min(20_000, max(1, commands // 10)),
        "inflight": 1000,
        "keys": 10_000,
        "size": 16,
        "sample_every": max(1000, commands // 20),
        "timeout": 10.0,
    }
    return {"points": [], "settle": 0.3, "memory": memory}


# ------------------------------------------------------------------------------ report


def _point(
    report: dict[str, Any], config: str, inflight: int, size: int, kind: str = "points"
) -> dict[str, Any] | None:
    """The median (by throughput) of a config's runs at one point; ``kind``: "points"
    (writes) or "reads"."""
    found = [point for point in _by_round(report, config, inflight, size, kind) if point]
    if not found:
        return None
    found.sort(key=lambda p: p["throughput"])
    return found[len(found) // 2]


def _by_round(
    report: dict[str, Any], config: str, inflight: int, size: int, kind: str = "points"
) -> list[dict[str, Any] | None]:
    """A config's point in each load round, in order (None where a round lacks it)."""
    found: list[dict[str, Any] | None] = []
    for run in report["runs"].get(config, {}).get("load", []):
        found.append(None)
        for point in run.get(kind, []):
            if point["inflight"] == inflight and point["size"] == size and "error" not in point:
                found[-1] = point
    return found


def _ratio_cell(
    report: dict[str, Any],
    points: dict[str, dict[str, Any]],
    best: str | None,
    inflight: int,
    size: int,
    kind: str = "points",
) -> str:
    """ours-durable / ``best`` throughput: the ratio of the medians, then each round's own
    ratio. A round runs every configuration in turn, so its ratio is free of the machine's
    drift between rounds."""
    if best is None or "ours-durable" not in points:
        return "n/a"
    cell = _ratio(points["ours-durable"]["throughput"], points[best]["throughput"])
    ours = _by_round(report, "ours-durable", inflight, size, kind)
    theirs = _by_round(report, best, inflight, size, kind)
    rounds = [
        _ratio(a["throughput"], b["throughput"]).rstrip("x")
        for a, b in zip(ours, theirs, strict=False)  # a config may lack late rounds
        if a is not None and b is not None
    ]
    return f"{cell} ({', '.join(rounds)})" if len(rounds) > 1 else cell


def _points(
    report: dict[str, Any], inflight: int, size: int, kind: str = "points"
) -> dict[str, dict[str, Any]]:
    """Every config's median point (configs without one are left out)."""
    found = {c: _point(report, c, inflight, size, kind) for c in CONFIGS}
    return {c: point for c, point in found.items() if point is not None}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def _counts(items: list[dict[str, Any]]) -> str:
    total = {"ok": 0, "failed": 0, "unacked": 0}
    for item in items:
        for key in total:
            total[key] += item.get("counts", {}).get(key, 0)
    return f"{total['ok']}/{total['failed']}/{total['unacked']}"


def _latency(point: dict[str, Any] | None) -> str:
    if point is None:
        return "n/a"
    return f"{_fmt(point['p50_ms'], 2)} / {_fmt(point['p99_ms'], 2)}"


def _pso_best(points: dict[str, dict[str, Any]], inflight: int) -> str | None:
    """The better PySyncObj config at a point: the higher throughput, or when sequential
    the lower latency."""
    pso = [c for c in ("pso-default", "pso-nobatch") if c in points]
    if not pso:
        return None
    if inflight == 1:
        return min(pso, key=lambda c: points[c]["p50_ms"] or 1e9)
    return max(pso, key=lambda c: points[c]["throughput"] or 0)


def _median_unavailable(items: list[Any]) -> tuple[float | None, str]:
    values = [i.get("unavailable_ms") for i in items if isinstance(i, dict)]
    measured = [v for v in values if v is not None]
    text = ", ".join(_fmt(v, 0) if v is not None else "never" for v in values)
    return (statistics.median(measured) if measured else None), text


def render(report: dict[str, Any]) -> str:
    """The Markdown report: a header, then a section per workload that was run."""
    lines = _render_header(report)
    sections = (
        _render_writes,
        _render_cores,
        _render_connect,
        _render_reads,
        _render_leader_loss,
        _render_memory,
    )
    for section in sections:
        lines += section(report)
    lines += _render_errors(report)
    return "\n".join(lines) + "\n"


def _floor_latencies(floors: list[dict[str, Any]], mode: str) -> str:
    """Each round's relay floor in ``mode``, as "p50 / p99 ms"."""
    return ", ".join(f"{f[mode]['p50_ms']:.2f} / {f[mode]['p99_ms']:.2f} ms" for f in floors)


def _render_header(report: dict[str, Any]) -> list[str]:
    client_gc = "Python's default (700, 10, 10)"
    if report.get("client_gc"):
        client_gc = f"{tuple(report['client_gc'])} (`gc.set_threshold`; default (700, 10, 10))"
    node_gc = "Python's default (700, 10, 10)"
    if report.get("node_gc"):
        node_gc = (
            f"{tuple(report['node_gc'])} after `gc.freeze()` (tinyraft_trio's `node` command "
            "sets it; the PySyncObj runner does the same, `--gc-threshold`)"
        )
    disk_lines = []
    if report.get("disk_sync"):
        disk_lines.append(
            "Disk: `fdatasync` of a 100-byte append (1 ms apart, in the data dirs' file system) "
            "took p50 / p99 "
            + ", ".join(f"{d['p50_us']:.0f} / {d['p99_us']:.0f} µs" for d in report["disk_sync"])
            + " at the start of each round and at the end: durable writes wait on it."
        )
        rates = [d["write_mb_s"] for d in report["disk_sync"] if "write_mb_s" in d]
        if rates:
            disk_lines.append(
                "Disk write rate: one writer appending 1 MiB and calling `fdatasync` after each "
                "got " + ", ".join(f"{rate:.0f}" for rate in rates) + " MB/s at the same "
                "probes; the cores table gives what the durable cluster wrote meanwhile."
            )
    floors = [f for f in report.get("relay_floor") or [] if f]
    if floors:
        disk_lines.append(
            "Floor: a bare relay of a sequential write's hops (`relay_floor.py`: client → "
            "leader → both followers → leader → client, four processes, Trio and msgpack, each "
            "append an `fdatasync` on the event loop, no Raft) took p50 / p99 "
            + _floor_latencies(floors, "durable")
            + " durable and "
            + _floor_latencies(floors, "memory")
            + " in memory, in each round: what a sequential write's hops cost here with nothing of "
            "Raft in them."
        )
    return [
        f"# tinyraft_trio vs PySyncObj — {report['date']}{' (--quick)' if report['quick'] else ''}",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['platform']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ".",
        "Library: "
        + (", ".join(f"{k} {v}" for k, v in report.get("library", {}).items()) or "not recorded")
        + ".",
        f"Wall time {report['wall_seconds']:.0f} s; this benchmark used "
        f"{report['load']['our_cores']:.2f} cores on average, other processes "
        f"{_fmt(report['load']['other_cores'], 2)} cores (loadavg before "
        f"{report['load']['loadavg_before'][0]:.2f}, "
        f"after {report['load']['loadavg_after'][0]:.2f}).",
        *disk_lines,
        "",
        *(
            [
                "**Note: the machine was shared with other work during this run** (see the "
                "cores used by other processes above); the numbers are noisy.",
                "",
            ]
            if (report["load"]["other_cores"] or 0) > 0.1
            else []
        ),
        f"Client process GC thresholds, for both systems: {client_gc}.",
        *([f"Node processes' GC, for both systems: {node_gc}."] if "node_gc" in report else []),
        "3 nodes + 1 client process on 127.0.0.1. ours-durable fsyncs before acknowledging; "
        "ours-memory keeps the log in memory; PySyncObj never fsyncs (default: no journal). "
        "pso-best = the better of its default (batching on) and `appendEntriesUseBatch=False`.",
        "Throughput counts requests acknowledged within the measured window (after a "
        "warm-up); latency is that of those requests. Counts are acknowledged/failed/unacked "
        "requests over the whole run (including warm-up and drain). Each figure is the "
        "median of the rounds; a ratio is that of the medians, followed (in brackets) by "
        "each round's own ratio: a round runs every configuration in turn, so its ratio is "
        "free of the machine's drift between rounds.",
    ]


def _render_writes(report: dict[str, Any]) -> list[str]:
    if not any(_point(report, c, k, s) for c in CONFIGS for k in INFLIGHT for s in SIZES):
        return []
    lines = [
        "",
        "## Writes",
        "",
        "| value | in flight | ours-durable ops/s | ours-memory ops/s | pso-default ops/s | "
        "pso-nobatch ops/s | durable / pso-best | ours-durable p50 / p99 ms | "
        "pso-best p50 / p99 ms | largest node RSS after, MiB: ours-durable / pso-best | "
        "counts ours-durable | counts pso (both) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, inflight, p in _write_points(report):
        tp = {c: p[c]["throughput"] if c in p else None for c in CONFIGS}
        best = _pso_best(p, inflight)
        lines.append(
            f"| {_write_point(size, inflight)} "
            f"| {_fmt(tp['ours-durable'], 0)} | {_fmt(tp['ours-memory'], 0)} "
            f"| {_fmt(tp['pso-default'], 0)} | {_fmt(tp['pso-nobatch'], 0)} "
            f"| {_ratio_cell(report, p, best, inflight, size)} "
            f"| {_latency(p.get('ours-durable'))} "
            f"| {_latency(p[best] if best else None)} ({best or 'n/a'}) "
            f"| {_largest_rss(p.get('ours-durable'))} "
            f"/ {_largest_rss(p[best] if best else None)} "
            f"| {_counts([p[c] for c in ('ours-durable',) if c in p])} "
            f"| {_counts([p[c] for c in ('pso-default', 'pso-nobatch') if c in p])} |"
        )
    return lines


CORES_INFLIGHT = [1, 8000]
"""The write points whose use of the cores is shown: a sequential write, and the most in
flight (where one client process has the most to do)."""


def _render_cores(report: dict[str, Any]) -> list[str]:
    """Per process, the share of a core it ran and waited, runnable, for one, during a write
    point's measured window (the median round's); and how many cores sat idle meanwhile."""
    rows = []
    for size, inflight, p in _write_points(report):
        if inflight not in CORES_INFLIGHT:
            continue
        best = _pso_best(p, inflight)
        for config in ("ours-durable", best):
            sched = (p.get(config) or {}).get("sched") if config else None
            if not sched:
                continue
            shares = sched["processes"]
            followers = [shares.get(name) for name in ("follower 1", "follower 2")]
            rows.append(
                f"| {_write_point(size, inflight)} | {config} "
                f"| {_sched_cell(shares.get('client'))} | {_sched_cell(shares.get('leader'))} "
                f"| {', '.join(_sched_cell(f) for f in followers)} "
                f"| {_fmt(sched['idle_cores'], 2)} | {_fmt(sched.get('disk_write_mb_s'), 0)} |"
            )
    if not rows:
        return []
    return [
        "",
        "## Where the cores went",
        "",
        "During the measured window of the median round, each process's share of a core on a "
        "CPU / runnable but waiting for one (Linux `schedstat`, all its threads), and the "
        "cores idle meanwhile. A process waiting for a core while one idles is held back by "
        "the OS's scheduler; one running a whole core is the limit itself. Disk writes: the "
        "MB a second the machine's disks took meanwhile (`/sys/block/*/stat`, all processes; "
        "compare the disk write rate in the header).",
        "",
        "| value | in flight | config | client | leader | followers | idle cores "
        "| disk writes MB/s |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _sched_cell(share: dict[str, float] | None) -> str:
    if not share:
        return "n/a"
    return f"{share['cpu']:.2f} / {share['waiting']:.2f}"


def _write_points(report: dict[str, Any]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Each write point's value size, writes in flight and results by config, in table order."""
    for size in SIZES:
        for inflight in INFLIGHT:
            yield size, inflight, _points(report, inflight, size)


def _write_point(size: int, inflight: int) -> str:
    """The first two cells of a write point's row: the value's size and the writes in flight."""
    return f"{size} B | {inflight}{' (sequential)' if inflight == 1 else ''}"


def _largest_rss(point: dict[str, Any] | None) -> str:
    """The largest resident set among the nodes after ``point`` (MiB), if it was sampled."""
    sizes = [kb for kb in (point or {}).get("node_rss_kb", []) if kb is not None]
    return _fmt(max(sizes) / 1024, 0) if sizes else "n/a"


def _render_connect(report: dict[str, Any]) -> list[str]:
    if not any(_point(report, "ours-connect", k, s) for k in INFLIGHT for s in SIZES):
        return []
    lines = [
        "",
        "## Writes through `connect()` (exactly once)",
        "",
        "ours-connect: the durable cluster written through `tinyraft_trio.connect()`, the client "
        "a user would take: each command carries the client's session and a sequence number, so "
        "it is applied once however often it is retried (PySyncObj has no such thing). The "
        "harness is the same; the writes table's ours-durable sends single `apply` requests.",
        "",
        "| value | in flight | ours-connect ops/s | / ours-durable | / pso-best | "
        "ours-connect p50 / p99 ms | counts ours-connect |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, inflight, p in _write_points(report):
        point = p.get("ours-connect")
        if point is None:
            continue
        raw = p.get("ours-durable")
        best = _pso_best(p, inflight)
        lines.append(
            f"| {_write_point(size, inflight)} "
            f"| {_fmt(point['throughput'], 0)} "
            f"| {_ratio(point['throughput'], raw['throughput'] if raw else None)} "
            f"| {_ratio(point['throughput'], p[best]['throughput'] if best else None)} "
            f"| {_latency(point)} | {_counts([point])} |"
        )
    return lines


def _render_reads(report: dict[str, Any]) -> list[str]:
    if not any(_point(report, c, k, 16, "reads") for c in CONFIGS for k in READ_INFLIGHT):
        return []
    lines = [
        "",
        "## Reads (one 16 B key on the leader, after the writes)",
        "",
        "ours: linearizable reads (ReadIndex: a heartbeat round confirms the leadership "
        "before the leader answers from its state). **PySyncObj: local read on the leader, "
        "not linearizable** (it has no linearizable read; a deposed leader would answer "
        "too), so the ratio is the price of linearizability plus the difference in "
        "implementation, not like for like.",
        "",
        "| in flight | ours-durable ops/s | ours-memory ops/s | pso-default ops/s (local) | "
        "pso-nobatch ops/s (local) | durable / pso-best | ours-durable p50 / p99 ms | "
        "ours-memory p50 / p99 ms | pso-best p50 / p99 ms (local) | counts ours (both) | "
        "counts pso (both) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for inflight in READ_INFLIGHT:
        p = _points(report, inflight, 16, "reads")
        tp = {c: p[c]["throughput"] if c in p else None for c in CONFIGS}
        best = _pso_best(p, inflight)
        ours = [p[c] for c in ("ours-durable", "ours-memory") if c in p]
        pso = [p[c] for c in ("pso-default", "pso-nobatch") if c in p]
        lines.append(
            f"| {inflight}{' (sequential)' if inflight == 1 else ''} "
            f"| {_fmt(tp['ours-durable'], 0)} | {_fmt(tp['ours-memory'], 0)} "
            f"| {_fmt(tp['pso-default'], 0)} | {_fmt(tp['pso-nobatch'], 0)} "
            f"| {_ratio_cell(report, p, best, inflight, 16, 'reads')} "
            f"| {_latency(p.get('ours-durable'))} | {_latency(p.get('ours-memory'))} "
            f"| {_latency(p[best] if best else None)} ({best or 'n/a'}) "
            f"| {_counts(ours)} | {_counts(pso)} |"
        )
    return lines


def _render_leader_loss(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    measured = [
        c for c in CONFIGS if runs.get(c, {}).get("failover") or runs.get(c, {}).get("graceful")
    ]
    if not measured:
        return []
    lines = [
        "",
        "## Leader loss (8 writers writing continuously; time from the signal to the first "
        "acknowledged write sent after it)",
        "",
        "| config | SIGKILL unavailable ms (median; runs) | counts | SIGTERM (graceful) ms "
        "(median; runs) | counts |",
        "|---|---|---|---|---|",
    ]
    for config in measured:
        kill = [x for x in runs[config]["failover"] if x]
        term = [x for x in runs[config]["graceful"] if x]
        km, kt = _median_unavailable(kill)
        tm, tt = _median_unavailable(term)
        lines.append(
            f"| {config} | {_fmt(km, 0)} ({kt}) | {_counts(kill)} | {_fmt(tm, 0)} ({tt}) "
            f"| {_counts(term)} |"
        )
    return lines


def _memory_result(report: dict[str, Any], config: str) -> dict[str, Any] | None:
    """A config's (last) memory run, if it has samples."""
    found = [m for m in report["runs"].get(config, {}).get("memory", []) if m and m.get("samples")]
    return found[-1] if found else None


def _memory_nodes(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per node, in MiB: RSS at the start (after the warm-up), the middle and the end, the
    largest sample, the peak (VmHWM at the end), growth per half, data dir size at the end."""
    samples = result["samples"]
    first, last = samples[0], samples[-1]
    middle = min(samples, key=lambda s: abs(s["acked"] - last["acked"] / 2))
    mib = lambda kb: None if kb is None else kb / 1024  # noqa: E731
    nodes = []
    for i in range(len(first["rss_kb"])):
        start, mid, end = (mib(s["rss_kb"][i]) for s in (first, middle, last))
        sampled = [s["rss_kb"][i] for s in samples if s["rss_kb"][i] is not None]
        disk = (last.get("disk_bytes") or [None] * (i + 1))[i]
        nodes.append(
            {
                "role": "leader" if i == result.get("leader") else "follower",
                "start": start,
                "middle": mid,
                "end": end,
                "max": mib(max(sampled)) if sampled else None,
                "peak": mib(last["hwm_kb"][i]),
                "growth_first": None if start is None or mid is None else mid - start,
                "growth_second": None if mid is None or end is None else end - mid,
                "disk": None if disk is None else disk / (1 << 20),
            }
        )
    return nodes


def _render_memory(report: dict[str, Any]) -> list[str]:
    found = {c: _memory_result(report, c) for c in CONFIGS}
    results = {c: r for c, r in found.items() if r is not None}
    if not results:
        return []
    any_result = next(iter(results.values()))
    leaders = {c: _memory_nodes(r)[r.get("leader", 0)] for c, r in results.items()}
    pso_end = leaders["pso-default"]["end"] if "pso-default" in leaders else None
    # Reports from before the threshold was recorded ran with 8,192, the default then.
    snapshot_every = f"{report.get('snapshot_threshold') or 8192:,}"
    lines = [
        "",
        f"## Memory ({any_result['commands']:,} writes, {any_result['inflight']} in flight, "
        f"over {any_result['keys']:,} keys of {any_result['size']} B values)",
        "",
        f"After a warm-up of {any_result['warmup']:,} writes (the start), each node's RSS "
        "(VmRSS) is sampled every "
        f"{any_result['samples'][1]['acked'] if len(any_result['samples']) > 1 else 0:,} "
        "acknowledged writes; middle = the sample nearest half of them. Peak = VmHWM at the "
        "end (the kernel updates it lazily: it can be a little below the largest sample). "
        f"Snapshots are on (tinyraft_trio: every {snapshot_every} commands; PySyncObj: its "
        "log compaction defaults). MiB throughout.",
        "",
        "| config | writes acked | ops/s | counts | leader RSS start / middle / end | "
        "leader growth 1st / 2nd half | leader end RSS / pso-default |",
        "|---|---|---|---|---|---|---|",
    ]
    for config, result in results.items():
        leader = leaders[config]
        lines.append(
            f"| {config} | {result['acked']:,} | {_fmt(result.get('throughput'), 0)} "
            f"| {_counts([result])} "
            f"| {_fmt(leader['start'])} / {_fmt(leader['middle'])} / {_fmt(leader['end'])} "
            f"| {_fmt(leader['growth_first'])} / {_fmt(leader['growth_second'])} "
            f"| {_ratio(leader['end'], pso_end) if config != 'pso-default' else '-'} |"
        )
    lines += [
        "",
        "| config | node | RSS start / middle / end | max sampled / peak | "
        "growth 1st / 2nd half | data dir at end |",
        "|---|---|---|---|---|---|",
    ]
    for config, result in results.items():
        for i, node in enumerate(_memory_nodes(result)):
            lines.append(
                f"| {config} | {i + 1} ({node['role']}) "
                f"| {_fmt(node['start'])} / {_fmt(node['middle'])} / {_fmt(node['end'])} "
                f"| {_fmt(node['max'])} / {_fmt(node['peak'])} "
                f"| {_fmt(node['growth_first'])} / {_fmt(node['growth_second'])} "
                f"| {_fmt(node['disk'], 2) if node['disk'] is not None else '-'} |"
            )
    return lines


def _render_errors(report: dict[str, Any]) -> list[str]:
    errors = []
    for config in CONFIGS:
        for kind in ("load", "failover", "graceful", "memory"):
            for item in report["runs"].get(config, {}).get(kind, []):
                if isinstance(item, dict) and "error" in item:
                    errors.append(f"- {config} {kind}: {item['error'][:300]!r}")
                for point in item.get("reads", []) if isinstance(item, dict) else []:
                    if "error" in point:
                        errors.append(f"- {config} reads: {point['error'][:300]!r}")
    return ["", "## Errors", "", *errors] if errors else []


if __name__ == "__main__":
    sys.exit(main())
