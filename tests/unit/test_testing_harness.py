"""``kubestep.testing.run_workflow``: whole runs in-process, through the real engine, on a virtual clock."""

from __future__ import annotations

import importlib
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import kubestep
from kubestep.api.run import AttemptResult, StepPhase
from kubestep.testing import run_workflow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "contacts"
UPLOADED = "api/contact_list.uploaded"


@pytest.fixture
def contacts(monkeypatch, tmp_path):
    """The contacts example, importable, reading the example's uploads and writing under ``tmp_path``."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    loaded = sys.modules.get("contacts")
    if loaded is not None and getattr(loaded, "__file__", None) is None:
        # ``examples`` is on pytest's pythonpath, where ``contacts`` is only a namespace package.
        for name in [m for m in sys.modules if m == "contacts" or m.startswith("contacts.")]:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("CONTACTS_STORAGE_DIR", str(EXAMPLE / "storage"))
    monkeypatch.setenv("CONTACTS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CONTACTS_ENRICH_FAILURES", raising=False)
    workflows = importlib.import_module("contacts.workflows")
    return SimpleNamespace(workflow=workflows.process_contacts_csv_upload, data=tmp_path)


def upload(filename: str) -> dict:
    return {"name": UPLOADED, "data": {"filename": f"uploads/{filename}"}, "user": {"id": "user-42"}}


def enriched(rows: list[dict], attempt: int = 1) -> list[dict]:
    """A stand-in for the address service."""
    return [{**row, "zip": "12345"} for row in rows]


class FlakyEnrichment:
    """Fails with ``error`` for the first ``failures`` calls, then enriches."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, rows: list[dict], attempt: int = 1) -> list[dict]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return enriched(rows)


def crm_names(data: Path) -> list[str]:
    db = data / "crm.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM contacts ORDER BY name")]


# The contacts example ------------------------------------------------------------------------------------


def test_the_contacts_import_succeeds_with_stubbed_enrichment_and_real_validation(contacts):
    result = run_workflow(
        contacts.workflow, upload("contacts.csv"), steps={"enrich-address-information": enriched}
    )

    assert result.phase == "Succeeded"
    assert result.error is None
    assert result.output == {"imported": 5}
    assert list(result.steps) == [
        "validate-upload-contents",
        "enrich-address-information",
        "create-contacts-in-crm",
        "notify-user-of-successful-import",
        "announce-import-completed",
    ]
    assert all(s.phase is StepPhase.SUCCEEDED for s in result.steps.values())
    validated = result.steps["validate-upload-contents"].output
    assert validated["valid"] is True
    assert [r["name"] for r in validated["rows"]][:2] == ["Ada Lovelace", "Alan Turing"]
    assert all(r["zip"] == "12345" for r in result.steps["enrich-address-information"].output)
    assert result.steps["create-contacts-in-crm"].output == {"total_users_added": 5}
    assert len(crm_names(contacts.data)) == 5
    assert len(list((contacts.data / "outbox").iterdir())) == 1


def test_a_flaky_step_is_retried_with_the_default_backoff_and_then_succeeds(contacts):
    flaky = FlakyEnrichment(2, ConnectionError("address service unreachable"))

    result = run_workflow(
        contacts.workflow, upload("contacts.csv"), steps={"enrich-address-information": flaky}
    )

    assert result.phase == "Succeeded"
    assert flaky.calls == 3
    step = result.steps["enrich-address-information"]
    assert step.attempt_count == 3
    assert [a.result for a in step.attempts] == [
        AttemptResult.ERROR,
        AttemptResult.ERROR,
        AttemptResult.SUCCEEDED,
    ]
    first, second, third = step.attempts
    assert first.message == "address service unreachable"
    # 15s, then 30s (factor 2), each plus up to 30s of jitter.
    assert 15 <= first.retry_delay_seconds <= 45
    assert 30 <= second.retry_delay_seconds <= 60
    assert third.retry_delay_seconds is None
    # The virtual clock really waited that long between attempts.
    gap = (second.started_at - first.finished_at).total_seconds()
    assert gap == pytest.approx(first.retry_delay_seconds, abs=1)
    # Only the flaky step was repeated.
    assert result.steps["validate-upload-contents"].attempt_count == 1
    assert len(crm_names(contacts.data)) == 5


def test_a_step_that_keeps_failing_fails_the_run_once_retries_are_exhausted(contacts):
    flaky = FlakyEnrichment(100, ConnectionError("address service unreachable"))

    result = run_workflow(
        contacts.workflow, upload("contacts.csv"), steps={"enrich-address-information": flaky}, retries=2
    )

    assert result.phase == "Failed"
    assert flaky.calls == 3
    assert result.error.step == "enrich-address-information"
    assert result.error.type == "ConnectionError"
    assert "create-contacts-in-crm" not in result.steps
    assert crm_names(contacts.data) == []


def test_a_non_retriable_error_fails_the_run_after_one_attempt(contacts):
    flaky = FlakyEnrichment(100, kubestep.NonRetriableError("this account may not use the address service"))

    result = run_workflow(
        contacts.workflow, upload("contacts.csv"), steps={"enrich-address-information": flaky}
    )

    assert result.phase == "Failed"
    assert flaky.calls == 1
    step = result.steps["enrich-address-information"]
    assert step.phase is StepPhase.FAILED
    assert [a.result for a in step.attempts] == [AttemptResult.NON_RETRIABLE]
    assert result.error.type == "NonRetriableError"
    assert "may not use the address service" in result.error.message
    assert "create-contacts-in-crm" not in result.steps


