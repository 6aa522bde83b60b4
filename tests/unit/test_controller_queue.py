"""The operator's work queue: no key queued twice, none handled twice at once, none forgotten, earliest timer,
and every retry decided by the queue from the result a reconcile returns (as controller-runtime's).

pytest-asyncio is not a dependency: each test drives its own event loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime, timedelta

import pytest

from kubestep.controller.queue import RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS, Backoff, Result, WorkQueue

#: Long enough for a few loop turns; no test waits for anything longer than a fraction of a second.
TICK = 0.01


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``condition`` holds (fail after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let everything runnable now run."""
    for _ in range(20):
        await asyncio.sleep(0)


class Recorder:
    """A handler recording each call; calls of keys in ``blocking`` wait until released."""

    def __init__(
        self,
        blocking: set[Hashable] | None = None,
        failing: set[Hashable] | None = None,
        results: dict[Hashable, list[Result]] | None = None,
    ) -> None:
        self.calls: list[Hashable] = []
        self.running: set[Hashable] = set()
        self.overlaps: list[Hashable] = []
        self.max_parallel = 0
        self.blocking = blocking or set()
        self.failing = failing or set()
        self.gate = asyncio.Event()
        self.results = results or {}
        """What each pass of a key returns, in order (then done)."""

    async def __call__(self, key: Hashable) -> Result:
        if key in self.running:
            self.overlaps.append(key)
        self.running.add(key)
        self.max_parallel = max(self.max_parallel, len(self.running))
        self.calls.append(key)
        try:
            if key in self.blocking:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if key in self.failing:
                raise RuntimeError(f"bug while reconciling {key}")
            planned = self.results.get(key)
            return planned.pop(0) if planned else Result.done()
        finally:
            self.running.discard(key)


def run_with_workers(
    scenario: Callable[[WorkQueue, Recorder], Awaitable[None]],
    workers: int = 1,
    recorder: Callable[[], Recorder] = Recorder,
) -> Recorder:
    async def main() -> Recorder:
        queue = WorkQueue()
        rec = recorder()
        tasks = [asyncio.create_task(queue.work(rec)) for _ in range(workers)]
        try:
            await scenario(queue, rec)
        finally:
            queue.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return rec

    return asyncio.run(main())


def test_a_key_added_many_times_while_it_waits_is_handled_once() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        for _ in range(5):
            queue.add("run/a")
        queue.add("run/b")
        queue.add("run/a")
        await until(lambda: queue.idle)
        await settle()

    rec = run_with_workers(scenario)
    assert rec.calls == ["run/a", "run/b"]


def test_keys_are_handled_in_the_order_they_were_first_added() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        for key in ("c", "a", "b", "a", "c"):
            queue.add(key)
        await until(lambda: queue.idle)

    assert run_with_workers(scenario).calls == ["c", "a", "b"]


def test_a_key_added_while_it_is_handled_runs_once_more_afterwards() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add("run/a")
        await until(lambda: "run/a" in rec.running)
        # Three changes while the worker holds the key: one more pass covers them all.
        for _ in range(3):
            queue.add("run/a")
        await settle()
        assert rec.calls == ["run/a"]
        rec.blocking.clear()
        rec.gate.set()
        await until(lambda: queue.idle and len(rec.calls) >= 2)
        await settle()

    rec = run_with_workers(scenario, workers=3, recorder=lambda: Recorder(blocking={"run/a"}))
    assert rec.calls == ["run/a", "run/a"]


def test_a_key_is_never_handled_by_two_workers_at_once() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add("run/a")
        await until(lambda: "run/a" in rec.running)
        queue.add("run/a")
        queue.add("run/b")
        await until(lambda: "run/b" in rec.calls)
        await settle()
        assert rec.calls.count("run/a") == 1  # the second pass waits for the first to end
        rec.gate.set()
        await until(lambda: queue.idle and rec.calls.count("run/a") == 2)
        await settle()

    rec = run_with_workers(scenario, workers=4, recorder=lambda: Recorder(blocking={"run/a"}))
    assert rec.overlaps == []
    assert sorted(map(str, rec.calls)) == ["run/a", "run/a", "run/b"]


