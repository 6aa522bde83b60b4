"""`spec.paused` and `spec.timeouts.start`: admission's verdicts, the engine holding a run before its next
step, and the cancellation of a run that waited too long to start; on an injected clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubestep.api.base import ObjectMeta
from kubestep.api.flow import ADMITTED, Concurrency, ConcurrencyScope, QueueReason, RunAdmission
from kubestep.api.report import Report, ReportKind, StepRef
from kubestep.api.run import (
    RunEvent,
    RunPhase,
    StepPhase,
    WorkflowRef,
    WorkflowRun,
    WorkflowRunSpec,
    WorkflowRunStatus,
)
from kubestep.api.workflow import Throttle, Timeouts, Trigger, Workflow, WorkflowSpec
from kubestep.cli.render import workflow_row
from kubestep.controller.workflows import readiness
from kubestep.engine import ExitKind, Note, Observed, Outcome, RequeueAt, StartExecution, decide
from kubestep.engine.admission import Candidate, admit, apply, candidate, settled
from kubestep.engine.starting import START_TIMEOUT, deadline, timed_out

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PAUSED = QueueReason.WORKFLOW_PAUSED.value


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def cand(name: str, t: float = 0, **kw: Any) -> Candidate:
    return Candidate(name=name, queued_at=at(t), event={"name": "go", "data": {}}, **kw)


# Admission --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "run", "paused", "expected"),
    [
        pytest.param(
            [], cand("new"), True, (False, 0, PAUSED, True), id="paused: a new run is held and told why"
        ),
        pytest.param(
            [Concurrency(limit=5)],
            cand("new", wants=1),
            True,
            (False, 0, PAUSED, True),
            id="paused: a slot free is not granted",
        ),
        pytest.param(
            [],
            cand("busy", started=True, admitted=True, active=1),
            True,
            (False, 0, PAUSED, True),
            id="paused: a run in flight is told, its step runs on",
        ),
        pytest.param(
            [],
            cand("busy", started=True, admitted=True, active=1, paused=True),
            False,
            (False, 0, "", False),
            id="resumed: a run in flight told of the pause is told it is over",
        ),
        pytest.param(
            [],
            cand("held", started=True, admitted=True, wants=1, paused=True),
            False,
            (False, 1, "", False),
            id="resumed: a run held between steps gets its next step",
        ),
        pytest.param(
            [Concurrency(limit=1, scope=ConcurrencyScope.RUNS)],
            cand("new", paused=True),
            False,
            (True, 0, "", False),
            id="resumed: a queued run is admitted under the limits",
        ),
    ],
)
def test_admission_while_paused_and_resumed(
    entries: list[Concurrency], run: Candidate, paused: bool, expected: tuple[bool, int, str, bool]
) -> None:
    verdict = admit(entries, [run], at(10), paused=paused).verdicts[run.name]
    assert (verdict.admit, verdict.tickets, verdict.reason, verdict.paused) == expected


def test_nothing_to_say_to_a_run_in_flight_of_a_workflow_never_paused() -> None:
    assert admit([], [cand("busy", started=True, admitted=True, active=1)], at(1)).verdicts == {}


def test_resuming_respects_the_concurrency_limit() -> None:
    runs = [cand(f"r{i}", i, paused=True) for i in range(3)]
    decided = admit([Concurrency(limit=1, scope=ConcurrencyScope.RUNS)], runs, at(10))
    assert [n for n, v in sorted(decided.verdicts.items()) if v.admit] == ["r0"]
    assert all(not v.paused for v in decided.verdicts.values())
    assert decided.verdicts["r1"].reason == QueueReason.CONCURRENCY_LIMITED


def test_a_throttled_paused_workflow_sets_no_timer() -> None:
    throttle = Throttle(limit=1, period="1m")
    assert admit([], [cand("r")], at(0), throttle=throttle, paused=True).at is None


def test_the_pause_is_written_and_read_back() -> None:
    verdict = admit([], [cand("new")], at(1), paused=True).verdicts["new"]
    status = apply(WorkflowRunStatus(), verdict, at(1))
    assert status.admission is not None and status.admission.paused
    condition = next(c for c in status.conditions if c.type == ADMITTED)
    assert (condition.status, condition.reason) == ("False", PAUSED)
    as_stored = status.to_dict()
    assert settled(as_stored, verdict)
    resumed = admit([], [cand("new", paused=True)], at(2)).verdicts["new"]
    assert not settled(as_stored, resumed)
    assert apply(status, resumed, at(2)).admission == RunAdmission(admitted_at=at(2))


# The engine ---------------------------------------------------------------------------------------------


def spec(
    paused: bool = False, start: str | None = None, entries: list[Concurrency] | None = None
) -> WorkflowSpec:
    return WorkflowSpec(
        triggers=[Trigger(event="go")],
        image="img",
        function="app.flows:main",
        paused=paused,
        timeouts=Timeouts(start=start),
        concurrency=entries or [],
    )


def make_run(workflow: WorkflowSpec, t: float = 0) -> WorkflowRun:
    return WorkflowRun(
        metadata=ObjectMeta(name="r", uid="uid-r", creation_timestamp=at(t)),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="wf"), workflow=workflow, event=RunEvent(name="go")
        ),
    )


def told(run: WorkflowRun, paused: bool, now: datetime) -> WorkflowRun:
    """One pass of admission over this run alone, applied."""
    verdict = admit(run.spec.workflow.concurrency, [candidate(run)], now, paused=paused).verdicts.get(
        run.metadata.name
    )
    if verdict is None:
        return run
    return run.model_copy(update={"status": apply(run.status, verdict, now)})


def step(run: WorkflowRun, now: datetime, outcomes: list[Outcome] | None = None) -> tuple[WorkflowRun, Any]:
    decision = decide(run, Observed(outcomes or []), now)
    return run.model_copy(update={"status": decision.status}), decision


def test_a_run_created_while_paused_waits_queued_until_resumed() -> None:
    run, decision = step(make_run(spec(paused=True)), at(0))
    assert decision.status.phase is RunPhase.QUEUED and not decision.of(StartExecution)
    run = told(run, True, at(1))
    run, decision = step(run, at(2))
    assert decision.status.phase is RunPhase.QUEUED and not decision.of(StartExecution)
    assert run.status.started_at is None
    run = told(run, False, at(3))  # resumed: its own copy of the spec still says paused
    run, decision = step(run, at(4))
    assert decision.status.phase is RunPhase.RUNNING
    assert len(decision.of(StartExecution)) == 1


def test_a_run_in_flight_finishes_its_step_then_waits_and_resumes_where_it_was() -> None:
    run, first = step(make_run(spec()), at(0))
    (execution,) = first.of(StartExecution)
    run = told(run, True, at(1))  # paused while the first step runs
    assert run.status.phase is RunPhase.RUNNING
    done = Report(
        kind=ReportKind.STEP_SUCCEEDED,
        step=StepRef(id="a", name="a"),
        output=1,
        next=Report(kind=ReportKind.NEXT_STEP, step=StepRef(id="b", name="b")),
    )
    run, decision = step(run, at(2), [Outcome(execution.name, ExitKind.EXITED, report=done, exit_code=0)])
    assert not decision.of(StartExecution)
    assert decision.status.phase is RunPhase.QUEUED
    (queued,) = [n for n in decision.of(Note) if n.reason == "RunQueued"]
    assert "paused" in queued.message
    assert [(s.id, s.phase) for s in decision.status.steps] == [
        ("a", StepPhase.SUCCEEDED),
        ("b", StepPhase.PENDING),
    ]
    run, decision = step(told(run, True, at(3)), at(4))
    assert not decision.of(StartExecution) and decision.status.phase is RunPhase.QUEUED
    run = told(run, False, at(5))
    run, decision = step(run, at(6))
    (started,) = decision.of(StartExecution)
    assert started.step == "b"  # step a is not run again
    assert decision.status.phase is RunPhase.RUNNING


# spec.timeouts.start --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "started", "now", "expected"),
    [
        pytest.param(None, False, 10_000, None, id="no limit: waits as long as it takes"),
        pytest.param("30s", False, 29, None, id="before the deadline"),
        pytest.param("30s", False, 30, START_TIMEOUT, id="at the deadline"),
        pytest.param("30s", True, 3_000, None, id="started in time: the limit no longer applies"),
        pytest.param("2h", False, 7_199, None, id="hours"),
    ],
)
def test_start_timeout(start: str | None, started: bool, now: float, expected: str | None) -> None:
    run = make_run(spec(start=start))
    if started:
        run.status.started_at = at(1)
    error = timed_out(run, at(now))
    assert (error.type if error else None) == expected
    if error is not None:
        assert f"spec.timeouts.start ({start})" in error.message
    assert deadline(run) == (None if start is None or started else at(30 if start == "30s" else 7200))


def test_a_run_queued_past_its_start_timeout_is_cancelled_saying_why() -> None:
    run, decision = step(make_run(spec(paused=True, start="30s")), at(0))
    assert decision.status.phase is RunPhase.QUEUED
    assert RequeueAt(at(30)) in decision.actions  # woken at its deadline, though nothing else changes
    run = told(run, True, at(1))
    run, decision = step(run, at(29))
    assert decision.status.phase is RunPhase.QUEUED
    run, decision = step(run, at(30))
    assert decision.status.phase is RunPhase.CANCELLED
    assert not decision.of(StartExecution)
    assert decision.status.error is not None
    assert decision.status.error.type == "StartTimeout"
    assert "spec.timeouts.start (30s)" in decision.status.error.message
    assert "WorkflowPaused" in decision.status.error.message
    assert decision.status.admission is not None and decision.status.admission.wants == 0  # frees its place
    succeeded = next(c for c in decision.status.conditions if c.type == "Succeeded")
    assert (succeeded.status, succeeded.reason) == ("False", "Cancelled")


def test_a_run_admitted_in_time_is_not_cancelled_later() -> None:
    run, _ = step(make_run(spec(start="30s", entries=[Concurrency(limit=1)])), at(0))
    run = run.model_copy(
        update={
            "status": apply(
                run.status, admit([Concurrency(limit=1)], [candidate(run)], at(5)).verdicts["r"], at(5)
            )
        }
    )
    run, decision = step(run, at(6))
    assert decision.status.phase is RunPhase.RUNNING
    run, decision = step(run, at(100))
    assert decision.status.phase is RunPhase.RUNNING
    assert all(a.when != at(30) for a in decision.of(RequeueAt))


def test_start_timeout_is_a_duration() -> None:
    with pytest.raises(ValueError, match="start"):
        Timeouts(start="soon")


# What the workflow shows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paused", "reason", "shown"), [(False, "Valid", "True"), (True, "Paused", "True (Paused)")]
)
def test_the_workflow_says_it_is_paused(paused: bool, reason: str, shown: str) -> None:
    workflow = Workflow(metadata=ObjectMeta(name="wf", generation=2), spec=spec(paused=paused))
    condition = readiness(workflow)
    assert (condition.status, condition.reason) == ("True", reason)
    assert ("spec.paused" in condition.message) is paused
    workflow.status.conditions = [condition]
    assert workflow_row(workflow, at(0))[1] == shown


# A whole simulation: pauses and resumes at random moments, admission and the engine interleaved ------------


@pytest.mark.parametrize("entries", [[], [Concurrency(limit=2)]], ids=["uncapped", "steps-capped"])
@pytest.mark.parametrize("seed", range(4))
def test_no_step_starts_while_told_paused_and_all_finish_once_resumed(
    entries: list[Concurrency], seed: int
) -> None:
    rnd = random.Random(seed)
    runs = {}
    for i in range(6):
        run = make_run(spec(entries=entries), t=i)
        run.metadata.name = f"r{i}"
        runs[run.metadata.name] = run
    paused = False
    now = at(0)
    starts = held = 0
    for tick in range(3000):
        now += timedelta(seconds=1)
        if tick > 2000:
            paused = False  # in the end, resumed for good
        elif rnd.random() < 0.05:
            paused = not paused
        if all(r.status.phase.finished for r in runs.values()):
            break
        if rnd.random() < 0.3:
            decided = admit(entries, [candidate(r) for r in runs.values()], now, paused=paused)
            for name, verdict in decided.verdicts.items():
                runs[name] = runs[name].model_copy(update={"status": apply(runs[name].status, verdict, now)})
            continue
        name = rnd.choice(sorted(runs))
        run = runs[name]
        outcomes = []
        for execution in run.status.active:
            if rnd.random() < 0.5:
                done = sum(1 for s in run.status.steps if s.phase.finished)
                if execution.step is None and done >= 2:
                    report = Report(kind=ReportKind.COMPLETED, output=name)
                else:
                    step_id = execution.step or f"s{done}"
                    report = Report(
                        kind=ReportKind.STEP_SUCCEEDED, step=StepRef(id=step_id, name=step_id), output=1
                    )
                outcomes.append(Outcome(execution.name, ExitKind.EXITED, report=report, exit_code=0))
        decision = decide(run, Observed(outcomes), now)
        told_paused = run.status.admission is not None and run.status.admission.paused
        assert not (told_paused and decision.of(StartExecution)), (name, tick)
        held += told_paused
        starts += len(decision.of(StartExecution))
        runs[name] = run.model_copy(update={"status": decision.status})
    assert [r.status.phase for r in runs.values()] == [RunPhase.SUCCEEDED] * 6
    assert starts >= 6 * 3
    assert held > 0, "no decision was made while paused"
