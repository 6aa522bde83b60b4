"""Start gates (`spec.rateLimit`, `spec.singleton`): the pure decision, table by table, on an injected clock;
the slot `spec.singleton` implies in admission; the engine's side of a replaced run; the models' rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from kubestep.api.base import ObjectMeta
from kubestep.api.flow import ConcurrencyScope, QueueReason
from kubestep.api.run import RunEvent, RunPhase, WorkflowRef, WorkflowRun, WorkflowRunSpec
from kubestep.api.workflow import RateLimit, Singleton, Trigger, Workflow, WorkflowSpec
from kubestep.controller.workflows import readiness
from kubestep.engine import Observed, decide
from kubestep.engine.admission import Candidate, admit, entries, must_wait
from kubestep.engine.gates import Gate, Outcome, Seen, gate, seen, seen_of
from kubestep.engine.history import Finished, collect

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**flow: Any) -> WorkflowSpec:
    return WorkflowSpec(triggers=[Trigger(event="go")], image="img", function="m:f", **flow)


def event(n: int, tenant: str = "a") -> dict[str, Any]:
    return {"name": "go", "id": f"ev-{n}", "data": {"tenant": tenant}}


def run(name: str, created: float, tenant: str = "a", n: int | None = None, **kw: Any) -> Seen:
    number = n if n is not None else int(name.strip("r") or 0) + 100
    return Seen(name=name, created=at(created), event=event(number, tenant), **kw)


PER_MINUTE = {"rate_limit": RateLimit(limit=2, period="1m")}
PER_TENANT = {"rate_limit": RateLimit(limit=1, period="1m", key="event.data.tenant")}
SKIP = {"singleton": Singleton(key="event.data.tenant")}
CANCEL = {"singleton": Singleton(key="event.data.tenant", mode="Cancel")}


@pytest.mark.parametrize(
    ("flow", "runs", "now", "tenant", "outcome", "cancel"),
    [
        pytest.param({}, [run("r1", 0)], 1, "a", Outcome.START, (), id="no gate: everything starts"),
        pytest.param(PER_MINUTE, [run("r1", 0)], 1, "a", Outcome.START, (), id="under the limit"),
        pytest.param(
            PER_MINUTE, [run("r1", 0), run("r2", 30)], 31, "a", Outcome.RATE_LIMITED, (), id="at the limit"
        ),
        pytest.param(
            PER_MINUTE,
            [run("r1", 0, finished=True), run("r2", 30, finished=True)],
            31,
            "a",
            Outcome.RATE_LIMITED,
            (),
            id="finished runs count: the limit is on starts",
        ),
        pytest.param(
            PER_MINUTE,
            [run("r1", 0), run("r2", 30)],
            60.5,
            "a",
            Outcome.RATE_LIMITED,
            (),
            id="a stamp counts a second longer: the run may have been created at .999",
        ),
        pytest.param(
            PER_MINUTE, [run("r1", 0), run("r2", 30)], 61, "a", Outcome.START, (), id="the window slides"
        ),
        pytest.param(
            PER_MINUTE,
            [run("r1", 10, by_event=False), run("r2", 30)],
            31,
            "a",
            Outcome.START,
            (),
            id="reruns, children and failure handlers are not counted",
        ),
        pytest.param(PER_TENANT, [run("r1", 0, "b")], 1, "a", Outcome.START, (), id="another key"),
        pytest.param(PER_TENANT, [run("r1", 0, "a")], 1, "a", Outcome.RATE_LIMITED, (), id="same key"),
        pytest.param(
            PER_TENANT,
            [run("r1", 0, "a", n=7)],
            1,
            "a",
            Outcome.START,
            (),
            id="its own run (a pass cut short) is not counted against it",
        ),
        pytest.param(SKIP, [run("r1", 0, "a")], 1, "a", Outcome.SINGLETON_SKIPPED, (), id="skip: active"),
        pytest.param(
            SKIP, [run("r1", 0, "a", finished=True)], 1, "a", Outcome.START, (), id="skip: the run ended"
        ),
        pytest.param(SKIP, [run("r1", 0, "b")], 1, "a", Outcome.START, (), id="skip: another key"),
        pytest.param(
            SKIP,
            [run("r1", 0, "a", cancelling=True)],
            1,
            "a",
            Outcome.START,
            (),
            id="skip: a run being cancelled is not active (the new one queues behind it)",
        ),
        pytest.param(CANCEL, [run("r1", 0, "a")], 1, "a", Outcome.START, ("r1",), id="cancel: replaced"),
        pytest.param(
            CANCEL,
            [run("r2", 5, "a"), run("r1", 0, "a"), run("r3", 0, "b")],
            6,
            "a",
            Outcome.START,
            ("r1", "r2"),
            id="cancel: every active run of the key, oldest first",
        ),
        pytest.param(
            {**CANCEL, **PER_TENANT},
            [run("r1", 0, "a")],
            1,
            "a",
            Outcome.RATE_LIMITED,
            (),
            id="a rate-limited event cancels nothing",
        ),
    ],
)
def test_gate(
    flow: dict[str, Any],
    runs: list[Seen],
    now: float,
    tenant: str,
    outcome: Outcome,
    cancel: tuple[str, ...],
) -> None:
    verdict = gate("wf", spec(**flow), event(7, tenant), "ev-object", runs, at(now))
    assert (verdict.outcome, verdict.cancel) == (outcome, cancel)
    assert verdict.starts is (outcome is Outcome.START)


def test_messages_name_the_workflow_the_key_and_the_run() -> None:
    limited = gate("wf", spec(**PER_TENANT), event(7), "e7", [run("r1", 0)], at(1))
    assert limited.message == (
        "rate limited: spec.rateLimit of workflow wf allows 1 run(s) per 1m for key event.data.tenant = 'a', "
        "and 1 started in the last 1m (the latest: r1); the event started nothing"
    )
    skipped = gate("wf", spec(**SKIP), event(7), "e7", [run("r1", 0)], at(1))
    assert skipped.message == (
        "skipped: spec.singleton of workflow wf allows one active run for key event.data.tenant = 'a', "
        "and run r1 is active; the event started nothing"
    )
    replaced = gate("wf", spec(**CANCEL), event(7), "e7", [run("r1", 0)], at(1))
    assert replaced.cancel_reason == (
        "cancelled by Event e7 ('go'), which replaced the run under spec.singleton (mode Cancel) "
        "for key event.data.tenant = 'a'"
    )
    assert "cancelled the active r1" in replaced.message


def test_a_key_that_fails_counts_under_the_empty_key() -> None:
    flow = {"singleton": Singleton(key="event.data.missing")}
    assert (
        gate("wf", spec(**flow), event(7), "e7", [run("r1", 0)], at(1)).outcome is Outcome.SINGLETON_SKIPPED
    )


def test_one_event_at_a_time_never_exceeds_the_limit() -> None:
    """Events decided one after another (as under the operator's lock), each start becoming a run."""
    flow = spec(rate_limit=RateLimit(limit=3, period="10s"))
    runs: list[Seen] = []
    outcomes = []
    for n in range(40):
        now = at(n * 0.5)
        verdict = gate("wf", flow, event(n), f"e{n}", runs, now)
        outcomes.append(verdict.outcome)
        if verdict.starts:
            # The API server stamps whole seconds.
            runs.append(Seen(f"r{n}", now.replace(microsecond=0), event(n)))
    starts = [r.created for r in runs]
    for first in starts:
        in_window = [t for t in starts if first <= t < first + timedelta(seconds=10)]
        assert len(in_window) <= 3
    assert 4 <= len(runs) <= 6  # 20 s of events: about 3 per 10 s, never more


def _run(**status: Any) -> WorkflowRun:
    return WorkflowRun.model_validate(
        {
            "metadata": ObjectMeta(name="r1", creation_timestamp=T0).model_dump(),
            "spec": WorkflowRunSpec(
                workflow_ref=WorkflowRef(name="wf"),
                workflow=spec(**CANCEL),
                event=RunEvent(name="go", data={"tenant": "a"}, id="x"),
            ).model_dump(by_alias=True),
            "status": status,
        }
    )


def test_seen_reads_a_run_and_its_api_form_alike() -> None:
    obj = _run(phase="Running").to_dict()
    obj["metadata"]["creationTimestamp"] = "2026-03-01T12:00:00Z"
    assert seen_of(obj, "m:f") == seen(_run(phase="Running"), "m:f")
    assert seen_of(obj, "m:handler").by_event is False  # a failure handler's run


def test_the_singleton_slot_queues_a_replacing_run_until_the_replaced_one_ends() -> None:
    caps = entries(spec(**CANCEL))
    assert [(c.limit, c.key, c.scope) for c in caps] == [(1, "event.data.tenant", ConcurrencyScope.RUNS)]
    data = {"name": "go", "data": {"tenant": "a"}}
    old = Candidate("old", at(0), data, started=True, admitted=True, admitted_at=at(0))
    new = Candidate("new", at(5), data)
    waits = admit(caps, [old, new], at(6)).verdicts["new"]
    assert not waits.admit and waits.reason == QueueReason.SINGLETON_ACTIVE
    assert waits.waiting_for == "SingletonActive event.data.tenant=a"
    assert "spec.singleton allows one active run for key event.data.tenant = 'a'" in waits.message
    ended = Candidate("old", at(0), data, finished=True, started=True, admitted=True, admitted_at=at(0))
    assert admit(caps, [ended, new], at(7)).verdicts["new"].admit
    assert must_wait(_run())


def test_a_replaced_run_ends_cancelled_naming_the_event_that_replaced_it() -> None:
    replaced = _run(phase="Running", startedAt=T0.isoformat())
    replaced.spec.cancel = True
    replaced.spec.cancel_reason = "cancelled by Event e7 ('go'), which replaced the run under spec.singleton"
    status = decide(replaced, Observed([], [], []), at(3)).status
    assert status.phase is RunPhase.CANCELLED
    assert status.error is not None and status.error.message == replaced.spec.cancel_reason


@pytest.mark.parametrize(
    ("model", "fields", "problem"),
    [
        (RateLimit, {"limit": 0, "period": "1m"}, "greater than or equal to 1"),
        (RateLimit, {"limit": 1, "period": "500ms"}, "rateLimit.period is shorter than 1s"),
        (RateLimit, {"limit": 1, "period": "1 minute"}, "'1 minute' is not a duration"),
        (Singleton, {"mode": "Sometimes"}, "'Skip' or 'Cancel'"),
        (Singleton, {"key": ""}, "at least 1 character"),
    ],
)
def test_bad_fields_are_refused_with_what_to_write(model: type, fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        model.model_validate(fields)


def test_gate_default_starts() -> None:
    assert Gate().starts and Gate().outcome is Outcome.START


@pytest.mark.parametrize(
    ("flow", "field"),
    [
        ({"rate_limit": RateLimit(limit=1, period="1m", key="event.data.(")}, "spec.rateLimit.key"),
        ({"singleton": Singleton(key="event.data.(")}, "spec.singleton.key"),
    ],
)
def test_a_key_that_does_not_compile_makes_the_workflow_not_ready(flow: dict[str, Any], field: str) -> None:
    condition = readiness(Workflow(metadata=ObjectMeta(name="wf"), spec=spec(**flow)))
    assert (condition.status, condition.reason) == ("False", "InvalidExpression")
    assert condition.message.startswith(f"{field}: CEL expression 'event.data.(' does not compile")


def test_history_keeps_runs_the_rate_limit_still_counts() -> None:
    limited = spec(rate_limit=RateLimit(limit=1, period="1m"), history={"succeeded": 0, "failed": 0})
    young = Finished("young", RunPhase.SUCCEEDED, at(20), created=at(0))
    old = Finished("old", RunPhase.SUCCEEDED, at(20), created=at(-120))
    plan = collect(limited, [young, old], at(30))
    # Deleted, the young run would no longer be counted and a second event would start a run.
    assert plan.delete == ["old"]
    assert plan.next == at(61)  # collected once the rate limit has stopped counting it
    assert collect(limited, [young], at(61)).delete == ["young"]
