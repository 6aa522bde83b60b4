"""Chained mode: one execution runs several ``step.run`` steps in a row and records each as it finishes.

The runner side (how far a replay chains, what it records) and the engine side (how the steps an
execution recorded become steps with attempts, however the execution ended).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kubestep
from kubestep.api.base import ObjectMeta
from kubestep.api.report import (
    MemoEntry,
    Report,
    ReportKind,
    RunnerState,
    StepRef,
    decode_step_lines,
    encode_step_line,
)
from kubestep.api.run import RunEvent, RunPhase, StepPhase, WorkflowRef, WorkflowRun, WorkflowRunSpec
from kubestep.api.workflow import ExecutionMode, ExecutionPolicy, Trigger, WorkflowSpec
from kubestep.engine import ExitKind, Observed, Outcome, decide
from kubestep.engine.actions import StartExecution
from kubestep.engine.decide import chain_settings, pod_deadline
from kubestep.sdk.step import Replay

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@kubestep.workflow("four")
def four_steps(ctx: kubestep.Context, step: kubestep.Step) -> int:
    total = 0
    for i in range(1, 5):
        total += step.run(f"s{i}", lambda i=i: i)
    return total


def state(chain: int, memo: list[MemoEntry] | None = None, **fields: Any) -> RunnerState:
    return RunnerState(
        run="r", function="m:f", event={"name": "e"}, steps=memo or [], chain_steps=chain, **fields
    )


def replay(chain: int, **fields: Any) -> tuple[Report, list[str]]:
    """The report of one execution, and the steps it recorded as it went."""
    r = Replay(state(chain, **fields), now=lambda: T0)
    recorded: list[str] = []
    r.on_succeeded = lambda done: recorded.append(done.step.id if done.step else "?")
    return r.run(four_steps), recorded


# The runner ---------------------------------------------------------------------------------------------


def test_pod_per_step_executes_one_step_and_names_the_next() -> None:
    report, recorded = replay(chain=1)
    assert recorded == ["s1"]
    assert report.step == StepRef(id="s1", name="s1") and report.next is not None
    assert report.next.kind is ReportKind.NEXT_STEP and report.next.step is not None
    assert report.next.step.id == "s2"


def test_a_chain_executes_up_to_its_bound_recording_each_step_as_it_finishes() -> None:
    report, recorded = replay(chain=3)
    assert recorded == ["s1", "s2", "s3"]
    assert report.kind is ReportKind.STEP_SUCCEEDED and report.step is not None and report.step.id == "s3"
    assert report.next is not None and report.next.step is not None and report.next.step.id == "s4"


def test_a_chain_long_enough_ends_with_the_function() -> None:
    report, recorded = replay(chain=10)
    assert recorded == ["s1", "s2", "s3", "s4"]
    assert report.next is not None and report.next.kind is ReportKind.COMPLETED and report.next.output == 10


def test_a_retry_executes_its_step_alone() -> None:
    memo = [MemoEntry(id="s1", name="s1", type="run")]
    report, recorded = replay(chain=10, memo=memo, target="s1", attempt=2)
    assert recorded == ["s1"]
    assert report.next is not None and report.next.kind is ReportKind.NEXT_STEP


def test_a_chain_begins_no_step_past_its_time() -> None:
    clock = iter([T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=50)] + [T0 + timedelta(hours=1)] * 20)
    r = Replay(state(10, chain_seconds=30.0), now=lambda: next(clock))
    report = r.run(four_steps)
    assert report.step is not None and report.step.id in ("s1", "s2")
    assert report.next is not None and report.next.kind is ReportKind.NEXT_STEP


def test_the_recorded_steps_survive_the_log_they_are_written_to() -> None:
    done = Report(kind=ReportKind.STEP_SUCCEEDED, step=StepRef(id="s1", name="s1"), output={"x": "y" * 10000})
    log = f"hello\n{encode_step_line(done, T0)}\nworld\n::kubestep-step::garbage\n"
    assert decode_step_lines(log) == [(done, T0)]


# The engine -----------------------------------------------------------------------------------------------


def chained_run() -> tuple[WorkflowRun, str]:
    spec = WorkflowSpec(
        triggers=[Trigger(event="app/go")],
        image="img",
        function="m:f",
        execution=ExecutionPolicy(mode=ExecutionMode.CHAINED, max_steps_per_pod=3),
    )
    run = WorkflowRun(
        metadata=ObjectMeta(name="r", uid="u"),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="w"), workflow=spec, event=RunEvent(name="app/go")
        ),
    )
    first = decide(run, Observed(), T0)
    (start,) = first.of(StartExecution)
    assert start.state.chain_steps == 3
    return run.model_copy(update={"status": first.status}), start.name


def succeeded(step: str, output: int, next_report: Report | None = None) -> Report:
    return Report(
        kind=ReportKind.STEP_SUCCEEDED, step=StepRef(id=step, name=step), output=output, next=next_report
    )


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_every_step_a_chained_execution_recorded_is_a_step_with_one_attempt_of_that_execution() -> None:
    run, job = chained_run()
    last = succeeded("s3", 3, Report(kind=ReportKind.NEXT_STEP, step=StepRef(id="s4", name="s4")))
    chain = [(succeeded("s1", 1), at(2)), (succeeded("s2", 2), at(3)), (succeeded("s3", 3), at(4))]
    ended = Outcome(job, ExitKind.EXITED, last, 0, finished_at=at(4), chained=chain)
    decision = decide(run, Observed(outcomes=[ended]), at(5))
    steps = {s.id: s for s in decision.status.steps}
    assert [s.id for s in decision.status.steps] == ["s1", "s2", "s3", "s4"]
    for i, name in enumerate(["s1", "s2", "s3"], start=1):
        assert steps[name].phase is StepPhase.SUCCEEDED and steps[name].output == i
        (attempt,) = steps[name].attempts
        assert attempt.number == 1 and attempt.job == job
    assert steps["s2"].attempts[0].started_at == at(2) and steps["s2"].attempts[0].finished_at == at(3)
    (start,) = decision.of(StartExecution)
    assert start.step == "s4"


def test_a_chained_pod_killed_in_its_third_step_keeps_the_two_it_finished() -> None:
    run, job = chained_run()
    started = Report(kind=ReportKind.STARTED, step=StepRef(id="s3", name="s3"))
    chain = [(succeeded("s1", 1), at(2)), (succeeded("s2", 2), at(3))]
    killed = Outcome(job, ExitKind.EXITED, started, 137, "Error", finished_at=at(4), chained=chain)
    decision = decide(run, Observed(outcomes=[killed]), at(5))
    steps = {s.id: s for s in decision.status.steps}
    assert steps["s1"].phase is StepPhase.SUCCEEDED and steps["s2"].phase is StepPhase.SUCCEEDED
    assert steps["s3"].phase is not StepPhase.SUCCEEDED
    (attempt,) = steps["s3"].attempts
    assert attempt.number == 1 and attempt.exit_code == 137
    assert decision.status.phase is RunPhase.RUNNING


def test_the_step_of_the_last_report_is_recorded_once_though_the_log_has_it_too() -> None:
    run, job = chained_run()
    last = succeeded("s2", 2, Report(kind=ReportKind.COMPLETED, output=3))
    chain = [(succeeded("s1", 1), at(2)), (succeeded("s2", 2), at(3))]
    ended = Outcome(job, ExitKind.EXITED, last, 0, finished_at=at(3), chained=chain)
    decision = decide(run, Observed(outcomes=[ended]), at(4))
    assert [(s.id, len(s.attempts)) for s in decision.status.steps] == [("s1", 1), ("s2", 1)]
    assert decision.status.phase is RunPhase.SUCCEEDED and decision.status.output == 3


def test_a_chained_pods_deadline_is_the_step_timeout_plus_the_chains_own_bound() -> None:
    chained = ExecutionPolicy(mode=ExecutionMode.CHAINED, max_pod_seconds=120)
    assert pod_deadline(chained, 300.0) == 300 + 120
    assert pod_deadline(ExecutionPolicy(), 300.0) == 300
    assert pod_deadline(chained, None) is None
    assert chain_settings(ExecutionPolicy()) == {}
    assert chain_settings(chained) == {"chain_steps": 10, "chain_seconds": 120.0}
