"""Edge cases of the engine: hostile reports, long names, huge durations, budgets, child runs."""

from __future__ import annotations

from datetime import timedelta

from test_engine import Sim, err, make_run, ok, ref

from kubestep.api.names import (
    child_run_name,
    discovery_execution_name,
    sent_event_name,
    step_execution_name,
)
from kubestep.api.report import Report, ReportKind, decode_report
from kubestep.api.run import ErrorInfo, RunPhase, StepPhase, StepType
from kubestep.api.workflow import Limits
from kubestep.engine import (
    ArrivedEvent,
    CancelChild,
    ChildResult,
    ExitKind,
    Observed,
    Outcome,
    StartChild,
    decide,
)
from kubestep.engine.cel import CelError, holds
from kubestep.engine.decide import MAX_DELAY_SECONDS


def test_names_of_different_runs_never_collide_even_when_cut() -> None:
    workflow = "a-workflow-name-that-is-quite-long-indeed-0123456789abcdef"
    runs = [f"{workflow}-{i:010d}" for i in range(500)]
    for make in (
        lambda r: step_execution_name(r, "validate", 2),
        lambda r: child_run_name(r, "charge"),
        lambda r: sent_event_name(r, "tell", 0),
    ):
        made = [make(r) for r in runs]
        assert len(set(made)) == len(made)
        assert all(len(n) <= 63 for n in made)


def test_a_step_named_like_a_discovery_key_gets_its_own_name() -> None:
    names = {discovery_execution_name("r", n, 1) for n in range(5)}
    names |= {step_execution_name("r", f"next:{n}", 1) for n in range(5)}
    assert len(names) == 10


def test_cel_failures_of_any_kind_are_expression_errors() -> None:
    for expression, variables in (
        ("1 / event.zero == 1", {"event": {"zero": 0}}),
        ("event.l[5] == 1", {"event": {"l": [1]}}),
        ("event.missing == 1", {"event": {}}),
    ):
        try:
            holds(expression, variables)
        except CelError as exc:
            assert expression in str(exc)
        else:
            raise AssertionError(f"{expression} should not hold")


def test_a_malformed_or_corrupt_report_is_no_report() -> None:
    assert decode_report('{"kind": "step_succeeded"}') is None, "a step report without its step"
    assert decode_report("z:bm90IHpsaWI=") is None
    assert (
        decode_report('{"kind": "sleep", "step": {"id": "s", "name": "s"}, "until": "2026-01-01T00:00:00"}')
        is None
    )


def test_a_report_about_another_step_than_the_target_fails_the_run() -> None:
    sim = Sim(make_run())
    sim.finish(Report(kind=ReportKind.PLANNED, planned=[ref("a"), ref("b")]))
    target_a = next(e.name for e in sim.status.active if e.step == "a")
    stray = Outcome(target_a, ExitKind.EXITED, ok("c", 1), exit_code=0)
    sim.step(Observed(outcomes=[stray]))
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and sim.status.error.type == "NondeterminismError"
    assert "'a'" in sim.status.error.message and "c" in sim.status.error.message


def test_a_step_reported_new_twice_fails_the_run_instead_of_looping() -> None:
    sim = Sim(make_run())
    sim.finish(ok("fetch:1", 1))
    sim.finish(ok("fetch:1", 2))
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and "must be unique" in sim.status.error.message


def test_huge_durations_are_capped_not_crashing() -> None:
    sim = Sim(make_run())
    wait = Report(
        kind=ReportKind.WAIT_FOR_EVENT,
        step=ref("w", StepType.WAIT_FOR_EVENT),
        event="x",
        timeout_seconds=1e15,
    )
    sim.finish(wait)
    step = sim.run.step("w")
    assert step is not None and step.wait is not None
    assert step.wait.timeout_at == sim.now + timedelta(seconds=MAX_DELAY_SECONDS)
    sim2 = Sim(make_run())
    sim2.finish(err("s", retry_after=1e15))
    step = sim2.run.step("s")
    assert step is not None and step.attempts[0].retry_delay_seconds == MAX_DELAY_SECONDS


