"""Admission cost under `spec.concurrency` with 1,000 queued runs: an operator pass, without the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kubestep.api.base import ObjectMeta
from kubestep.api.flow import Concurrency
from kubestep.api.run import RunEvent, WorkflowRef, WorkflowRun, WorkflowRunSpec, WorkflowRunStatus
from kubestep.api.workflow import Trigger, WorkflowSpec
from kubestep.engine.admission import admit, apply, candidate_of, settled

T0 = datetime(2026, 2, 1, tzinfo=UTC)
QUEUED = 1000
TENANTS = 50


def _objects(entries: list[Concurrency]) -> list[dict[str, Any]]:
    """1,000 runs as the API returns them, each queued once already (its key values kept)."""
    spec = WorkflowSpec(triggers=[Trigger(event="go")], image="img", function="m:f", concurrency=entries)
    runs = [
        WorkflowRun(
            metadata=ObjectMeta(name=f"run-{i:04}", creation_timestamp=T0 + timedelta(seconds=i)),
            spec=WorkflowRunSpec(
                workflow_ref=WorkflowRef(name="wf"),
                workflow=spec,
                event=RunEvent(name="go", data={"tenant": f"t{i % TENANTS}"}),
            ),
        )
        for i in range(QUEUED)
    ]
    objects = [r.to_dict() for r in runs]
    verdicts = admit([Concurrency(limit=1, key=e.key) for e in entries], [candidate_of(o) for o in objects])
    for obj, run in zip(objects, runs, strict=True):
        status = apply(run.status, verdicts.verdicts[run.metadata.name], T0)
        status.phase = status.phase.QUEUED
        obj["status"] = status.to_dict()
    return objects


def _pass(entries: list[Concurrency], objects: list[dict[str, Any]], save: bool = False) -> int:
    """What the operator computes in one pass: read every run, decide, build each changed status (and with
    ``save``, store it, as the API server would)."""
    decided = admit(entries, [candidate_of(o) for o in objects])
    by_name = {o["metadata"]["name"]: o for o in objects}
    changed = 0
    for name, verdict in decided.verdicts.items():
        if settled(by_name[name]["status"], verdict):
            continue
        current = WorkflowRunStatus.model_validate(by_name[name]["status"])
        status = apply(current, verdict, T0)
        changed += status != current
        if save:
            by_name[name]["status"] = status.to_dict()
    return changed


def bench_admission(measure: Callable[..., tuple[float, int]]) -> None:
    """Print the cost of one admission pass per queued run."""
    cases = {
        "one limit of 10": [Concurrency(limit=10)],
        f"10 per key over {TENANTS} keys, 100 in all": [
            Concurrency(limit=100),
            Concurrency(limit=10, key="event.data.tenant"),
        ],
    }
    for label, entries in cases.items():
        objects = _objects(entries)
        _pass(entries, objects, save=True)  # the queue as a pass finds it: slots taken, the rest waiting
        per_pass, _ = measure(lambda e=entries, o=objects: _pass(e, o), seconds=2.0)
        print(
            f"admission pass, {QUEUED} queued runs, {label}:  {per_pass / 1000:6.1f} ms/pass  "
            f"({per_pass / QUEUED:5.1f} µs per queued run; the API's list of the runs not included)"
        )
