"""The ``tinyraft-trio`` command.

Each subcommand registers itself in ``SUBCOMMANDS``: a function that adds its parser to the
subparsers and returns the handler that runs it. A handler returns the exit status; it may
raise ``RaftError`` or ``OSError``, which ``main`` turns into one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from ._cli_client import add_kv, add_members
from ._cli_node import add_node, add_status
from ._demo import add_demo
from ._exceptions import RaftError
from ._storage._check import CheckReport, RepairReport, check_data_dir, repair_data_dir

Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2
PROG = "tinyraft-trio"


# ------------------------------------------------------------------------------ check


def _add_check(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> Handler:
    parser = subparsers.add_parser(
        "check",
        help="verify a node's data directory (the node must be stopped)",
        description=(
            "Verify every checksum of a stopped node's data directory and report what is "
            "damaged. Exit status: 0 healthy, 1 problems remain, 2 the check could not run."
        ),
    )
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="the data directory")
    parser.add_argument(
        "--repair",
        action="store_true",
        help=(
            "cut a damaged log after its last intact record (entries after it are lost); "
            "a damaged hardstate or snapshot is reported, never deleted"
        ),
    )
    return _run_check


def _run_check(args: argparse.Namespace) -> int:
    if args.repair:
        repair = repair_data_dir(args.data_dir)
        _print_repair(repair)
        return EXIT_OK if repair.ok else EXIT_PROBLEMS
    report = check_data_dir(args.data_dir)
    _print_check(report, heading=True)
    if not report.ok:
        print(f"  to cut a damaged log: {PROG} check --data-dir {report.data_dir} --repair")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _print_check(report: CheckReport, *, heading: bool) -> None:
    if heading:
        if report.ok:
            print(f"{report.data_dir}: healthy")
        else:
            count = len(report.problems)
            print(f"{report.data_dir}: {count} problem{'s' if count != 1 else ''}")
    if report.current_term is not None:
        vote = "no vote" if report.voted_for is None else f"voted for {report.voted_for!r}"
        print(f"  hard state: term {report.current_term}, {vote}")
    if report.snapshot_index is not None:
        print(
            f"  snapshot: up to index {report.snapshot_index} (term {report.snapshot_term}), "
            f"{report.snapshot_bytes} bytes"
        )
    else:
        print("  snapshot: none")
    if report.entries:
        files = f"{report.segments} segment file{'s' if report.segments != 1 else ''}"
        print(
            f"  log: {report.entries} entries, indexes {report.first_index}.."
            f"{report.last_index}, in {files}"
        )
    else:
        print("  log: empty")
    for problem in report.problems:
        print(f"  problem: {problem}")
    for note in report.notes:
        print(f"  note: {note}")


def _print_repair(repair: RepairReport) -> None:
    if repair.refused is not None:
        print(f"{repair.data_dir}: repair refused, nothing was changed")
        _print_check(repair.check, heading=False)
        print(f"  {repair.refused}")
        return
    if not repair.actions:
        state = "healthy" if repair.ok else "problems remain"
        print(f"{repair.data_dir}: nothing to repair ({state})")
        _print_check(repair.check, heading=False)
        return
    print(f"{repair.data_dir}: repaired" if repair.ok else f"{repair.data_dir}: problems remain")
    for action in repair.actions:
        print(f"  {action}")
    end = repair.check.last_index
    print(
        f"  entries lost: {repair.entries_lost}; the log now ends at "
        + ("no entry" if end is None else f"index {end}")
    )
    if repair.entries_lost:
        print(
            "  warning: this node may have acknowledged some of them; the cluster still has "
            "them if a majority of nodes kept their logs"
        )
    _print_check(repair.check, heading=False)


# ------------------------------------------------------------------------------ main

SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], Handler]] = {
    "node": add_node,
    "status": add_status,
    "check": _add_check,
    "kv": add_kv,
    "members": add_members,
    "demo": add_demo,
}


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Tools for tinyraft_trio nodes and their data."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {name: add(subparsers) for name, add in SUBCOMMANDS.items()}
    return parser, handlers


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        if error.filename is not None:
            return f"{error.filename}: {error.strerror}"
        return error.strerror
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser, handlers = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required", file=sys.stderr)
        return EXIT_ERROR
    try:
        return handlers[args.command](args)
    except BaseException as raised:
        # Trio nurseries wrap errors in exception groups: look at what is inside.
        leaves = list(_leaves(raised))
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 130
        if len(leaves) == 1 and isinstance(leaves[0], RaftError | OSError | ValueError):
            print(f"{PROG} {args.command}: error: {_describe(leaves[0])}", file=sys.stderr)
            return EXIT_ERROR
        raise


def _leaves(error: BaseException) -> Iterator[BaseException]:
    nested = getattr(error, "exceptions", None)
    if isinstance(nested, tuple):
        for inner in nested:
            yield from _leaves(inner)
    else:
        yield error


def main_entry() -> NoReturn:
    """The console script's entry point."""
    sys.exit(main())
