"""Every event has an id and a time, wherever it comes from: an Event object without ``spec.id`` and
``spec.ts`` (the operator), the test harness, and events one workflow sends to another's wait."""

from __future__ import annotations

from datetime import UTC, datetime

import kubestep
from kubestep.api.base import ObjectMeta
from kubestep.api.event import Event, EventSpec, completed_payload
from kubestep.api.run import WorkflowRun
from kubestep.api.workflow import Trigger, Workflow, WorkflowSpec
from kubestep.controller import builders, observe
from kubestep.testing import run_workflow

CREATED = datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC)


def _event(**spec: object) -> Event:
    return Event(
        metadata=ObjectMeta(name="upload-1", namespace="ns", uid="5f0c-uid", creation_timestamp=CREATED),
        spec=EventSpec.model_validate({"name": "app/go", **spec}),
    )


def _workflow() -> Workflow:
    spec = WorkflowSpec(triggers=[Trigger(event="app/go")], image="img", function="m:f")
    return Workflow(metadata=ObjectMeta(name="wf", namespace="ns"), spec=spec)


def test_an_event_object_without_id_and_ts_gets_its_uid_and_creation_time() -> None:
    payload = observe.event_payload(_event())
    assert (payload["id"], payload["ts"]) == ("5f0c-uid", "2026-03-01T12:00:07+00:00")
    run = WorkflowRun.model_validate(builders.event_run(_workflow(), _event(), "wf-run", CREATED))
    assert (run.spec.event.id, run.spec.event.ts) == ("5f0c-uid", CREATED)


def test_an_events_own_id_and_ts_are_kept() -> None:
    own = datetime(2026, 1, 1, tzinfo=UTC)
    event = _event(id="order-7", ts=own.isoformat())
    assert observe.event_payload(event)["id"] == "order-7"
    run = WorkflowRun.model_validate(builders.event_run(_workflow(), event, "wf-run", CREATED))
    assert (run.spec.event.id, run.spec.event.ts) == ("order-7", own)
    assert completed_payload({"name": "x", "id": "a", "ts": "t"}, "b", CREATED) == {
        "name": "x",
        "id": "a",
        "ts": "t",
    }


@kubestep.workflow("whoami")
def whoami(ctx, step):  # type: ignore[no-untyped-def]
    return {"id": ctx.event.id, "ts": ctx.event.ts}


def test_the_harness_gives_the_triggering_event_an_id_and_a_time() -> None:
    result = run_workflow(whoami, {"name": "app/go"})
    assert result.output["id"] and result.output["ts"]
    own = run_workflow(whoami, {"name": "app/go", "id": "mine", "ts": "2026-01-01T00:00:00+00:00"})
    assert own.output == {"id": "mine", "ts": "2026-01-01T00:00:00+00:00"}


@kubestep.workflow("asker")
def asker(ctx, step):  # type: ignore[no-untyped-def]
    step.send_event("kick", "app/kick", {"q": 1})
    answer = step.wait_for_event("hear", "app/answer", timeout="1h")
    return None if answer is None else {"id": answer.id, "ts": answer.ts, "data": answer.data}


@kubestep.workflow("answerer", trigger="app/kick")
def answerer(ctx, step):  # type: ignore[no-untyped-def]
    step.sleep("think", "1m")
    step.send_event("answer", "app/answer", {"a": 2})


def test_an_event_sent_by_another_workflow_reaches_a_wait_with_an_id_and_a_time() -> None:
    result = run_workflow(asker, {"name": "app/go"}, workflows=[answerer])
    assert result.phase == "Succeeded", result.error
    assert result.output["data"] == {"a": 2}
    assert result.output["id"] and result.output["ts"]


def test_events_given_to_the_harness_get_an_id_and_a_time() -> None:
    result = run_workflow(asker, {"name": "app/go"}, events=[{"name": "app/answer", "data": {"a": 3}}])
    assert result.output["data"] == {"a": 3}
    assert result.output["id"] and result.output["ts"]
