"""`spec.cancelOn`: an arrived Event that matches cancels a run in flight; others change nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from test_engine import T0, Sim, make_run, ok

from kubestep.api.run import RunPhase, StepPhase
from kubestep.api.workflow import Workflow, WorkflowSpec
from kubestep.controller.workflows import readiness
from kubestep.engine import ArrivedEvent, CancelChild, Observed, StopExecution
from kubestep.engine.cancel import cancelled_by

TRIGGER = {"name": "app/go", "data": {"upload": "u1"}, "user": {}, "id": "", "ts": ""}


def spec(*rules: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "triggers": [{"event": "app/go"}],
            "image": "img",
            "function": "app.flows:main",
            "cancelOn": list(rules),
        }
    )


def arrived(name: str, at: float, source: str = "ev-1", **data: Any) -> ArrivedEvent:
    payload = {"name": name, "data": data, "user": {}, "id": "", "ts": ""}
    return ArrivedEvent(payload, T0 + timedelta(seconds=at), source)


@pytest.mark.parametrize(
    ("rules", "events", "expected"),
    [
        ([{"event": "app/stop"}], [arrived("app/stop", 5)], 0),
        ([{"event": "app/stop"}], [arrived("app/other", 5)], None),
        # Published before the run started: not for this run.
        ([{"event": "app/stop"}], [arrived("app/stop", -1)], None),
        (
            [{"event": "app/stop", "if": "async.data.upload == event.data.upload"}],
            [arrived("app/stop", 5, upload="u2")],
            None,
        ),
        (
            [{"event": "app/stop", "if": "async.data.upload == event.data.upload"}],
            [arrived("app/stop", 5, upload="u1")],
            0,
        ),
        # A candidate lacking the field is no match, not an error.
        (
            [{"event": "app/stop", "if": "async.data.upload == event.data.upload"}],
            [arrived("app/stop", 5)],
            None,
        ),
        ([{"event": "app/stop", "timeout": "10s"}], [arrived("app/stop", 11)], None),
        ([{"event": "app/stop", "timeout": "10s"}], [arrived("app/stop", 9)], 0),
        ([{"event": "app/a"}, {"event": "app/stop"}], [arrived("app/stop", 3)], 1),
    ],
)
def test_which_event_cancels(
    rules: list[dict[str, Any]], events: list[ArrivedEvent], expected: int | None
) -> None:
    found = cancelled_by(spec(*rules), TRIGGER, T0, events)
    assert (None if found is None else found.rule) == expected


def test_the_runs_own_trigger_never_cancels_it() -> None:
    assert (
        cancelled_by(spec({"event": "app/go"}), TRIGGER, T0, [arrived("app/go", 0, source="mine")], "mine")
        is None
    )


def test_the_earliest_matching_event_is_named() -> None:
    found = cancelled_by(
        spec({"event": "app/stop"}),
        TRIGGER,
        T0,
        [arrived("app/stop", 9, "late"), arrived("app/stop", 4, "early")],
    )
    assert found is not None and found.event.source == "early"
    assert found.message() == "cancelled by event 'app/stop' (Event early), matching spec.cancelOn[0]"


def test_at_most_five_rules() -> None:
    with pytest.raises(ValidationError, match="at most 5 items"):
        spec(*[{"event": f"app/stop{i}"} for i in range(6)])


def test_a_matching_event_cancels_the_run_stopping_its_executions_and_children() -> None:
    run = make_run()
    run.spec.workflow = spec({"event": "app/stop", "if": "async.data.upload == event.data.upload"})
    run.spec.event.data = {"upload": "u1"}
    sim = Sim(run)
    sim.finish(ok("a", 1).model_copy(update={"next": None}))
    (active,) = sim.status.active
    # A non-matching Event changes nothing.
    before = sim.status
    decision = sim.step(Observed(events=[arrived("app/stop", 3, upload="u2")]), at=T0 + timedelta(seconds=4))
    assert sim.status.phase is RunPhase.RUNNING and sim.status.active == before.active
    assert decision.of(StopExecution) == []
    decision = sim.step(
        Observed(events=[arrived("app/stop", 5, "stop-1", upload="u1")]), at=T0 + timedelta(seconds=6)
    )
    assert sim.status.phase is RunPhase.CANCELLED
    assert sim.status.error is not None and sim.status.error.type == "Cancelled"
    assert "Event stop-1" in sim.status.error.message
    assert decision.of(StopExecution) == [StopExecution(active.name, "Cancelled")]
    assert all(s.phase is not StepPhase.RUNNING for s in sim.status.steps)
    assert decision.of(CancelChild) == []


def test_a_cancel_on_expression_that_does_not_compile_makes_the_workflow_not_ready() -> None:
    workflow = Workflow(spec=spec({"event": "app/stop", "if": "async.data.upload =="}))
    condition = readiness(workflow)
    assert condition.status == "False" and "spec.cancelOn[0].if" in condition.message