def test_different_keys_are_handled_at_the_same_time_by_different_workers() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        for key in ("a", "b", "c"):
            queue.add(key)
        await until(lambda: len(rec.running) == 3)
        rec.gate.set()
        await until(lambda: queue.idle)

    rec = run_with_workers(scenario, workers=3, recorder=lambda: Recorder(blocking={"a", "b", "c"}))
    assert rec.max_parallel == 3
    assert sorted(map(str, rec.calls)) == ["a", "b", "c"]


def test_idle_means_nothing_queued_and_nothing_being_handled() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        assert queue.idle
        queue.add("a")
        assert not queue.idle
        await until(lambda: "a" in rec.running)
        assert not queue.idle
        rec.gate.set()
        await until(lambda: queue.idle)
        assert rec.calls == ["a"]

    run_with_workers(scenario, recorder=lambda: Recorder(blocking={"a"}))


def test_a_failing_handler_keeps_the_worker_alive_and_schedules_a_retry() -> None:
    retries: list[tuple[Hashable, float]] = []

    class Recording(WorkQueue):
        def add_after(self, key: Hashable, seconds: float) -> None:
            retries.append((key, seconds))
            super().add_after(key, seconds)

    async def main() -> list[Hashable]:
        queue = Recording()
        rec = Recorder(failing={"bad"})
        task = asyncio.create_task(queue.work(rec))
        queue.add("bad")
        queue.add("good")
        await until(lambda: queue.idle and "good" in rec.calls)
        await settle()
        assert not task.done()  # the worker survived the exception
        queue.add("later")
        await until(lambda: "later" in rec.calls)
        queue.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return rec.calls

    calls = asyncio.run(main())
    assert calls[:2] == ["bad", "good"]
    assert retries[0] == ("bad", RETRY_INITIAL_SECONDS)  # retried with the key's backoff, like any failure


def test_add_at_handles_the_key_at_the_time() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add_at("run/a", datetime.now(UTC) + timedelta(seconds=0.05))
        await asyncio.sleep(TICK)
        assert rec.calls == []
        await until(lambda: rec.calls == ["run/a"])

    run_with_workers(scenario)


def test_a_time_in_the_past_handles_the_key_at_once() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add_at("run/a", datetime.now(UTC) - timedelta(hours=1))
        await until(lambda: rec.calls == ["run/a"], timeout=0.5)

    run_with_workers(scenario)


def test_an_earlier_time_replaces_a_later_one() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        now = datetime.now(UTC)
        queue.add_at("run/a", now + timedelta(hours=1))
        queue.add_at("run/a", now + timedelta(seconds=0.02))
        await until(lambda: rec.calls == ["run/a"], timeout=1.0)
        await asyncio.sleep(0.05)
        assert rec.calls == ["run/a"]  # the hour-long timer was cancelled, not kept as well

    run_with_workers(scenario)


def test_a_later_time_does_not_postpone_an_earlier_one() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        now = datetime.now(UTC)
        queue.add_at("run/a", now + timedelta(seconds=0.02))
        queue.add_at("run/a", now + timedelta(hours=1))
        queue.add_after("run/a", 3600)
        await until(lambda: rec.calls == ["run/a"], timeout=1.0)
        await asyncio.sleep(0.05)
        assert rec.calls == ["run/a"]

    run_with_workers(scenario)


def test_once_a_timer_fired_a_new_later_time_is_honoured() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add_at("run/a", datetime.now(UTC))
        await until(lambda: rec.calls == ["run/a"])
        queue.add_after("run/a", 0.02)
        await until(lambda: rec.calls == ["run/a", "run/a"], timeout=1.0)

    run_with_workers(scenario)


def test_timers_of_different_keys_are_independent() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add_after("run/b", 0.04)
        queue.add_after("run/a", 0.01)
        await until(lambda: len(rec.calls) == 2, timeout=1.0)

    assert run_with_workers(scenario).calls == ["run/a", "run/b"]


