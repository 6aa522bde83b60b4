"""The operator's work queue: no key queued twice, none handled twice at once, none forgotten, earliest timer.

pytest-asyncio is not a dependency: each test drives its own event loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime, timedelta

from kubestep.controller.queue import WorkQueue

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

    def __init__(self, blocking: set[Hashable] | None = None, failing: set[Hashable] | None = None) -> None:
        self.calls: list[Hashable] = []
        self.running: set[Hashable] = set()
        self.overlaps: list[Hashable] = []
        self.max_parallel = 0
        self.blocking = blocking or set()
        self.failing = failing or set()
        self.gate = asyncio.Event()

    async def __call__(self, key: Hashable) -> None:
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
    assert calls == ["bad", "good", "later"]  # the retry is 30 s away, not now
    assert retries == [("bad", 30)]


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
