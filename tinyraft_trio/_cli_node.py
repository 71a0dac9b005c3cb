"""``tinyraft-trio node`` and ``tinyraft-trio status``: run a node, and look at a cluster."""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from ._config import RaftConfig, parse_address, parse_peers
from ._exceptions import RaftError
from ._open import open_raft_node
from ._rpc import TransportError, open_rpc_client
from ._state_machine import StateMachine

Handler = Callable[[argparse.Namespace], int]
DEFAULT_APP = "tinyraft_trio.examples.kv:KeyValueStore"

NODE_GC_THRESHOLDS = (20_000, 20, 10)
"""``gc.set_threshold`` of a node process (Python's default: (700, 10, 10)). A busy node
allocates a few container objects per command, nearly all freed at once by reference
counting; with the default, the collector still runs every few hundred commands and
walks the whole log it holds in memory every few thousand (about 0.5-1 us of CPU per
command per node, measured with ``gc.callbacks`` at 8,000 writes in flight)."""


class CommandError(RaftError):
    """A command-line problem, reported as one line."""


# ------------------------------------------------------------------------------ node


def add_node(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> Handler:
    parser = subparsers.add_parser(
        "node",
        help="run one node (stops cleanly on SIGTERM or Ctrl-C)",
        description=(
            "Run one node of a cluster. Every flag can also come from the environment "
            "(NODE_ID, NODE_LISTEN_ADDR, NODE_ADVERTISE_ADDR, RAFT_PEERS, RAFT_BOOTSTRAP, "
            "RAFT_JOIN, RAFT_VOTER, RAFT_DATA_DIR, RAFT_TIMEOUT_MS); flags win."
        ),
    )
    parser.add_argument("--id", help="this node's id (default: generated, kept in the data dir)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on for peers")
    parser.add_argument("--advertise", metavar="HOST:PORT", help="address peers use for it")
    parser.add_argument(
        "--peer", action="append", metavar="ID=HOST:PORT", help="an initial member (repeat)"
    )
    parser.add_argument("--bootstrap", action="store_true", default=None, help="form a cluster")
    parser.add_argument("--join", action="append", metavar="HOST:PORT", help="a member to ask")
    parser.add_argument(
        "--non-voter", dest="voter", action="store_false", default=None, help="join as learner"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="durable storage (else in memory)")
    parser.add_argument("--cluster-id", help="a name shared by the cluster's nodes")
    parser.add_argument("--timeout-ms", type=int, help="election timeout in milliseconds")
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        metavar="MODULE:ATTR",
        help=f"the state machine factory (default: {DEFAULT_APP})",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help=(
            "also serve the key-value HTTP API here: PUT/GET/DELETE /kv/KEY, "
            "POST /kv/KEY/cas, GET /status; keys up to 1 KiB, values up to 64 KiB "
            "(needs tinyraft-trio[http])"
        ),
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return _run_node


def config_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> RaftConfig:
    """The node's config: the environment's variables, overridden by the flags given."""
    env = dict(os.environ if environ is None else environ)
    if args.timeout_ms is not None:
        env["RAFT_TIMEOUT_MS"] = str(args.timeout_ms)
    overrides: dict[str, Any] = {}
    if args.id is not None:
        overrides["node_id"] = args.id
    if args.listen is not None:
        overrides["listen"] = args.listen
    if args.advertise is not None:
        overrides["advertise"] = args.advertise
    if args.peer:
        overrides["peers"] = parse_peers(",".join(args.peer), field_name="--peer")
    if args.bootstrap is not None:
        overrides["bootstrap"] = args.bootstrap
    if args.join:
        for address in args.join:
            parse_address(address, field_name="--join")
        overrides["join"] = tuple(args.join)
    if args.voter is not None:
        overrides["voter"] = args.voter
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.cluster_id is not None:
        overrides["cluster_id"] = args.cluster_id
    return RaftConfig.from_env(env, **overrides)


def load_app(spec: str) -> Callable[[], StateMachine]:
    """Import ``MODULE:ATTR`` (like uvicorn's app argument): a state machine factory."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"--app: expected MODULE:ATTR, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"--app: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CommandError(f"--app: {module_name!r} has no callable {attribute!r}")
    return factory  # type: ignore[no-any-return]


def _run_node(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    http: str | None = getattr(args, "http", None)
    if http is not None:
        try:
            parse_address(http, field_name="--http")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        from ._http import hypercorn_available

        if not hypercorn_available():
            raise CommandError(
                "--http needs the HTTP extra: install it with pip install 'tinyraft-trio[http]'"
            )
    factory = load_app(args.app)
    tune_gc()
    trio.run(_serve_node, config, factory, http)
    return 0


def tune_gc() -> None:
    """Collect less often in a node process (``NODE_GC_THRESHOLDS``), and never again walk
    what was loaded at startup (``gc.freeze``).

    Only the node command does this: a library must not change its host's collector, so
    ``open_raft_node`` leaves it alone (the README's command-line section says so).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*NODE_GC_THRESHOLDS)


async def _serve_node(
    config: RaftConfig, factory: Callable[[], StateMachine], http: str | None = None
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_raft_node(config, factory()) as node, trio.open_nursery() as nursery:
            http_note = ""
            http_stop = trio.Event()
            if http is not None:
                from ._http import serve_http

                serve = functools.partial(serve_http, shutdown_trigger=http_stop.wait)
                urls = await nursery.start(serve, node, http)
                http_note = f", HTTP API on {', '.join(urls)}"
            print(
                f"node {node.id} serving on {config.listen}"
                f" ({'data dir ' + config.data_dir if config.data_dir else 'in memory'})"
                f"{http_note}",
                flush=True,
            )
            async for received in signals:
                logging.getLogger("tinyraft_trio.cli").info(
                    "%s received: shutting down", signal.Signals(received).name
                )
                break
            # The HTTP API answers while the node hands leadership over and drains (a write
            # gets 503 naming the leader), then answers what it took and stops.
            await node.wind_down()
            http_stop.set()


# ------------------------------------------------------------------------------ status


def add_status(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> Handler:
    parser = subparsers.add_parser("status", help="show each node's role, term and progress")
    parser.add_argument(
        "--cluster", required=True, metavar="HOST:PORT,...", help="the nodes' addresses"
    )
    parser.add_argument("--cluster-id", default="tinyraft", help="the cluster's id")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per node")
    return _run_status


def _run_status(args: argparse.Namespace) -> int:
    addresses = [a.strip() for a in args.cluster.split(",") if a.strip()]
    if not addresses:
        raise CommandError("--cluster: no address given")
    for address in addresses:
        parse_address(address, field_name="--cluster")
    rows = trio.run(_fetch_statuses, addresses, args.cluster_id, args.timeout)
    print(f"{'address':<22} {'id':<12} {'role':<10} {'term':>5} {'commit':>8} {'applied':>8}")
    reachable = 0
    for address, status in rows:
        if isinstance(status, str):
            print(f"{address:<22} unreachable: {status}")
            continue
        reachable += 1
        print(
            f"{address:<22} {status['id']:<12} {status['role']:<10} {status['term']:>5} "
            f"{status['commit_index']:>8} {status['last_applied']:>8}"
        )
    if not reachable:
        raise CommandError("no node of the cluster answered")
    return 0


async def _fetch_statuses(
    addresses: list[str], cluster_id: str, seconds_per_node: float
) -> list[tuple[str, dict[str, Any] | str]]:
    results: list[tuple[str, dict[str, Any] | str]] = []
    async with open_rpc_client(client_id="tinyraft-trio-status", cluster_id=cluster_id) as client:
        for address in addresses:
            try:
                response = await client.request(address, "status", b"", timeout=seconds_per_node)
            except TransportError as exc:
                results.append((address, exc.reason))
                continue
            if not response.ok:
                results.append((address, response.body.decode(errors="replace")))
                continue
            results.append((address, msgpack.unpackb(response.body)))
    return results
