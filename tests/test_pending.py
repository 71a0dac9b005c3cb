"""Parked calls and their deadline timer (the RPC client's requests wait this way)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tinyraft_trio._pending import DeadlineTimer, PendingCall


class RecordingCall(PendingCall):
    __slots__ = ("abandoned",)

    def __init__(self, deadline: float) -> None:
        super().__init__(deadline)
        self.abandoned = 0

    def abandon(self) -> None:
        self.abandoned += 1


async def wait_and_record(call: PendingCall, woke: list[tuple[float, PendingCall]]) -> None:
    await call.wait()
    woke.append((trio.current_time(), call))


async def test_finish_wakes_the_caller_with_the_answer_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call = RecordingCall(deadline=trio.current_time() + 10)
    woke: list[tuple[float, PendingCall]] = []
    async with trio.open_nursery() as nursery:
        DeadlineTimer().watch(call, nursery)
        nursery.start_soon(wait_and_record, call, woke)
        await trio.sleep(1)
        call.finish("answer")
        call.finish("second answer")
        call.expire()
        await trio.testing.wait_all_tasks_blocked()
        assert [c for _, c in woke] == [call]
        assert call.response == "answer" and not call.timed_out and call.abandoned == 0
        nursery.cancel_scope.cancel()


async def test_callers_are_woken_again_and_again_by_the_same_means() -> None:
    # Every wake-up shares one outcome (see _pending._Resumed): a one-shot outcome shared
    # so would fail the second caller it woke.
    answers: list[object] = []

    async def ask(call: PendingCall) -> None:
        await call.wait()
        answers.append(call.response)

    with trio.fail_after(5):
        for round_ in range(3):
            calls = [RecordingCall(deadline=trio.current_time() + 10) for _ in range(5)]
            async with trio.open_nursery() as nursery:
                for call in calls:
                    nursery.start_soon(ask, call)
                await trio.testing.wait_all_tasks_blocked()
                for position, call in enumerate(calls):
                    call.finish((round_, position))
    assert sorted(answers) == [(r, p) for r in range(3) for p in range(5)]  # type: ignore[type-var]


async def test_finish_each_answers_every_call_still_waiting_and_only_those() -> None:
    calls = [RecordingCall(deadline=trio.current_time() + 10) for _ in range(3)]
    woke: list[tuple[float, PendingCall]] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(wait_and_record, call, woke)
            await trio.testing.wait_all_tasks_blocked()
            calls[1].finish(failure="gave up")
            PendingCall.finish_each(calls, ["a", "b", "c"])
    assert {id(c) for _, c in woke} == {id(c) for c in calls}
    assert [c.response for c in calls] == ["a", None, "c"]
    assert calls[1].failure == "gave up"


async def test_a_call_finished_before_it_waits_returns_at_once() -> None:
    call = RecordingCall(deadline=trio.current_time() + 10)
    call.finish(failure="connection lost")
    with trio.fail_after(1):
        await call.wait()
    assert call.failure == "connection lost" and call.response is None


async def test_a_call_expires_at_its_deadline_and_is_abandoned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    call = RecordingCall(deadline=start + 3)
    woke: list[tuple[float, PendingCall]] = []
    async with trio.open_nursery() as nursery:
        DeadlineTimer().watch(call, nursery)
        nursery.start_soon(wait_and_record, call, woke)
        await trio.sleep(5)
        assert woke == [(start + 3, call)]
        assert call.timed_out and call.abandoned == 1
        call.finish("too late")
        assert call.response is None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("first", "second"), [(100, 1), (1, 100)])
async def test_a_deadline_watched_while_the_timer_sleeps_keeps_every_deadline(
    first: float, second: float, autojump_clock: trio.testing.MockClock
) -> None:
    """Watched while the timer sleeps until the first call's deadline: a shorter deadline
    wakes it earlier, and a longer one does not delay the first call's."""
    start = trio.current_time()
    timer = DeadlineTimer()
    one, two = RecordingCall(deadline=start + first), RecordingCall(deadline=start + second)
    woke: list[tuple[float, PendingCall]] = []
    async with trio.open_nursery() as nursery:
        timer.watch(one, nursery)
        nursery.start_soon(wait_and_record, one, woke)
        await trio.sleep(0.5)  # the timer now sleeps until the first call's deadline
        timer.watch(two, nursery)
        nursery.start_soon(wait_and_record, two, woke)
        await trio.sleep(200)
        assert woke == sorted([(start + first, one), (start + second, two)], key=lambda w: w[0])
        nursery.cancel_scope.cancel()


