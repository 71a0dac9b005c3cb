"""``tinyraft-trio kv`` and ``tinyraft-trio members``: a command-line client of a cluster.

``kv`` talks to a cluster running the example key-value store (the ``node`` command's default
app); ``members`` works with any app. Both find the leader themselves: any node's address will
do. Errors are ``RaftError``/``ValueError`` subclasses that ``cli.main`` prints as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ._cli_node import CommandError
from ._client import RaftClient, connect
from ._config import parse_address
from ._core._types import Role
from .examples.kv import cas_command, delete_command, get_query, put_command

Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")

EXIT_NOT_FOUND = 1


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster", required=True, metavar="HOST:PORT,...", help="some or all nodes' addresses"
    )
    parser.add_argument("--cluster-id", default="tinyraft", help="the cluster's id")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)"
    )


def _addresses(args: argparse.Namespace) -> list[str]:
    addresses = [a.strip() for a in args.cluster.split(",") if a.strip()]
    if not addresses:
        raise CommandError("--cluster: no address given")
    for address in addresses:
        try:
            parse_address(address, field_name="--cluster")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if not args.timeout > 0:
        raise CommandError(f"--timeout: must be > 0, got {args.timeout}")
    return addresses


def _with_client(args: argparse.Namespace, call: Callable[[RaftClient], Awaitable[T]]) -> T:
    addresses = _addresses(args)

    async def run() -> T:
        async with connect(addresses, cluster_id=args.cluster_id, timeout=args.timeout) as client:
            return await call(client)

    return trio.run(run)


# ------------------------------------------------------------------------------ kv


def add_kv(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> Handler:
    parser = subparsers.add_parser(
        "kv",
        help="read and write the example key-value store",
        description=(
            "Read and write a cluster running the example key-value store. "
            "get prints the value (exit 1 if the key is missing); cas prints swapped or "
            "not swapped."
        ),
    )
    actions = parser.add_subparsers(dest="kv_action", metavar="ACTION", required=True)
    get = actions.add_parser("get", help="print a key's value (linearizable unless --stale)")
    get.add_argument("key")
    get.add_argument("--stale", action="store_true", help="read any node's state as it is")
    _add_cluster_flags(get)
    put = actions.add_parser("put", help="set a key's value")
    put.add_argument("key")
    put.add_argument("value")
    _add_cluster_flags(put)
    delete = actions.add_parser("delete", help="remove a key")
    delete.add_argument("key")
    _add_cluster_flags(delete)
    cas = actions.add_parser("cas", help="set a key only if it has the expected value")
    cas.add_argument("key")
    cas.add_argument("expected", nargs="?", help="the value expected now")
    cas.add_argument("value", help="the new value")
    cas.add_argument("--absent", action="store_true", help="expect the key to be absent")
    _add_cluster_flags(cas)
    return _run_kv


def _run_kv(args: argparse.Namespace) -> int:
    action = args.kv_action
    if action == "get":
        value = _with_client(
            args, lambda client: client.query(get_query(args.key), stale=args.stale)
        )
        if value is None:
            print(f"tinyraft-trio kv get: not found: {args.key}", file=sys.stderr)
            return EXIT_NOT_FOUND
        print(value)
        return 0
    if action == "put":
        _with_client(args, lambda client: client.apply(put_command(args.key, args.value)))
        return 0
    if action == "delete":
        _with_client(args, lambda client: client.apply(delete_command(args.key)))
        return 0
    # cas
    if args.absent == (args.expected is not None):
        raise CommandError("cas: give either EXPECTED or --absent, not both or neither")
    expected: str | None = None if args.absent else args.expected
    swapped: Any = _with_client(
        args, lambda client: client.apply(cas_command(args.key, expected, args.value))
    )
    print("swapped" if swapped else "not swapped")
    return 0


# ------------------------------------------------------------------------------ members


def add_members(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> Handler:
    parser = subparsers.add_parser(
        "members", help="change the cluster's membership, or move its leadership"
    )
    actions = parser.add_subparsers(dest="members_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a node (started with --join or empty)")
    add.add_argument("id", help="the new member's id")
    add.add_argument("address", metavar="ADDRESS", help="its HOST:PORT")
    add.add_argument("--non-voter", action="store_true", help="add it as a learner")
    _add_cluster_flags(add)
    remove = actions.add_parser("remove", help="remove a member")
    remove.add_argument("id", help="the member's id")
    _add_cluster_flags(remove)
    transfer = actions.add_parser("transfer-leader", help="hand leadership to another voter")
    transfer.add_argument("id", nargs="?", help="the new leader (default: the best caught up)")
    _add_cluster_flags(transfer)
    return _run_members


def _run_members(args: argparse.Namespace) -> int:
    action = args.members_action
    if action == "add":
        try:
            parse_address(args.address, field_name="ADDRESS")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        _with_client(
            args,
            lambda client: client.add_member(args.id, args.address, voter=not args.non_voter),
        )
        print(f"added {args.id} at {args.address}" + (" (non-voter)" if args.non_voter else ""))
        return 0
    if action == "remove":
        _with_client(args, lambda client: client.remove_member(args.id))
        print(f"removed {args.id}")
        return 0
    leader, already = _with_client(args, lambda client: _transfer(client, args.id))
    print(f"leader: {leader}" + (" (already the leader)" if already else ""))
    return 0


async def _transfer(client: RaftClient, to: str | None) -> tuple[str, bool]:
    if to is not None:
        leaders = {s.leader_id for s in await client.status() if s.role is Role.LEADER}
        if leaders == {to}:
            return to, True
    return await client.transfer_leadership(to), False