def test_a_timer_firing_while_the_key_is_queued_does_not_queue_it_twice() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add("hold")
        await until(lambda: "hold" in rec.running)
        queue.add("run/a")
        queue.add_at("run/a", datetime.now(UTC))
        await asyncio.sleep(TICK)  # the timer fires while run/a waits behind "hold"
        rec.gate.set()
        await until(lambda: queue.idle)
        await settle()

    rec = run_with_workers(scenario, recorder=lambda: Recorder(blocking={"hold"}))
    assert rec.calls == ["hold", "run/a"]


def test_close_cancels_every_timer() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add_after("run/a", 0.02)
        queue.add_at("run/b", datetime.now(UTC) + timedelta(seconds=0.02))
        queue.close()
        await asyncio.sleep(0.06)
        assert rec.calls == []
        assert queue.idle

    run_with_workers(scenario)


# Results: the queue owns every retry ---------------------------------------------------------------------


def recording_queue(backoff: Backoff) -> tuple[WorkQueue, list[tuple[Hashable, float]]]:
    """A queue recording every delay it schedules (the ``add_after`` calls)."""
    delays: list[tuple[Hashable, float]] = []

    class Recording(WorkQueue):
        def add_after(self, key: Hashable, seconds: float) -> None:
            delays.append((key, seconds))
            super().add_after(key, seconds)

    return Recording(backoff), delays


@pytest.mark.parametrize(
    ("initial", "maximum", "failures", "delays"),
    [
        (1.0, 60.0, 1, [1.0]),
        (1.0, 60.0, 4, [1.0, 2.0, 4.0, 8.0]),
        (1.0, 10.0, 6, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),  # capped
        (0.5, 0.5, 3, [0.5, 0.5, 0.5]),
        (RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS, 200, None),  # days of failures: capped, no overflow
    ],
)
def test_the_backoff_doubles_per_failure_in_a_row_up_to_its_cap(
    initial: float, maximum: float, failures: int, delays: list[float] | None
) -> None:
    backoff = Backoff(initial, maximum)
    got = [backoff.fail("run/a") for _ in range(failures)]
    if delays is not None:
        assert got == delays
    assert got == sorted(got) and got[-1] <= maximum
    assert backoff.failures("run/a") == failures


def test_the_backoff_is_per_key_and_reset_by_a_success() -> None:
    backoff = Backoff(1.0, 60.0)
    assert [backoff.fail("a"), backoff.fail("a"), backoff.fail("b")] == [1.0, 2.0, 1.0]
    backoff.forget("a")
    assert backoff.failures("a") == 0
    assert backoff.fail("a") == 1.0
    assert backoff.fail("b") == 2.0


@pytest.mark.parametrize(
    ("results", "delays", "failures"),
    [
        # A failed pass is retried after the key's backoff, growing while it keeps failing.
        ([Result.failed("down", transient=True)], [1.0], 1),
        ([Result.failed("down"), Result.failed("down"), Result.failed("down")], [1.0, 2.0, 4.0], 3),
        # A conflict is requeued rate-limited, on the same per-key backoff.
        ([Result.again(), Result.again()], [1.0, 2.0], 2),
        # A success resets it: the next failure waits the initial delay again.
        ([Result.failed("down"), Result.failed("down"), Result.done(), Result.failed("down")], [1, 2, 1], 1),
        ([Result.again(), Result.requeue_at(None), Result.again()], [1.0, 1.0], 1),
        ([Result.done()], [], 0),
    ],
)
def test_what_the_queue_does_with_each_result(
    results: list[Result], delays: list[float], failures: int
) -> None:
    async def main() -> tuple[list[tuple[Hashable, float]], int]:
        queue, scheduled = recording_queue(Backoff(1.0, 60.0))
        for result in results:
            queue.finish("run/a", result)
        count = queue.backoff.failures("run/a")
        queue.close()
        return scheduled, count

    scheduled, count = asyncio.run(main())
    assert [delay for _, delay in scheduled] == delays
    assert count == failures