async def test_a_cancelled_caller_abandons_its_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call = RecordingCall(deadline=trio.current_time() + 10)
    async with trio.open_nursery() as nursery:
        DeadlineTimer().watch(call, nursery)
        with trio.move_on_after(1) as scope:
            await call.wait()
        assert scope.cancelled_caught
        assert call.abandoned == 1 and not call.timed_out
        # A late answer or the deadline does nothing more (and wakes no one).
        call.finish("late")
        await trio.sleep(20)
        assert call.abandoned == 1 and call.response is None
        nursery.cancel_scope.cancel()


async def test_finished_calls_do_not_pile_up_and_live_ones_still_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    timer = DeadlineTimer()
    woke: list[tuple[float, PendingCall]] = []
    async with trio.open_nursery() as nursery:
        forgotten = RecordingCall(deadline=start + 50)
        timer.watch(forgotten, nursery)
        nursery.start_soon(wait_and_record, forgotten, woke)
        for n in range(20_000):
            call = RecordingCall(deadline=start + 60 + n)
            timer.watch(call, nursery)
            call.finish("done")
        assert len(timer._queue) + len(timer._heap) < 5_000
        await trio.sleep(100)
        assert woke == [(start + 50, forgotten)] and forgotten.timed_out
        nursery.cancel_scope.cancel()


async def test_calls_expire_at_their_deadlines_in_or_out_of_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Deadlines that come in order and out of order (a shorter timeout after a longer one)
    all expire on time, and a finished call among them never does."""
    start = trio.current_time()
    timer = DeadlineTimer()
    offsets = [5, 5, 7, 3, 9, 1, 8, 8, 2, 10, 6, 4]
    calls = [RecordingCall(deadline=start + offset) for offset in offsets]
    woke: list[tuple[float, PendingCall]] = []
    async with trio.open_nursery() as nursery:
        for call in calls:
            timer.watch(call, nursery)
            nursery.start_soon(wait_and_record, call, woke)
        await trio.testing.wait_all_tasks_blocked()
        calls[4].finish("answered")  # deadline 9, in the middle of the queue
        await trio.sleep(20)
        woke_at = {id(call): when for when, call in woke}
        assert len(woke_at) == len(calls)
        for index, (offset, call) in enumerate(zip(offsets, calls, strict=True)):
            assert woke_at[id(call)] == (start if index == 4 else start + offset)
        assert [call.timed_out for call in calls] == [index != 4 for index in range(12)]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("deadline_passed", [False, True])
async def test_an_answer_and_a_deadline_at_once_wake_the_caller_once(
    autojump_clock: trio.testing.MockClock, deadline_passed: bool
) -> None:
    start = trio.current_time()
    call = RecordingCall(deadline=start + 1)
    woke: list[tuple[float, PendingCall]] = []
    async with trio.open_nursery() as nursery:
        DeadlineTimer().watch(call, nursery)
        nursery.start_soon(wait_and_record, call, woke)
        await trio.sleep(1 if deadline_passed else 0.5)
        call.finish("answer")
        await trio.sleep(2)
        assert [c for _, c in woke] == [call]
        assert (call.response is None) == call.timed_out
        nursery.cancel_scope.cancel()


async def test_an_interrupt_before_the_caller_parks_leaves_no_one_to_wake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KeyboardInterrupt can land between registering a call and parking: a late answer
    must then not reschedule the task, which is no longer waiting (trio would crash)."""

    async def interrupted(abort: object) -> object:
        raise KeyboardInterrupt

    call = RecordingCall(deadline=trio.current_time() + 10)
    monkeypatch.setattr(trio.lowlevel, "wait_task_rescheduled", interrupted)
    with pytest.raises(KeyboardInterrupt):
        await call.wait()
    monkeypatch.undo()
    assert call.finished and call.abandoned == 1
    call.finish("late")  # nothing to wake
    call.expire()
    await trio.lowlevel.checkpoint()
    assert call.response is None and call.abandoned == 1
