"""SocketReader: what SocketStream.receive_some does for our readers, in fewer steps."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
import trio.testing

from tinyraft_trio._receive import SocketReader


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def receive_some(stream: trio.SocketStream, max_bytes: int) -> bytes:
    """A first read of ``stream``: by a reader that has not read before."""
    return await SocketReader(stream).receive_some(max_bytes)


async def drained_reader(left: trio.SocketStream, right: trio.SocketStream) -> SocketReader:
    """A reader of ``right`` whose last read was short: it emptied the socket."""
    reader = SocketReader(right)
    await left.send_all(b"x")
    assert await reader.receive_some(100) == b"x"
    return reader


async def test_it_returns_what_arrived_and_empty_bytes_at_the_end() -> None:
    left, right = await _pair()
    await left.send_all(b"hello")
    assert await receive_some(right, 3) == b"hel"
    assert await receive_some(right, 100) == b"lo"
    await left.aclose()
    assert await receive_some(right, 100) == b""


async def test_it_waits_for_data_and_can_be_cancelled_while_waiting() -> None:
    left, right = await _pair()
    received: list[bytes] = []

    async def read() -> None:
        received.append(await receive_some(right, 100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert received == []
        await left.send_all(b"late")
    assert received == [b"late"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()  # waiting: nothing to read
        nursery.cancel_scope.cancel()
    assert received == [b"late"]


async def test_it_is_a_checkpoint_even_when_data_is_there() -> None:
    left, right = await _pair()
    await left.send_all(b"ready")
    with trio.CancelScope() as scope:
        scope.cancel()
        await receive_some(right, 100)  # cancelled before reading: the data stays
    assert scope.cancelled_caught
    assert await receive_some(right, 100) == b"ready"

    await left.send_all(b"again")
    steps = _StepsOf(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        assert await receive_some(right, 100) == b"again"
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.count == 1  # it read at once, and still yielded to the scheduler once


async def test_a_drained_read_waits_for_data_before_it_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a short read the socket was empty: the next read waits until data is there
    instead of first trying a read that fails. It reads once either way, and it can be
    cancelled while waiting."""
    left, right = await _pair()
    reads: list[int] = []
    real_read = os.read

    def counted_read(fd: int, size: int) -> bytes:
        reads.append(fd)
        return real_read(fd, size)

    received: list[bytes] = []

    async def read(reader: SocketReader) -> None:
        received.append(await reader.receive_some(100))

    for drained, reads_made in ((False, 2), (True, 1)):
        reader = await drained_reader(left, right) if drained else SocketReader(right)
        monkeypatch.setattr(os, "read", counted_read)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, reader)
            await trio.testing.wait_all_tasks_blocked()
            await left.send_all(b"late")
        monkeypatch.undo()
        assert received.pop() == b"late"
        assert len(reads) == reads_made  # the undrained read tried first, and failed
        reads.clear()

    reader = await drained_reader(left, right)
    monkeypatch.setattr(os, "read", counted_read)
    await left.send_all(b"there")
    assert await reader.receive_some(100) == b"there"
    assert len(reads) == 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, reader)  # drained again: "there" was short
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert received == [] and len(reads) == 1


async def test_a_full_read_leaves_the_next_one_to_try_reading_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read that filled its buffer may have left more behind: the next one reads before
    it waits (here the socket was in fact empty, so that read fails and it waits)."""
    left, right = await _pair()
    reader = SocketReader(right)
    await left.send_all(b"hel")
    assert await reader.receive_some(3) == b"hel"
    reads: list[int] = []
    real_read = os.read

    def counted_read(fd: int, size: int) -> bytes:
        reads.append(fd)
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", counted_read)
    received: list[bytes] = []

    async def read() -> None:
        received.append(await reader.receive_some(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await left.send_all(b"lo")
    assert received == [b"lo"] and len(reads) == 2


class _StepsOf(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_a_reset_connection_raises_the_sockets_oserror() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    linger_zero = struct.pack("ii", 1, 0)  # close() then resets the connection
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
    await client.aclose()
    with pytest.raises(ConnectionResetError):
        await receive_some(server, 100)
    await server.aclose()
    await listeners[0].aclose()


@pytest.mark.parametrize("drained", [False, True])
async def test_a_stream_closed_before_the_read_raises_oserror(drained: bool) -> None:
    """What the readers handle as a lost connection, drained or not."""
    left, right = await _pair()
    reader = await drained_reader(left, right) if drained else SocketReader(right)
    await right.aclose()
    with pytest.raises(OSError):
        await reader.receive_some(100)
    await left.aclose()


async def test_a_stream_closed_while_waiting_raises_closed_resource_error() -> None:
    left, right = await _pair()

    async def close_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        await right.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await receive_some(right, 100)
    await left.aclose()
