"""Outbox: a frame for an idle stream is written by whoever queues it; bursts are joined."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from support import record_os_writes

from tinyraft_trio._outbox import UNJOINED_FRAME_BYTES, Outbox


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive_some(size - len(data))
    return data


async def idle_outbox(nursery: trio.Nursery) -> tuple[Outbox, trio.SocketStream]:
    """An outbox whose pump waits on one end of a socket pair; and the other end."""
    left, right = trio.socket.socketpair()
    outbox = Outbox()
    nursery.start_soon(outbox.pump, trio.SocketStream(left))
    await trio.testing.wait_all_tasks_blocked()
    return outbox, trio.SocketStream(right)


async def test_a_frame_for_an_idle_stream_is_written_before_any_task_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            outbox, receiver = await idle_outbox(nursery)
            writes = record_os_writes(monkeypatch)
            outbox.put(b"lone")
            assert writes == [b"lone"] and not outbox.frames
            # Right after it, a burst is queued for the pump and goes out in one write.
            for n in range(5):
                outbox.put(b"burst%d" % n)
            assert writes == [b"lone"] and len(outbox.frames) == 5
            expected = b"lone" + b"".join(b"burst%d" % n for n in range(5))
            assert await read_exactly(receiver, len(expected)) == expected
            nursery.cancel_scope.cancel()


async def test_the_rest_of_a_frame_written_in_part_goes_first_and_cannot_be_discarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            outbox, receiver = await idle_outbox(nursery)
            record_os_writes(monkeypatch, take=3)
            frame = b"0123456789"
            outbox.put(frame)
            monkeypatch.undo()
            outbox.discard(frame)  # too late: three bytes are on the wire
            outbox.put(b"next")
            assert await read_exactly(receiver, 14) == b"0123456789next"
            nursery.cancel_scope.cancel()


class RecordingStream(trio.abc.SendStream):
    """Records each ``send_all`` as one write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class CountedLaterFrame:
    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.encoded = 0

    def encode(self) -> bytes:
        self.encoded += 1
        return self.frame


async def test_large_frames_are_written_alone_and_small_ones_joined() -> None:
    """Joining would copy a large frame into a fresh buffer of its size: each frame of
    UNJOINED_FRAME_BYTES or more goes in a write of its own, in order, encoded once."""
    large = [bytes([n]) * UNJOINED_FRAME_BYTES for n in range(3)]
    later = CountedLaterFrame(large[0])
    outbox = Outbox()
    for frame in (b"a", b"b", later, b"c", large[1], large[2], b"d", b"e"):
        if isinstance(frame, bytes):
            outbox.put(frame)
        else:
            outbox.put_later(frame)
    stream = RecordingStream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.pump, stream)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert stream.writes == [b"ab", large[0], b"c", large[1], large[2], b"de"]
    assert later.encoded == 1