def test_a_wait_hears_events_published_while_its_execution_ran() -> None:
    sim = Sim(make_run())
    (active,) = sim.status.active
    began = active.started_at
    report = Report(
        kind=ReportKind.WAIT_FOR_EVENT, step=ref("w", StepType.WAIT_FOR_EVENT), event="x", timeout_seconds=60
    )
    early = ArrivedEvent({"name": "x", "data": {"n": 1}}, began + timedelta(milliseconds=500))
    before = ArrivedEvent({"name": "x", "data": {"n": 0}}, began - timedelta(seconds=1))
    done = Outcome(active.name, ExitKind.EXITED, report, exit_code=0)
    sim.step(Observed(outcomes=[done], events=[before, early]), at=began + timedelta(seconds=2))
    step = sim.run.step("w")
    assert step is not None and step.phase is StepPhase.SUCCEEDED and step.output["data"] == {"n": 1}


def test_a_candidate_missing_a_field_is_not_a_match_and_the_wait_goes_on() -> None:
    sim = Sim(make_run(upload="u1"))
    report = Report(
        kind=ReportKind.WAIT_FOR_EVENT,
        step=ref("w", StepType.WAIT_FOR_EVENT),
        event="x",
        if_="async.data.upload == event.data.upload",
        timeout_seconds=60,
    )
    sim.finish(report)
    odd = ArrivedEvent({"name": "x", "data": {}}, sim.now + timedelta(seconds=1))
    sim.step(Observed(events=[odd]), at=sim.now + timedelta(seconds=2))
    step = sim.run.step("w")
    assert step is not None and step.phase is StepPhase.WAITING


def test_a_wait_condition_that_does_not_compile_fails_the_step_at_once() -> None:
    sim = Sim(make_run())
    report = Report(
        kind=ReportKind.WAIT_FOR_EVENT,
        step=ref("w", StepType.WAIT_FOR_EVENT),
        event="x",
        if_="async.data ==",
        timeout_seconds=60,
    )
    sim.finish(report)
    step = sim.run.step("w")
    assert step is not None and step.phase is StepPhase.FAILED
    assert step.error is not None and step.error.type == "ExpressionError"


def test_outputs_over_the_run_budget_fail_the_step_naming_the_total() -> None:
    run = make_run()
    run.spec.workflow.limits = Limits(step_output_bytes=1024, run_output_bytes=2048)
    sim = Sim(run)
    sim.finish(ok("a", "x" * 1000))
    sim.finish(ok("b", "y" * 1000))
    assert sim.status.phase is not RunPhase.FAILED
    sim.finish(ok("c", "z" * 1000))
    step = sim.run.step("c")
    assert step is not None and step.phase is StepPhase.FAILED and step.output is None
    assert step.error is not None and step.error.type == "OutputTooLarge"
    assert "runOutputBytes" in step.error.message and "2048" in step.error.message


def test_cancelling_a_parent_cancels_its_child() -> None:
    sim = Sim(make_run())
    sim.finish(Report(kind=ReportKind.INVOKE, step=ref("charge", StepType.INVOKE), workflow="billing"))
    (start,) = sim.decision.of(StartChild)
    sim.step(Observed(children=[ChildResult("charge", RunPhase.RUNNING)]))
    cancelled = sim.run.model_copy(update={"spec": sim.run.spec.model_copy(update={"cancel": True})})
    decision = decide(cancelled, Observed(), sim.now)
    assert decision.of(CancelChild) == [CancelChild(start.name, "Cancelled")]


def test_an_invoke_that_times_out_cancels_its_child() -> None:
    sim = Sim(make_run())
    report = Report(
        kind=ReportKind.INVOKE, step=ref("charge", StepType.INVOKE), workflow="billing", timeout_seconds=60
    )
    sim.finish(report)
    sim.step(Observed(children=[ChildResult("charge", RunPhase.RUNNING)]), at=sim.now + timedelta(seconds=61))
    step = sim.run.step("charge")
    assert step is not None and step.phase is StepPhase.FAILED
    assert step.error == ErrorInfo(type="Timeout", message=step.error.message, step="charge")
    assert len(sim.decision.of(CancelChild)) == 1
