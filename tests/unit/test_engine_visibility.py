"""What a user watching a run sees: the step running and its attempt, progress without a total, and one
note (a Kubernetes Event in the cluster) per transition, in order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine import Sim, err, make_run, ok, ref

from kubestep.api.report import Report, ReportKind
from kubestep.api.run import StepPhase, StepStatus, WorkflowRunStatus
from kubestep.api.workflow import Backoff, RetryPolicy
from kubestep.engine import Note, RequeueAt
from kubestep.engine.decide import progress


def _then(report: Report, step_id: str) -> Report:
    return report.model_copy(update={"next": Report(kind=ReportKind.NEXT_STEP, step=ref(step_id))})


def _notes(sim: Sim) -> list[tuple[str, str]]:
    return [(n.reason, n.message) for n in sim.decision.of(Note)]


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([], "0 done"),
        ([StepPhase.SUCCEEDED, StepPhase.RUNNING], "1 done"),
        ([StepPhase.SUCCEEDED] * 3 + [StepPhase.FAILED, StepPhase.RETRYING], "3 done, 1 failed"),
        ([StepPhase.SUCCEEDED, StepPhase.CANCELLED], "1 done"),
    ],
)
def test_progress_counts_steps_done_and_failed_without_a_total(
    phases: list[StepPhase], expected: str
) -> None:
    status = WorkflowRunStatus(
        steps=[StepStatus(id=f"s{i}", name="s", phase=p) for i, p in enumerate(phases)]
    )
    assert progress(status) == expected


def test_the_running_step_its_attempt_and_each_transition_are_visible_once_in_order() -> None:
    policy = RetryPolicy(limit=4, backoff=Backoff(initial="10s", factor=2, max="1h", jitter="0s"))
    sim = Sim(make_run(retries=policy))
    assert _notes(sim) == [("RunStarted", "run started by event 'app/go'")]
    assert (sim.status.current_step, sim.status.current_attempt) == ("(next)", 1)

    # The first execution's step is known only from its report: its start is told with its end.
    sim.finish(_then(ok("validate", {"rows": 3}), "enrich"))
    (first,) = sim.run.step("validate").attempts  # type: ignore[union-attr]
    assert [r for r, _ in _notes(sim)] == ["StepStarted", "StepSucceeded", "StepStarted"]
    assert _notes(sim)[0][1] == f"step 'validate' attempt 1 started (execution {first.job})"
    assert _notes(sim)[2][1] == "step 'enrich' attempt 1 started"
    assert (sim.status.current_step, sim.status.current_attempt, sim.status.progress) == (
        "enrich",
        1,
        "1 done",
    )

    sim.finish(err("enrich"))
    assert _notes(sim) == [
        ("AttemptFailed", "step 'enrich' attempt 1 failed (Error) ConnectionError: down"),
        ("RetryScheduled", "step 'enrich' attempt 2 at 2026-03-01T12:00:12Z (in 10s)"),
    ]
    assert sim.decision.of(Note)[0].warning and not sim.decision.of(Note)[1].warning
    # Waiting to retry: the step and the attempt it waits for.
    assert (sim.status.current_step, sim.status.current_attempt) == ("enrich", 2)
    (requeue,) = sim.decision.of(RequeueAt)

    sim.step(at=requeue.when)
    assert _notes(sim) == [("StepStarted", "step 'enrich' attempt 2 started")]
    assert (sim.status.current_step, sim.status.current_attempt) == ("enrich", 2)
    sim.step(at=requeue.when + timedelta(seconds=1))
    assert _notes(sim) == []  # nothing changed: nothing told again

    sim.finish(
        Report(
            kind=ReportKind.STEP_SUCCEEDED,
            step=ref("enrich"),
            output=1,
            next=Report(kind=ReportKind.COMPLETED, output={"ok": True}),
        )
    )
    assert [r for r, _ in _notes(sim)] == ["StepSucceeded", "RunSucceeded"]
    assert (sim.status.current_step, sim.status.current_attempt, sim.status.progress) == ("", None, "2 done")


def test_a_step_failing_for_good_tells_the_attempt_then_the_step() -> None:
    sim = Sim(make_run(retries=RetryPolicy(limit=0)))
    sim.finish(err("enrich"))
    reasons = [r for r, _ in _notes(sim)]
    assert reasons[:3] == ["StepStarted", "AttemptFailed", "StepFailed"]
    assert sim.status.progress == "0 done, 1 failed"
