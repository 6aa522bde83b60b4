"""`kubestep run`'s driver applies the start gates as the operator does, over the runs it drives."""

from __future__ import annotations

import threading
from typing import Any

import kubestep
from kubestep.api.base import ObjectMeta
from kubestep.api.run import RunEvent, RunPhase
from kubestep.api.workflow import RateLimit, Singleton, Trigger, Workflow, WorkflowSpec
from kubestep.engine.gates import Outcome
from kubestep.local.clock import VirtualClock
from kubestep.local.driver import Driver
from kubestep.local.executors import InProcessExecutor


@kubestep.workflow("napper", trigger="go")
def napper(ctx: kubestep.Context, step: kubestep.Step) -> Any:
    step.sleep("nap", "10s")
    return step.run("work", lambda: ctx.event.data["n"])


def driver(**flow: Any) -> Driver:
    spec = WorkflowSpec(triggers=[Trigger(event="go")], image="local", function="gates_test:napper", **flow)
    clock = VirtualClock()
    executor = InProcessExecutor({"gates_test:napper": napper}, {}, clock.now)
    workflows = {"napper": Workflow(metadata=ObjectMeta(name="napper"), spec=spec)}
    return Driver(workflows, executor, clock, threading.Event(), max_decisions=10_000)


def send(d: Driver, n: int, tenant: str = "a") -> list[str]:
    return d.start(RunEvent(name="go", data={"n": n, "tenant": tenant}, source=f"ev-{n}"))


def asleep(d: Driver, name: str) -> None:
    """Advance until the run sleeps (its first execution done)."""
    for _ in range(100):
        for run, outcome in d.executor.finished():
            d._outcomes[run].append(outcome)
        d._admit()
        d._step(name)
        if d.state.runs[name].status.phase is RunPhase.SLEEPING:
            return
    raise AssertionError(d.state.runs[name].status.phase)


def test_a_rate_limit_drops_events_over_it() -> None:
    d = driver(rate_limit=RateLimit(limit=1, period="1m", key="event.data.tenant"))
    first = send(d, 1)
    assert send(d, 2) == [] and send(d, 3) == []
    assert len(send(d, 4, tenant="b")) == 1
    assert [v.outcome for _, v in d.gated].count(Outcome.RATE_LIMITED) == 2
    runs = d.drive(first)
    assert runs[0].status.phase is RunPhase.SUCCEEDED


def test_singleton_skip_and_cancel() -> None:
    d = driver(singleton=Singleton(key="event.data.tenant"))
    (first,) = send(d, 1)
    assert send(d, 2) == []
    assert d.gated[-1][1].outcome is Outcome.SINGLETON_SKIPPED and first in d.gated[-1][1].message

    d = driver(singleton=Singleton(key="event.data.tenant", mode="Cancel"))
    (old,) = send(d, 1)
    asleep(d, old)
    (new,) = send(d, 2)
    d._admit()
    d._step(new)  # decided before the replaced run has ended: it waits
    assert d.state.runs[new].status.phase is RunPhase.QUEUED
    assert d.state.runs[new].status.admission is not None
    assert d.state.runs[new].status.admission.waiting_for == "SingletonActive event.data.tenant=a"
    replaced, replacing = d.drive([old, new])
    assert replaced.status.phase is RunPhase.CANCELLED
    assert replaced.status.error is not None and "cancelled by Event ev-2" in replaced.status.error.message
    assert replacing.status.phase is RunPhase.SUCCEEDED and replacing.status.output == 2
    assert replaced.status.finished_at is not None and replacing.status.started_at is not None
    assert replacing.status.started_at >= replaced.status.finished_at