def test_an_exception_instance_as_stub_is_raised(contacts):
    result = run_workflow(
        contacts.workflow,
        upload("contacts.csv"),
        steps={"enrich-address-information": kubestep.NonRetriableError("stubbed failure")},
    )

    assert result.phase == "Failed"
    assert result.steps["enrich-address-information"].attempt_count == 1
    assert result.error.message == "stubbed failure"


def test_an_invalid_upload_notifies_the_user_and_never_reaches_the_crm(contacts):
    result = run_workflow(
        contacts.workflow, upload("contacts-invalid.csv"), steps={"enrich-address-information": enriched}
    )

    assert result.phase == "Succeeded"
    assert list(result.steps) == ["validate-upload-contents", "notify-user-of-invalid-contents"]
    assert "create-contacts-in-crm" not in result.steps
    errors = result.output["errors"]
    assert result.output["imported"] == 0
    assert "missing column 'city'" in errors
    assert "line 3: invalid email 'not-an-email'" in errors
    assert crm_names(contacts.data) == []
    assert result.sent_events == []


def test_sent_events_lists_what_send_event_published(contacts):
    result = run_workflow(
        contacts.workflow, upload("contacts.csv"), steps={"enrich-address-information": enriched}
    )

    (event,) = result.sent_events
    assert event["name"] == "api/contact_list.imported"
    assert event["data"] == {"filename": "uploads/contacts.csv", "total_users_added": 5}
    assert event["user"] == {"id": "user-42"}
    assert event["id"]  # an id was assigned
    assert result.steps["announce-import-completed"].output == [event["id"]]


# Waits, invokes and events -------------------------------------------------------------------------------


@kubestep.workflow("await-approval")
def await_approval(ctx, step):
    approval = step.wait_for_event(
        "wait-for-approval", "app/approved", timeout="3d", if_="async.data.order == event.data.order"
    )
    if approval is None:
        return {"approved": False}
    return {"approved": True, "by": approval.data["by"], "event": approval.name}


ORDER = {"name": "app/order.placed", "data": {"order": 7}}


def test_a_wait_receives_a_matching_event():
    events = [
        {"name": "app/rejected", "data": {"order": 7, "by": "eve"}},  # another name
        {"name": "app/approved", "data": {"order": 8, "by": "bob"}},  # fails the condition
        {"name": "app/approved", "data": {"order": 7, "by": "ann"}},
    ]

    result = run_workflow(await_approval, ORDER, events=events)

    assert result.phase == "Succeeded"
    assert result.output == {"approved": True, "by": "ann", "event": "app/approved"}
    wait = result.steps["wait-for-approval"]
    assert wait.output["data"] == {"order": 7, "by": "ann"}
    assert wait.finished_at == wait.started_at  # it did not wait for the timeout


def test_a_wait_with_no_matching_event_returns_none_after_its_timeout():
    events = [{"name": "app/approved", "data": {"order": 8, "by": "bob"}}]

    result = run_workflow(await_approval, ORDER, events=events)

    assert result.phase == "Succeeded"
    assert result.output == {"approved": False}
    wait = result.steps["wait-for-approval"]
    assert wait.output is None
    assert (wait.finished_at - wait.started_at).total_seconds() == 3 * 86400


@kubestep.workflow("price-order")
def price_order(ctx, step):
    prices = step.run("look-up-prices", lambda: {"apple": 2, "pear": 3})
    return {"total": sum(prices[item] for item in ctx.event.data["items"])}


@kubestep.workflow("checkout")
def checkout(ctx, step):
    priced = step.invoke("price", price_order, {"items": ["apple", "pear", "pear"]})
    step.sleep("wait-a-bit", "10m")
    return step.run("charge", lambda: {"charged": priced["total"]})


def test_invoke_runs_the_other_workflow_and_returns_its_output():
    result = run_workflow(checkout, {"name": "app/checkout"}, workflows=[price_order])

    assert result.phase == "Succeeded"
    assert result.steps["price"].output == {"total": 8}
    assert result.output == {"charged": 8}
    assert "look-up-prices" not in result.steps  # the child's steps belong to the child run
    sleep = result.steps["wait-a-bit"]
    assert (sleep.finished_at - sleep.started_at).total_seconds() == 600


def test_invoke_of_a_workflow_not_given_fails_the_step():
    result = run_workflow(checkout, {"name": "app/checkout"})

    assert result.phase == "Failed"
    assert result.steps["price"].phase is StepPhase.FAILED
    assert "price-order" in result.error.message


def _nested_workflows():
    """Two workflows whose functions have the same ``__name__``, as factories and tests often make."""

    @kubestep.workflow("child-flow")
    def flow(ctx, step):
        return step.run("child-step", lambda: "from the child")

    child = flow

    @kubestep.workflow("parent-flow")
    def flow(ctx, step):
        return {"child said": step.invoke("call-child", "child-flow")}

    return flow, child


def test_workflows_with_functions_of_the_same_name_stay_distinct():
    parent, child = _nested_workflows()

    result = run_workflow(parent, {"name": "go"}, workflows=[child])

    assert list(result.steps) == ["call-child"]
    assert result.output == {"child said": "from the child"}


def test_a_wait_does_not_receive_the_event_its_own_run_sent_before_it():
    @kubestep.workflow("echo")
    def echo(ctx, step):
        step.send_event("ask", "app/question", {"q": 1})
        return step.wait_for_event("hear", "app/question", timeout="1m")

    result = run_workflow(echo, {"name": "go"})
    assert result.phase == "Succeeded"
    assert result.output is None, "the event was published before the wait began"
