"""A run's end as an Event (`kubestep/run.*`), `spec.onFailure`, and the reserved `kubestep/` prefix."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from test_engine import T0, Sim, err, make_run, ok

from kubestep.api.event import Event
from kubestep.api.report import Report, ReportError, ReportKind
from kubestep.api.run import ErrorInfo, RunEvent, RunPhase, WorkflowRun
from kubestep.api.workflow import WorkflowSpec
from kubestep.controller import builders
from kubestep.engine import AnnounceEnd, ExitKind, Observed, Outcome, RequeueAt, decide
from kubestep.engine.lifecycle import end_event, end_event_name, on_failure_function


def ended(phase: RunPhase, event: str = "app/go", error: ErrorInfo | None = None) -> WorkflowRun:
    run = make_run()
    run.spec.event = RunEvent(name=event, data={"x": 1}, user={"id": "u1"})
    run.status.phase = phase
    run.status.error = error
    return run


@pytest.mark.parametrize(
    ("phase", "name"),
    [
        (RunPhase.FAILED, "kubestep/run.failed"),
        (RunPhase.CANCELLED, "kubestep/run.cancelled"),
        (RunPhase.SUCCEEDED, "kubestep/run.finished"),
    ],
)
def test_a_finished_run_is_announced_under_a_name_derived_from_the_run(phase: RunPhase, name: str) -> None:
    error = ErrorInfo(type="Boom", message="it broke", step="explode")
    found = end_event(ended(phase, error=error))
    assert found is not None and found.object_name == "kubestep.run.main-run"
    assert found.payload == {
        "name": name,
        "data": {
            "workflow": "main",
            "run": "main-run",
            "phase": phase.value,
            "error": {"type": "Boom", "message": "it broke", "step": "explode"},
            "event": {"name": "app/go", "data": {"x": 1}, "user": {"id": "u1"}, "id": "", "ts": ""},
        },
        "user": {"id": "u1"},
        "id": "kubestep.run.main-run",
    }


@pytest.mark.parametrize(
    ("phase", "event"),
    [
        (RunPhase.RUNNING, "app/go"),
        (RunPhase.WAITING, "app/go"),
        # A handler's own end starts no other handler: no chains.
        (RunPhase.FAILED, "kubestep/run.failed"),
        (RunPhase.SUCCEEDED, "kubestep/run.cancelled"),
    ],
)
def test_runs_that_announce_nothing(phase: RunPhase, event: str) -> None:
    assert end_event(ended(phase, event)) is None


def test_long_run_names_still_fit_an_object_name() -> None:
    name = end_event_name("r" * 260)
    assert len(name) <= 253 and name.startswith("kubestep.run.")
    assert name != end_event_name("r" * 259)


def test_the_end_is_announced_once_after_the_final_status_is_saved() -> None:
    sim = Sim(make_run())
    sim.finish(err("a", retriable=False))
    sim.finish(Report(kind=ReportKind.FAILED, error=ReportError(type="StepError", message="a failed")))
    # The decision that ends the run saves it owing the announcement, and asks to come back at once.
    assert sim.status.phase is RunPhase.FAILED and sim.status.announced is False
    assert sim.decision.of(AnnounceEnd) == [] and sim.decision.of(RequeueAt) == [RequeueAt(sim.now)]
    (announce,) = sim.step().of(AnnounceEnd)
    assert announce.name == "kubestep.run.main-run" and announce.payload["name"] == "kubestep/run.failed"
    assert announce.payload["data"]["error"]["type"] == "StepError"
    assert sim.status.announced is True
    # Decided again (a crash before the save, a restart): the same name, never a second one.
    assert sim.step(at=sim.now + timedelta(hours=1)).actions == []


@pytest.mark.parametrize(
    ("phase", "listeners", "published"),
    [
        (RunPhase.FAILED, None, True),  # unknown (`kubestep run`, older callers): always published
        (RunPhase.FAILED, frozenset(), False),
        (RunPhase.FAILED, frozenset({"kubestep/run.failed"}), True),
        (RunPhase.FAILED, frozenset({"kubestep/run.finished", "kubestep/run.cancelled"}), False),
        (RunPhase.SUCCEEDED, frozenset({"kubestep/run.finished"}), True),
        (RunPhase.SUCCEEDED, frozenset({"kubestep/run.failed"}), False),
        (RunPhase.CANCELLED, frozenset({"kubestep/run.cancelled"}), True),
    ],
)
def test_an_end_is_published_only_when_something_listens_for_it(
    phase: RunPhase, listeners: frozenset[str] | None, published: bool
) -> None:
    assert (end_event(ended(phase), listeners) is not None) is published


def test_a_run_ending_while_nothing_listens_publishes_nothing_and_owes_nothing() -> None:
    sim = Sim(make_run())
    sim.finish(err("a", retriable=False))
    run = sim.run.model_copy(update={"status": sim.status})
    failed = Report(kind=ReportKind.FAILED, error=ReportError(type="StepError", message="a failed"))
    (active,) = run.status.active
    observed = Observed(outcomes=[Outcome(active.name, ExitKind.EXITED, failed, 1)], listeners=frozenset())
    decision = decide(run, observed, sim.now)
    assert decision.status.phase is RunPhase.FAILED and decision.status.announced is None
    assert decision.of(AnnounceEnd) == [] and decision.of(RequeueAt) == []


def test_a_run_that_ended_before_announcements_existed_announces_nothing() -> None:
    run = ended(RunPhase.SUCCEEDED)
    assert run.status.announced is None
    assert decide(run, Observed(), T0).actions == []


def test_a_cancelled_run_announces_its_cancellation() -> None:
    sim = Sim(make_run())
    sim.finish(ok("a", 1))
    sim.run = sim.run.model_copy(update={"spec": sim.run.spec.model_copy(update={"cancel": True})})
    sim.step()
    assert sim.status.phase is RunPhase.CANCELLED
    (announce,) = sim.step().of(AnnounceEnd)
    assert announce.payload["name"] == "kubestep/run.cancelled"


def spec(**extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"triggers": [{"event": "app/go"}], "image": "img", "function": "app.flows:main"} | extra
    )


@pytest.mark.parametrize(
    ("workflow_spec", "event", "handler"),
    [
        (
            spec(onFailure={"function": "app.flows:cleanup"}),
            {"name": "kubestep/run.failed", "data": {"workflow": "main"}},
            "app.flows:cleanup",
        ),
        (
            spec(onFailure={"function": "app.flows:cleanup"}),
            {"name": "kubestep/run.failed", "data": {"workflow": "other"}},
            None,
        ),
        (
            spec(onFailure={"function": "app.flows:cleanup"}),
            {"name": "kubestep/run.cancelled", "data": {"workflow": "main"}},
            None,
        ),
        (spec(), {"name": "kubestep/run.failed", "data": {"workflow": "main"}}, None),
    ],
)
def test_on_failure_starts_a_handler_for_the_workflows_own_failures(
    workflow_spec: WorkflowSpec, event: dict[str, Any], handler: str | None
) -> None:
    assert on_failure_function("main", workflow_spec, event) == handler


def test_on_failure_needs_a_function() -> None:
    with pytest.raises(ValidationError, match="is not module:function"):
        spec(onFailure={"function": "cleanup"})


def event(object_name: str, name: str) -> dict[str, Any]:
    return {"metadata": {"name": object_name}, "spec": {"name": name}}


def test_users_cannot_publish_events_under_the_reserved_prefix() -> None:
    with pytest.raises(ValidationError, match="reserved for the events kubestep publishes itself"):
        Event.model_validate(event("my-event", "kubestep/run.failed"))
    Event.model_validate(event("kubestep.run.main-run", "kubestep/run.failed"))
    Event.model_validate(event("my-event", "api/kubestep/run.failed"))


def test_the_end_event_object() -> None:
    run = ended(RunPhase.FAILED, error=ErrorInfo(type="Boom", message="it broke"))
    run.metadata.namespace = "team-a"
    found = end_event(run)
    assert found is not None
    obj = builders.end_event(run, AnnounceEnd(found.object_name, found.payload))
    assert obj["metadata"]["name"] == "kubestep.run.main-run"
    assert obj["metadata"]["labels"]["kubestep.dev/run"] == "main-run"
    assert obj["spec"]["name"] == "kubestep/run.failed" and obj["spec"]["id"] == "kubestep.run.main-run"
    Event.model_validate(obj)