def test_a_time_asked_for_by_a_successful_pass_is_kept_and_resets_the_backoff() -> None:
    async def main() -> None:
        queue = WorkQueue(Backoff(1.0, 60.0))
        queue.finish("run/a", Result.failed("down"))
        when = datetime.now(UTC) + timedelta(hours=1)
        queue.finish("run/b", Result.requeue_at(when))
        assert queue.due("run/b") == when
        queue.finish("run/a", Result.requeue_at(when))
        assert queue.backoff.failures("run/a") == 0
        # The retry a second away is earlier than the hour: the earliest wins.
        due = queue.due("run/a")
        assert due is not None and due < when
        queue.close()

    asyncio.run(main())


def test_a_requeue_and_a_time_together_keep_the_earliest() -> None:
    async def main() -> None:
        queue = WorkQueue(Backoff(1.0, 60.0))
        soon = datetime.now(UTC) + timedelta(milliseconds=10)
        queue.finish("run/a", Result(requeue=True, at=soon))
        assert queue.due("run/a") == soon
        queue.close()

    asyncio.run(main())


def test_failed_passes_are_tried_again_with_growing_delays_until_one_succeeds() -> None:
    # Three failures, then a success: four passes, 10 + 20 + 40 ms apart at least, and then no more.
    results = {"run/a": [Result.failed("down", transient=True)] * 3 + [Result.done()]}

    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add("run/a")
        await until(lambda: len(rec.calls) == 4, timeout=5.0)
        await asyncio.sleep(0.1)
        assert queue.due("run/a") is None

    async def main() -> list[Hashable]:
        queue = WorkQueue(Backoff(0.01, 1.0))
        rec = Recorder(results={k: list(v) for k, v in results.items()})
        task = asyncio.create_task(queue.work(rec))
        try:
            await scenario(queue, rec)
        finally:
            queue.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert queue.backoff.failures("run/a") == 0
        return rec.calls

    assert asyncio.run(main()) == ["run/a"] * 4


def test_an_unexpected_exception_backs_off_like_a_failure() -> None:
    async def main() -> list[tuple[Hashable, float]]:
        queue, scheduled = recording_queue(Backoff(0.01, 0.04))
        rec = Recorder(failing={"bad"})
        task = asyncio.create_task(queue.work(rec))
        queue.add("bad")
        await until(lambda: len(scheduled) >= 4, timeout=5.0)
        queue.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return scheduled

    assert [delay for _, delay in asyncio.run(main())][:4] == [0.01, 0.02, 0.04, 0.04]


def test_a_failure_is_logged_quietly_at_first_only_when_transient(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        queue = WorkQueue(Backoff(1.0, 60.0))
        queue.finish("run/a", Result.failed("the API server is unreachable", transient=True))
        queue.finish("run/b", Result.failed("an API call was rejected (forbidden)"))
        queue.close()

    with caplog.at_level("INFO", logger="kubestep.controller.queue"):
        asyncio.run(main())
    levels = {record.getMessage().split(":")[0]: record.levelname for record in caplog.records}
    assert levels == {"run/a": "INFO", "run/b": "WARNING"}
    assert "trying again in 1.0s" in caplog.records[0].getMessage()


def test_keys_added_for_later_wait_until_no_other_key_waits() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add("finished-1", later=True)
        queue.add("finished-2", later=True)
        queue.add("live-1")
        queue.add("finished-3", later=True)
        queue.add("live-2")
        await until(lambda: queue.idle)

    calls = run_with_workers(scenario).calls
    assert calls == ["live-1", "live-2", "finished-1", "finished-2", "finished-3"]


def test_a_key_waiting_for_later_that_is_added_again_now_is_handled_now_and_once() -> None:
    async def scenario(queue: WorkQueue, rec: Recorder) -> None:
        queue.add("a", later=True)
        queue.add("b", later=True)
        queue.add("live")
        queue.add("b")  # it changed meanwhile: now it matters
        queue.add("b", later=True)  # and asking for later again does not put it back
        assert queue.depth == 3
        await until(lambda: queue.idle)
        await settle()

    assert run_with_workers(scenario).calls == ["live", "b", "a"]
