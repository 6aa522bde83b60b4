"""Reruns in the pure engine: what a rerun reuses, and a rerun's first decisions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from test_engine import T0, Sim, make_run, ok

from kubestep.api.names import rerun_name
from kubestep.api.run import (
    ErrorInfo,
    RerunRequest,
    RerunSpec,
    ReusedStep,
    RunPhase,
    StepPhase,
    StepStatus,
    StepType,
    WorkflowRun,
)
from kubestep.engine import Observed, Outcome, StartExecution, decide
from kubestep.engine.actions import Note, StartRerun
from kubestep.engine.observations import ExitKind
from kubestep.engine.rerun import RerunError, plan, seed


def finished_run(phase: RunPhase, *steps: tuple[str, StepPhase, Any]) -> WorkflowRun:
    run = make_run()
    run.metadata.name = "orig"
    run.status.phase = phase
    run.status.steps = [
        StepStatus(
            id=step_id,
            name=step_id,
            phase=step_phase,
            output=output,
            error=ErrorInfo(type="E", message="m") if step_phase is StepPhase.FAILED else None,
        )
        for step_id, step_phase, output in steps
    ]
    return run


S, F, C = StepPhase.SUCCEEDED, StepPhase.FAILED, StepPhase.CANCELLED


@pytest.mark.parametrize(
    ("steps", "from_step", "reused", "first"),
    [
        # Default: from the first failed step.
        ([("a", S, 1), ("b", F, None)], None, ["a"], "b"),
        ([("a", S, 1), ("b", S, 2), ("c", F, None)], None, ["a", "b"], "c"),
        # Named: any step whose predecessors succeeded, the first included (then nothing is reused).
        ([("a", S, 1), ("b", S, 2), ("c", F, None)], "b", ["a"], "b"),
        ([("a", S, 1), ("b", F, None)], "a", [], "a"),
        # A succeeded run can be rerun from a step too.
        ([("a", S, 1), ("b", S, 2)], "b", ["a"], "b"),
    ],
)
def test_plan_reuses_the_steps_before_the_first_step_to_run(
    steps: list[tuple[str, StepPhase, Any]], from_step: str | None, reused: list[str], first: str
) -> None:
    phase = RunPhase.FAILED if any(p is F for _, p, _ in steps) else RunPhase.SUCCEEDED
    spec = plan(finished_run(phase, *steps), from_step)
    assert spec.of == "orig" and spec.from_step == first
    assert [s.id for s in spec.steps] == reused
    outputs = {step_id: output for step_id, _, output in steps}
    assert [s.output for s in spec.steps] == [outputs[i] for i in reused]


@pytest.mark.parametrize(
    ("phase", "steps", "from_step", "words", "usage"),
    [
        (RunPhase.RUNNING, [("a", S, 1)], "a", ["still Running", "cancel it"], False),
        (RunPhase.SUCCEEDED, [("a", S, 1)], None, ["no failed step", "--from", "one of: a"], True),
        (RunPhase.FAILED, [("a", S, 1), ("b", F, None)], "zzz", ["no step 'zzz'", "one of: a, b"], False),
        (
            RunPhase.CANCELLED,
            [("a", C, None), ("b", S, 2)],
            "b",
            ["'a'", "ended Cancelled", "--from a"],
            True,
        ),
    ],
)
def test_plan_refuses_what_cannot_be_rerun_and_says_what_to_do(
    phase: RunPhase,
    steps: list[tuple[str, StepPhase, Any]],
    from_step: str | None,
    words: list[str],
    usage: bool,
) -> None:
    with pytest.raises(RerunError) as caught:
        plan(finished_run(phase, *steps), from_step)
    for word in words:
        assert word in str(caught.value)
    assert caught.value.usage is usage


def rerun_of(*reused: tuple[str, Any]) -> WorkflowRun:
    run = make_run()
    run.metadata.name = "orig-rerun-x"
    run.spec.rerun = RerunSpec(
        of="orig", from_step="enrich", steps=[ReusedStep(id=i, name=i, output=o) for i, o in reused]
    )
    return run


def test_seed_marks_reused_steps_succeeded_and_not_run() -> None:
    spec = RerunSpec(of="orig", from_step="b", steps=[ReusedStep(id="a", name="a", type=StepType.SLEEP)])
    (step,) = seed(spec, T0)
    assert (step.id, step.type, step.phase, step.reused_from) == ("a", StepType.SLEEP, S, "orig")
    assert step.attempts == [] and step.attempt_count == 0


def test_a_rerun_starts_with_the_reused_outputs_and_never_runs_them() -> None:
    sim = Sim(rerun_of(("validate", {"rows": [1, 2]})))
    assert sim.status.rerun_of == "orig"
    (validate,) = sim.status.steps
    assert validate.phase is StepPhase.SUCCEEDED and validate.output == {"rows": [1, 2]}
    assert validate.attempts == []
    assert any(n.reason == "RerunStarted" for n in sim.decision.of(Note))
    # The runner replays validation from its output and reaches the next step: validation never runs.
    start = sim.only_start()
    assert start.step is None
    assert [(m.id, m.done, m.output) for m in start.state.steps] == [("validate", True, {"rows": [1, 2]})]
    sim.finish(ok("enrich", [3]))
    assert [s.id for s in sim.status.steps] == ["validate", "enrich"]
    assert [len(s.attempts) for s in sim.status.steps] == [0, 1]


def asked(run: WorkflowRun, *from_steps: str | None) -> WorkflowRun:
    run.spec.rerun_requests = [RerunRequest(from_step=f) for f in from_steps]
    return run


def test_rerun_requests_on_an_ended_run_start_one_rerun_each_once() -> None:
    run = asked(finished_run(RunPhase.FAILED, ("a", S, 1), ("b", F, None)), None, "a")
    decision = decide(run, Observed(), T0)
    starts = decision.of(StartRerun)
    assert [s.name for s in starts] == [rerun_name("orig", 0), rerun_name("orig", 1)]
    assert [(s.rerun.from_step, [r.id for r in s.rerun.steps]) for s in starts] == [("b", ["a"]), ("a", [])]
    assert decision.status.reruns == [s.name for s in starts]
    assert decision.status.rerun_requests_handled == 2
    # Decided again from the saved status: nothing new.
    again = decide(run.model_copy(update={"status": decision.status}), Observed(), T0)
    assert again.of(StartRerun) == [] and again.status == decision.status
    # One more request: one more rerun, after the others.
    more = asked(run.model_copy(update={"status": decision.status}), None, "a", "b")
    third = decide(more, Observed(), T0)
    assert [s.name for s in third.of(StartRerun)] == [rerun_name("orig", 2)]
    assert third.status.reruns == [*decision.status.reruns, rerun_name("orig", 2)]


def test_a_request_that_cannot_be_carried_out_is_refused_once_with_the_reason() -> None:
    run = asked(finished_run(RunPhase.FAILED, ("a", S, 1), ("b", F, None)), "zzz")
    decision = decide(run, Observed(), T0)
    assert decision.of(StartRerun) == [] and decision.status.reruns == []
    (note,) = [n for n in decision.of(Note) if n.reason == "RerunRefused"]
    assert note.warning and "spec.rerunRequests[0]" in note.message and "no step 'zzz'" in note.message
    assert decision.status.rerun_requests_handled == 1


def test_requests_wait_while_the_run_goes_on() -> None:
    sim = Sim(asked(make_run(), None))
    assert sim.decision.of(StartRerun) == [] and sim.status.rerun_requests_handled == 0


def test_deciding_a_rerun_twice_gives_the_same_answer() -> None:
    run = rerun_of(("a", 1))
    first, second = decide(run, Observed(), T0), decide(run, Observed(), T0)
    assert first.status == second.status and first.actions == second.actions


def test_a_succeeded_attempt_keeps_its_log_tail() -> None:
    sim = Sim(make_run())
    (active,) = sim.status.active
    out = Outcome(
        active.name,
        ExitKind.EXITED,
        ok("a", 1),
        exit_code=0,
        log_tail="hello\nworld",
        finished_at=T0 + timedelta(seconds=1),
    )
    sim.step(Observed(outcomes=[out]))
    step = sim.run.step("a")
    assert step is not None and [a.log_tail for a in step.attempts] == ["hello\nworld"]
    assert isinstance(sim.decision.of(StartExecution)[0], StartExecution)
