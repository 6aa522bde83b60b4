"""Debounce and batch: the pure decisions (which run an event joins, when a run is released), table by
table on an injected clock; the specs' validation; and the whole path through the controller against an
in-memory API (Events in, runs held, released, admitted, superseded Events saying so)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from test_controller_reconcilers import NS, World, event_obj, workflow_obj

import kubestep
from kubestep.api.base import ObjectMeta
from kubestep.api.flow import ADMITTED, QueueReason, RunAdmission
from kubestep.api.report import RunnerState
from kubestep.api.run import (
    GatherKind,
    RunEvent,
    RunGather,
    RunPhase,
    WorkflowRef,
    WorkflowRun,
    WorkflowRunSpec,
)
from kubestep.api.workflow import Batch, Debounce, Trigger, Workflow, WorkflowSpec
from kubestep.controller.context import Key
from kubestep.controller.kube import EVENTS, RUNS, WORKFLOWS, Conflict, Unavailable
from kubestep.engine import Observed, StartExecution, decide
from kubestep.engine.admission import must_wait
from kubestep.engine.gather import (
    Held,
    JoinAction,
    due,
    join,
    key_of,
    policy_of,
    release_at,
    waiting,
)
from kubestep.local.clock import VirtualClock
from kubestep.local.driver import Driver
from kubestep.local.executors import InProcessExecutor
from kubestep.sdk.step import Replay
from kubestep.sdk.workflow import Context

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(source: str, **data: Any) -> RunEvent:
    return RunEvent(name="doc/edited", data=data, source=source)


def held(name: str, gather: RunGather, event: RunEvent, finished: bool = False) -> Held:
    return Held(name, gather, event, finished)


def gathered(kind: GatherKind, first: float, last: float, **kw: Any) -> RunGather:
    return RunGather(kind=kind, first_at=at(first), last_at=at(last), **kw)


DEBOUNCE = Debounce(period="3s")
DEBOUNCE_BOUNDED = Debounce(period="3s", timeout="10s")
BATCH = Batch(max_size=3, timeout="5s")
D, B = GatherKind.DEBOUNCE, GatherKind.BATCH


# Joining ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "runs", "event", "arrived", "action", "run", "generation"),
    [
        pytest.param(
            DEBOUNCE, [], ev("e1"), 0, JoinAction.CREATE, "", 0, id="debounce: first event opens a run"
        ),
        pytest.param(
            DEBOUNCE,
            [held("r0", gathered(D, 0, 1), ev("e1"))],
            ev("e2"),
            2,
            JoinAction.REPLACE,
            "r0",
            0,
            id="debounce: a later event replaces the held one",
        ),
        pytest.param(
            DEBOUNCE,
            [held("r0", gathered(D, 0, 2), ev("e2"))],
            ev("e1"),
            1,
            JoinAction.SUPERSEDED,
            "r0",
            0,
            id="debounce: an event processed after a newer one is superseded by it",
        ),
        pytest.param(
            DEBOUNCE,
            [held("r0", gathered(D, 0, 2, open=False), ev("e2"))],
            ev("e3"),
            9,
            JoinAction.CREATE,
            "",
            1,
            id="debounce: after a release, the next event opens the next generation",
        ),
        pytest.param(
            DEBOUNCE,
            [held("r0", gathered(D, 0, 2), ev("e2"), finished=True)],
            ev("e3"),
            3,
            JoinAction.CREATE,
            "",
            1,
            id="debounce: a cancelled open run takes nothing more",
        ),
        pytest.param(
            DEBOUNCE,
            [held("r0", gathered(D, 0, 2), ev("e2"))],
            ev("e2"),
            2,
            JoinAction.ALREADY,
            "r0",
            0,
            id="an event handled before (a crash) is found in its run",
        ),
        pytest.param(
            BATCH,
            [held("r0", gathered(B, 0, 1, events=[ev("e1"), ev("e2")]), ev("e1"))],
            ev("e3"),
            2,
            JoinAction.ADD,
            "r0",
            0,
            id="batch: an event joins the open run",
        ),
        pytest.param(
            BATCH,
            [
                held("r0", gathered(B, 0, 1, events=[ev("e1"), ev("e2"), ev("e3")], open=False), ev("e1")),
                held("r1", gathered(B, 3, 3, generation=1, events=[ev("e4")]), ev("e4")),
            ],
            ev("e2"),
            4,
            JoinAction.ALREADY,
            "r0",
            0,
            id="batch: an event is found in any run of its key",
        ),
        pytest.param(
            BATCH,
            [held("r0", gathered(B, 0, 1, events=[ev("e1"), ev("e2"), ev("e3")], open=False), ev("e1"))],
            ev("e4"),
            2,
            JoinAction.CREATE,
            "",
            1,
            id="batch: a full run is closed, the next opens",
        ),
    ],
)
def test_where_an_event_goes(
    policy: Debounce | Batch,
    runs: list[Held],
    event: RunEvent,
    arrived: float,
    action: JoinAction,
    run: str,
    generation: int,
) -> None:
    joined = join(policy, "", runs, event, at(arrived))
    assert (joined.action, joined.run, joined.generation) == (action, run, generation)


def test_a_debounced_run_keeps_the_newest_event_and_names_the_one_it_replaced() -> None:
    first = join(DEBOUNCE, "", [], ev("e1", n=1), at(0))
    assert first.gather is not None and first.event is not None
    run = held("r0", first.gather, first.event)
    second = join(DEBOUNCE, "", [run], ev("e2", n=2), at(1))
    assert second.action is JoinAction.REPLACE
    assert second.event is not None and second.event.data == {"n": 2}
    assert second.replaced == "e1"
    assert second.gather is not None
    assert (second.gather.first_at, second.gather.last_at, second.gather.count) == (at(0), at(1), 2)


def test_a_batch_keeps_its_events_in_order_and_closes_when_full() -> None:
    runs: list[Held] = []
    for i in range(3):
        joined = join(BATCH, "", runs, ev(f"e{i}", i=i), at(i))
        assert joined.gather is not None
        runs = [held("r0", joined.gather, ev("e0", i=0))]
    gather = runs[0].gather
    assert [e.data["i"] for e in gather.events] == [0, 1, 2]
    assert gather.open is False  # the write that adds the last event releases the run


def test_a_batch_of_one_is_released_by_its_first_event() -> None:
    joined = join(Batch(max_size=1, timeout="5s"), "", [], ev("e1"), at(0))
    assert joined.gather is not None and joined.gather.open is False


def test_events_of_other_keys_never_meet() -> None:
    policy = Debounce(period="3s", key="event.data.doc")
    a = ev("e1", doc="a")
    first = join(policy, key_of(policy, a.as_payload()), [], a, at(0))
    assert first.gather is not None and first.gather.key == "a"
    b = ev("e2", doc="b")
    runs = [held("r0", first.gather, a)]
    assert join(policy, key_of(policy, b.as_payload()), runs, b, at(1)).action is JoinAction.CREATE


# Releasing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "gather", "now", "expected_at", "is_due"),
    [
        pytest.param(DEBOUNCE, gathered(D, 0, 4), 6.9, 7, False, id="debounce: period after the last event"),
        pytest.param(DEBOUNCE, gathered(D, 0, 4), 7, 7, True, id="debounce: quiet for the period: released"),
        pytest.param(
            DEBOUNCE_BOUNDED, gathered(D, 0, 9), 10, 10, True, id="debounce: timeout bounds a constant stream"
        ),
        pytest.param(DEBOUNCE_BOUNDED, gathered(D, 0, 2), 4, 5, False, id="debounce: timeout not reached"),
        pytest.param(
            BATCH, gathered(B, 2, 3, events=[ev("e1")]), 6.9, 7, False, id="batch: waits for timeout"
        ),
        pytest.param(
            BATCH, gathered(B, 2, 3, events=[ev("e1")]), 7, 7, True, id="batch: timeout after first"
        ),
        pytest.param(
            BATCH,
            gathered(B, 2, 3, events=[ev("e1"), ev("e2"), ev("e3")]),
            3,
            7,
            True,
            id="batch: full is released at once",
        ),
    ],
)
def test_when_a_run_is_released(
    policy: Debounce | Batch, gather: RunGather, now: float, expected_at: float, is_due: bool
) -> None:
    assert release_at(policy, gather) == at(expected_at)
    assert due(policy, gather, at(now)) is is_due


def test_a_waiting_run_says_what_it_holds_and_its_key() -> None:
    verdict = waiting(Debounce(period="3s", key="event.data.doc"), gathered(D, 0, 4, key="a", count=3))
    assert verdict.reason == QueueReason.DEBOUNCING
    assert verdict.waiting_for == "Debouncing event.data.doc=a"
    assert "newest of 3 event(s)" in verdict.message and "2026-03-01T12:00:07Z" in verdict.message
    verdict = waiting(BATCH, gathered(B, 0, 0, events=[ev("e1")]))
    assert (verdict.reason, verdict.waiting_for) == (QueueReason.BATCHING, "Batching")
    assert "1 of up to 3" in verdict.message


# Specs --------------------------------------------------------------------------------------------------


def spec(**flow: Any) -> dict[str, Any]:
    return {"triggers": [{"event": "doc/edited"}], "image": "img", "function": "m:f", **flow}


@pytest.mark.parametrize(
    ("flow", "problem"),
    [
        ({"debounce": {"period": "500ms"}}, "debounce.period is shorter than 1s"),
        (
            {"debounce": {"period": "10s", "timeout": "5s"}},
            "debounce.timeout is shorter than debounce.period",
        ),
        ({"batch": {"maxSize": 0, "timeout": "5s"}}, "greater than or equal to 1"),
        ({"batch": {"maxSize": 101, "timeout": "5s"}}, "less than or equal to 100"),
        ({"batch": {"maxSize": 5, "timeout": "100ms"}}, "batch.timeout is shorter than 1s"),
        (
            {"debounce": {"period": "3s"}, "batch": {"maxSize": 5, "timeout": "5s"}},
            "spec.debounce and spec.batch are both set",
        ),
    ],
)
def test_bad_specs_are_refused_naming_the_field(flow: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        WorkflowSpec.model_validate(spec(**flow))


def test_good_specs_are_read() -> None:
    parsed = WorkflowSpec.model_validate(
        spec(debounce={"period": "3s", "key": "event.data.doc", "timeout": "1m"})
    )
    assert policy_of(parsed) == Debounce(period="3s", key="event.data.doc", timeout="1m")
    parsed = WorkflowSpec.model_validate(spec(batch={"maxSize": 5, "timeout": "5s"}))
    assert policy_of(parsed) == Batch(max_size=5, timeout="5s")


# The engine's side: a run holding events waits, then is admitted, then starts -----------------------------


def gather_run(gather: RunGather) -> WorkflowRun:
    spec = WorkflowSpec(triggers=[Trigger(event="doc/edited")], image="img", function="m:f", batch=BATCH)
    return WorkflowRun(
        metadata=ObjectMeta(name="r0", namespace=NS, creation_timestamp=T0),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="docs"),
            workflow=spec,
            event=ev("e1", i=1),
            gather=gather,
        ),
    )


def test_an_open_run_stays_queued_and_a_released_one_waits_for_its_admission() -> None:
    events = [ev("e1", i=1), ev("e2", i=2)]
    run = gather_run(gathered(B, 0, 0, events=events))
    assert must_wait(run)
    decision = decide(run, Observed(), at(1))
    assert decision.status.phase is RunPhase.QUEUED
    assert not [a for a in decision.actions if isinstance(a, StartExecution)]
    released = gather_run(gathered(B, 0, 0, events=events, open=False))
    assert must_wait(released)


# The controller: Events in, runs out --------------------------------------------------------------------


def flow_world(flow: dict[str, Any]) -> World:
    world = World()
    obj = workflow_obj("docs", event="doc/edited")
    obj["spec"].update(flow)
    world.kube.put(WORKFLOWS, obj)
    return world


def send(world: World, name: str, t: float, **data: Any) -> None:
    """An Event created at ``t`` seconds, handled at once."""
    world.now = at(t)
    world.kube.now = at(t).isoformat().replace("+00:00", "Z")
    body = event_obj(name, event="doc/edited")
    body["spec"]["data"] = data
    world.kube.put(EVENTS, body)
    world.reconcile(Key("event", NS, name))


def runs(world: World) -> list[WorkflowRun]:
    return sorted(
        (WorkflowRun.model_validate(o) for o in world.kube.objects(RUNS, NS)),
        key=lambda r: (r.spec.gather.generation if r.spec.gather else 0, r.metadata.name),
    )


def processed(world: World, name: str) -> tuple[str, str]:
    obj = world.kube.peek(EVENTS, NS, name)
    assert obj is not None
    (condition,) = [c for c in obj["status"]["conditions"] if c["type"] == "Processed"]
    return condition["reason"], condition["message"]


def admitted(run: WorkflowRun) -> tuple[str, str]:
    (condition,) = [c for c in run.status.conditions if c.type == ADMITTED]
    return condition.status, condition.reason


ADMISSION = Key("admission", NS, "docs")


def test_debounced_events_make_one_run_with_the_last_and_the_others_say_so() -> None:
    world = flow_world({"debounce": {"period": "3s"}})
    for i in range(5):
        send(world, f"e{i}", i, n=i)
        world.reconcile(ADMISSION)
    (run,) = runs(world)
    assert run.spec.event.data == {"n": 4} and run.spec.gather is not None and run.spec.gather.open
    assert admitted(run) == ("False", "Debouncing")
    for i in range(4):
        reason, message = processed(world, f"e{i}")
        assert reason == "Debounced" and run.metadata.name in message
    assert processed(world, "e4")[0] == "RunsStarted"
    world.reconcile(Key("run", NS, run.metadata.name))
    assert runs(world)[0].status.phase is RunPhase.QUEUED and world.jobs() == []
    # Not yet quiet for the period: still held, and the pass asks to come back at the release time.
    world.now = at(6.5)
    assert world.reconcile(ADMISSION).at == at(7)
    world.now = at(7)
    world.reconcile(ADMISSION)  # released, then admitted (no other limit)
    run = runs(world)[0]
    assert run.spec.gather is not None and not run.spec.gather.open
    assert admitted(run) == ("True", "Admitted")
    world.reconcile(Key("run", NS, run.metadata.name))
    assert runs(world)[0].status.phase is RunPhase.RUNNING and len(world.jobs()) == 1
    # The next event, after the release, opens the next run.
    send(world, "e5", 8, n=5)
    assert [r.spec.event.data for r in runs(world)] == [{"n": 4}, {"n": 5}]


def test_batches_fill_up_and_the_rest_waits_for_the_timeout() -> None:
    world = flow_world({"batch": {"maxSize": 5, "timeout": "5s"}})
    for i in range(12):
        send(world, f"e{i}", i * 0.1, i=i)
    found = runs(world)
    assert [[e.data["i"] for e in r.spec.gather.events] for r in found if r.spec.gather] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        [10, 11],
    ]
    assert [r.spec.gather.open for r in found if r.spec.gather] == [False, False, True]
    world.now = at(2)
    assert world.reconcile(ADMISSION).at == at(6)  # the third: 5s after its first event (at 1s)
    assert [admitted(r) for r in runs(world)] == [("True", "Admitted")] * 2 + [("False", "Batching")]
    world.now = at(6)
    world.reconcile(ADMISSION)
    assert [admitted(r) for r in runs(world)] == [("True", "Admitted")] * 3


def test_an_event_that_lost_a_race_for_the_run_joins_it() -> None:
    world = flow_world({"batch": {"maxSize": 5, "timeout": "5s"}})
    send(world, "e0", 0, i=0)
    (run,) = runs(world)
    world.kube.fail(
        "replace", Conflict("the object has been modified", 409), name=f"{RUNS}/{run.metadata.name}"
    )
    send(world, "e1", 0.5, i=1)
    (run,) = runs(world)
    assert run.spec.gather is not None and [e.data["i"] for e in run.spec.gather.events] == [0, 1]


def test_a_released_run_still_waits_for_concurrency() -> None:
    world = flow_world(
        {"batch": {"maxSize": 1, "timeout": "5s"}, "concurrency": [{"limit": 1, "scope": "Runs"}]}
    )
    send(world, "e0", 0, i=0)
    send(world, "e1", 1, i=1)
    world.reconcile(ADMISSION)
    assert [admitted(r) for r in runs(world)] == [("True", "Admitted"), ("False", "ConcurrencyLimited")]


def test_a_batch_is_ordered_by_event_time_whatever_order_its_events_are_taken_in() -> None:
    def timed(source: str, t: float) -> RunEvent:
        return RunEvent(name="doc/edited", ts=at(t), source=source)

    first = join(BATCH, "", [], timed("b", 1), at(1))
    assert first.gather is not None
    runs = [held("r0", first.gather, timed("b", 1))]
    joined = join(BATCH, "", runs, timed("a", 0), at(2))
    assert joined.action is JoinAction.ADD and joined.gather is not None
    assert [e.source for e in joined.gather.events] == ["a", "b"]
    assert joined.event is not None and joined.event.source == "a"  # `ctx.event` is the first
    # Of the same time: in the order taken in.
    runs = [held("r0", joined.gather, joined.event)]
    joined = join(BATCH, "", runs, timed("0", 1), at(3))
    assert joined.gather is not None and [e.source for e in joined.gather.events] == ["a", "b", "0"]


# What the function sees ---------------------------------------------------------------------------------


def test_a_batched_run_sees_its_events_and_any_other_run_its_one_event() -> None:
    seen: list[Context] = []

    @kubestep.workflow("echo")
    def echo(ctx: Context, step: kubestep.Step) -> None:
        seen.append(ctx)

    first, second = {"name": "doc/edited", "data": {"n": 1}}, {"name": "doc/edited", "data": {"n": 2}}
    Replay(RunnerState(run="r", function="m:f", event=first, events=[first, second]), now=lambda: T0).run(
        echo
    )
    Replay(RunnerState(run="r", function="m:f", event=second), now=lambda: T0).run(echo)
    batched, single = seen
    assert [e.data for e in batched.events] == [{"n": 1}, {"n": 2}] and batched.event.data == {"n": 1}
    assert [e.data for e in single.events] == [{"n": 2}]


def test_the_runner_is_given_a_batchs_events_in_order() -> None:
    run = gather_run(gathered(B, 0, 0, events=[ev("e1", i=1), ev("e2", i=2)], open=False))
    run.status.admission = RunAdmission(admitted_at=T0)
    decision = decide(run, Observed(), at(1))
    (start,) = [a for a in decision.actions if isinstance(a, StartExecution)]
    assert [e["data"] for e in start.state.events] == [{"i": 1}, {"i": 2}]


# `kubestep run`: the same decisions, on a virtual clock ---------------------------------------------------


@kubestep.workflow("sender")
def sender(ctx: Context, step: kubestep.Step) -> None:
    """Sends `data.count` events, `data.every` apart (all at once for '0s')."""
    for i in range(ctx.event.data["count"]):
        step.send_event(f"send-{i}", "doc/edited", {"n": i})
        if ctx.event.data["every"] != "0s":
            step.sleep(f"pause-{i}", ctx.event.data["every"])


@kubestep.workflow("collector")
def collector(ctx: Context, step: kubestep.Step) -> dict[str, Any]:
    return {"event": ctx.event.data["n"], "events": [e.data["n"] for e in ctx.events]}


def local_runs(flow: dict[str, Any], count: int, every: str) -> list[WorkflowRun]:
    """Drive a sender of ``count`` events and the collector runs they make to their ends; the collector's
    runs, in the order they were created."""
    clock = VirtualClock()
    spec = WorkflowSpec.model_validate(
        {"triggers": [{"event": "doc/edited"}], "image": "local", "function": "t:collector", **flow}
    )
    sending = WorkflowSpec(triggers=[Trigger(event="go")], image="local", function="t:sender")
    workflows = {
        "sender": Workflow(metadata=ObjectMeta(name="sender"), spec=sending),
        "collector": Workflow(metadata=ObjectMeta(name="collector"), spec=spec),
    }
    executor = InProcessExecutor({"t:sender": sender, "t:collector": collector}, {}, clock.now)
    driver = Driver(workflows, executor, clock, threading.Event(), max_decisions=10_000)
    (name,) = driver.start(RunEvent(name="go", data={"count": count, "every": every}), "sender")
    driver.drive([name])
    names = [r.metadata.name for r in driver.state.runs.values() if r.spec.workflow_ref.name == "collector"]
    return sorted(driver.drive(names), key=lambda r: r.metadata.creation_timestamp or T0)


def test_kubestep_run_debounces_as_the_operator_does() -> None:
    (run,) = local_runs({"debounce": {"period": "3s"}}, 5, "1s")
    assert run.status.output == {"event": 4, "events": [4]}
    assert run.status.started_at is not None and run.spec.gather is not None
    assert run.status.started_at >= run.spec.gather.last_at + timedelta(seconds=3)
    bounded = local_runs({"debounce": {"period": "3s", "timeout": "5s"}}, 12, "1s")
    assert len(bounded) >= 2 and bounded[-1].status.output == {"event": 11, "events": [11]}


def test_kubestep_run_batches_as_the_operator_does() -> None:
    runs = local_runs({"batch": {"maxSize": 5, "timeout": "5s"}}, 12, "0s")
    assert [r.status.output["events"] for r in runs] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    last = runs[-1]
    assert last.status.started_at is not None and last.spec.gather is not None
    assert last.status.started_at >= last.spec.gather.first_at + timedelta(seconds=5)


def test_an_event_handled_again_after_a_crash_tells_the_one_it_replaced() -> None:
    world = flow_world({"debounce": {"period": "3s"}})
    send(world, "e0", 0, n=0)
    (run,) = runs(world)
    # The operator stops after writing e1 into the run, before telling e0 or saving e1's status.
    world.kube.fail("get", Unavailable("the API server is gone"), name=f"{EVENTS}/e0")
    send(world, "e1", 1, n=1)
    assert processed(world, "e0")[0] == "RunsStarted"
    world.restart()
    world.reconcile(Key("event", NS, "e1"))
    reason, message = processed(world, "e0")
    assert reason == "Debounced" and run.metadata.name in message and "e1" in message
    assert processed(world, "e1")[0] == "RunsStarted"
    assert [r.spec.event.data for r in runs(world)] == [{"n": 1}]
