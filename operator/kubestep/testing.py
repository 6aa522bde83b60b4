"""Run a workflow function in your own unit tests: no cluster, no processes, no real waiting.

The run goes through the same engine as in a cluster: steps are replayed and memoized, failures are
retried with the workflow's policy (on a virtual clock, so backoffs and sleeps take no time)::

    from kubestep.testing import run_workflow

    def test_import():
        result = run_workflow(
            process_contacts_csv_upload,
            event={"name": "api/contact_list.uploaded", "data": {"filename": "a.csv"}},
            steps={"enrich-address-information": [{"name": "Ada", "zip": "12345"}]},
        )
        assert result.phase == "Succeeded"
        assert result.steps["create-contacts-in-crm"].output == {"total_users_added": 1}
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from kubestep.api.base import ObjectMeta
from kubestep.api.event import completed_payload
from kubestep.api.run import ErrorInfo, RunEvent, StepStatus, WorkflowRun
from kubestep.api.workflow import RetryPolicy, Trigger, Workflow, WorkflowSpec
from kubestep.local.clock import VirtualClock
from kubestep.local.driver import Driver
from kubestep.local.executors import InProcessExecutor
from kubestep.sdk.workflow import WorkflowFunction


@dataclass
class TestRun:
    """The outcome of ``run_workflow``."""

    __test__ = False  # not a pytest test class

    phase: str
    """``Succeeded``, ``Failed`` or ``Cancelled``."""
    output: Any
    """What the function returned."""
    error: ErrorInfo | None
    """Why the run failed."""
    steps: dict[str, StepStatus]
    """Every step reached, by id, in order (with attempts, outputs and errors)."""
    sent_events: list[dict[str, Any]] = field(default_factory=list)
    """Events published with ``step.send_event``."""
    run: WorkflowRun | None = None
    """The whole run resource, as the operator would have written it."""


def _workflow(fn: WorkflowFunction, index: int, retries: RetryPolicy) -> Workflow:
    triggers = [Trigger(event=t.event, if_=t.if_) for t in fn.triggers] or [Trigger(event="kubestep/test")]
    # Functions are handed to the executor directly; the name only has to be unique per workflow, since
    # two workflows may well be functions of the same name (defined in different tests, say).
    function = f"kubestep_testing_{index}:{getattr(fn.fn, '__name__', 'workflow')}"
    spec = WorkflowSpec(triggers=triggers, image="local", function=function, retries=retries)
    return Workflow(metadata=ObjectMeta(name=fn.id), spec=spec)


def run_workflow(
    workflow: WorkflowFunction,
    event: dict[str, Any],
    *,
    steps: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    workflows: list[WorkflowFunction] | None = None,
    retries: RetryPolicy | int | None = None,
) -> TestRun:
    """Run ``workflow`` for ``event`` to its end and return what happened.

    ``steps`` replaces step functions by id or name: a value is returned as the output, an exception
    instance is raised (so retries and ``NonRetriableError`` can be tested), a callable is called with the
    step's arguments. Steps not listed run for real. ``events`` are offered to ``wait_for_event`` steps
    (each wait gets the first one that matches; none matching means the wait times out and returns None).
    ``workflows`` are other workflow functions ``step.invoke`` may start. ``retries`` overrides the retry
    policy (an int sets the limit); the default is the production default: 4 retries with backoff.
    """
    policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy()
    if isinstance(retries, int):
        policy = RetryPolicy(limit=retries)
    all_workflows = [workflow, *(workflows or [])]
    defs = {w.id: _workflow(w, i, policy) for i, w in enumerate(all_workflows)}
    functions = {defs[w.id].spec.function: w for w in all_workflows}
    clock = VirtualClock()
    executor = InProcessExecutor(functions, steps or {}, clock.now)
    driver = Driver(defs, executor, clock, threading.Event(), max_decisions=100_000)
    # Every event has an id and a time, as in the cluster.
    driver.standing_events = [completed_payload(e, uuid.uuid4().hex, clock.now()) for e in events or []]
    payload = {"name": event.get("name", "kubestep/test"), **event}
    run_event = RunEvent(
        name=payload["name"],
        data=payload.get("data") or {},
        user=payload.get("user") or {},
        id=payload.get("id") or None,
        ts=payload.get("ts") or None,
    )
    name = driver.create_run(workflow.id, run_event, f"{workflow.id}-{uuid.uuid4().hex[:8]}")
    (run,) = driver.drive([name])
    return TestRun(
        phase=run.status.phase.value,
        output=run.status.output,
        error=run.status.error,
        steps={s.id: s for s in run.status.steps},
        sent_events=driver.state.published,
        run=run,
    )
