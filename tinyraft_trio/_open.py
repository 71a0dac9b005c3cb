"""open_raft_node: run a Raft node inside the caller's Trio program."""

from __future__ import annotations

import os
import random
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ._config import RaftConfig
from ._exceptions import RaftError
from ._node import RaftNode
from ._state_machine import StateMachine
from ._storage import FileStorage, MemoryStorage, Storage
from ._transport import TcpTransport, Transport

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


@asynccontextmanager
async def open_raft_node(
    config: RaftConfig,
    state_machine: StateMachine,
    *,
    storage: Storage | None = None,
    transport: Transport | None = None,
) -> AsyncIterator[RaftNode]:
    """Start a Raft node, yield it while it runs, and shut it down on exit.

    The node's tasks (listener, election timer, replicators, applier) run in a nursery
    owned by this context manager. Leaving the block first hands leadership to another voter
    if this node leads (so a rolling restart costs no election timeout), then drains: the
    requests it would forward to the leader (its clients' and its own callers') are answered
    with where the leader is instead, and it waits until those it took are answered and no
    request has come for a heartbeat interval, so its clients move on with every outcome
    known (``RaftNode.drain``). At most one election timeout is spent on both
    (``RaftNode.wind_down``, which the block may call earlier, so that something else using
    the node keeps answering meanwhile). Then it cancels the tasks and closes every
    connection. Callers still waiting in ``node.apply()``
    then get ``LeadershipLostError`` (the outcome is unknown), later calls
    ``NodeClosedError``. If the block is left by a cancellation from outside, the node's
    tasks are cancelled with it and it stops at once, without handing over (as after a
    crash, but nothing acknowledged is lost).

    Args:
        config: the node's configuration.
        state_machine: the user's deterministic state machine.
        storage: where the node persists its state: by default a FileStorage in
            ``config.data_dir`` if set (durable), else in memory.
        transport: how it reaches peers; msgpack over TCP on ``config.listen`` by default.
    """
    config = await _with_node_id(config)
    owned_storage: FileStorage | None = None
    if storage is None:
        if config.data_dir is not None:
            storage = owned_storage = FileStorage(
                config.data_dir, segment_bytes=config.segment_bytes
            )
        else:
            storage = MemoryStorage()
    if transport is None:
        transport = TcpTransport(
            listen=config.listen,
            cluster_id=config.cluster_id,
            max_frame_bytes=config.max_frame_bytes,
            rng=random.Random(config.seed),
        )
    node = RaftNode(config, state_machine, storage=storage, transport=transport)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                yield node
            finally:
                with trio.CancelScope(shield=True):
                    await node.wind_down()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own exception passes through the node's nursery on its way out; give it
        # back as raised rather than wrapped, so `except ValueError:` around the block works.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        if owned_storage is not None:
            with trio.move_on_after(5, shield=True):
                await owned_storage.close()


async def _with_node_id(config: RaftConfig) -> RaftConfig:
    """Give the config a node id: its own, the one kept in its data dir, or a new one."""
    if config.node_id is not None:
        return config
    if config.data_dir is None:
        return config.replace(node_id=f"node-{secrets.token_hex(4)}")
    data_dir = config.data_dir
    node_id = await trio.to_thread.run_sync(_load_or_create_node_id, data_dir)
    return config.replace(node_id=node_id)


def _load_or_create_node_id(data_dir: str) -> str:
    """Read ``DATA_DIR/node_id``, or write a new id there atomically on first start."""
    path = os.path.join(data_dir, "node_id")
    try:
        with open(path, encoding="utf-8") as file:
            node_id = file.read().strip()
    except FileNotFoundError:
        pass
    else:
        if not node_id:
            raise RaftError(f"{path}: empty node id file; write the node's id into it")
        return node_id
    os.makedirs(data_dir, exist_ok=True)
    node_id = f"node-{secrets.token_hex(4)}"
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(node_id + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return node_id
