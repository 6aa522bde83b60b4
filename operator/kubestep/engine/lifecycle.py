"""A run's end as an Event (`kubestep/run.failed`, `.cancelled`, `.finished`) and the `onFailure` handler.

Pure: which Event announces a run's end (its deterministic object name and payload) and which workflows
start a handler run from it. The operator publishes the Event once the run's final status is saved, under
a name derived from the run, so a crash at any point publishes it once: never twice, never not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubestep.api.event import SYSTEM_EVENT_PREFIX, SYSTEM_OBJECT_PREFIX
from kubestep.api.names import short_hash
from kubestep.api.run import RunPhase, WorkflowRun
from kubestep.api.workflow import WorkflowSpec

RUN_FAILED = "kubestep/run.failed"
RUN_CANCELLED = "kubestep/run.cancelled"
RUN_FINISHED = "kubestep/run.finished"
_BY_PHASE = {RunPhase.FAILED: RUN_FAILED, RunPhase.CANCELLED: RUN_CANCELLED, RunPhase.SUCCEEDED: RUN_FINISHED}
#: Events about runs: a run they started announces nothing, so handlers never chain.
RUN_EVENTS_PREFIX = "kubestep/run."
_MAX_OBJECT_NAME = 253


@dataclass(frozen=True)
class EndEvent:
    """The Event announcing a run's end."""

    object_name: str
    """Deterministic, from the run's name: publishing it twice is refused by the API server."""
    payload: dict[str, Any]
    """`name`, `data` (workflow, run, phase, error, event), `user` (the run's event's) and `id`."""


def announces(run: WorkflowRun) -> bool:
    """Whether ``run``'s end is published: not for runs that a run's end started (no handler chains)."""
    return not run.spec.event.name.startswith(RUN_EVENTS_PREFIX)


def end_event_name(run_name: str) -> str:
    """``kubestep.run.<run>``: one per run whatever its end (the reserved prefix the CRD rule accepts)."""
    name = f"{SYSTEM_OBJECT_PREFIX}{run_name}"
    if len(name) <= _MAX_OBJECT_NAME:
        return name
    return f"{name[: _MAX_OBJECT_NAME - 11]}-{short_hash(run_name, size=10)}"


def end_event(run: WorkflowRun, listeners: frozenset[str] | None = None) -> EndEvent | None:
    """The Event announcing ``run``'s end, once it ended (None before, or if it announces nothing).

    With ``listeners`` (the end Events something could receive), an end no one listens for is not
    published: an Event only reaches what exists when it is handled, and each one costs the API server
    a create, a status write and a delete.
    """
    phase = run.status.phase
    if not phase.finished or not announces(run):
        return None
    if listeners is not None and _BY_PHASE[phase] not in listeners:
        return None
    error = run.status.error
    name = end_event_name(run.metadata.name)
    data: dict[str, Any] = {
        "workflow": run.spec.workflow_ref.name,
        "run": run.metadata.name,
        "phase": phase.value,
        "error": None if error is None else error.to_dict(),
        "event": run.spec.event.as_payload(),
    }
    payload = {"name": _BY_PHASE[phase], "data": data, "user": run.spec.event.user, "id": name}
    return EndEvent(name, payload)


def end_event_names() -> tuple[str, ...]:
    """Every name a run's end is published under."""
    return tuple(_BY_PHASE.values())


def on_failure_function(workflow: str, spec: WorkflowSpec, event: dict[str, Any]) -> str | None:
    """The handler ``workflow`` runs for ``event``: its `onFailure.function` when ``event`` says that one
    of its runs failed for good, else None."""
    if spec.on_failure is None or event.get("name") != RUN_FAILED:
        return None
    data = event.get("data") or {}
    return spec.on_failure.function if data.get("workflow") == workflow else None


def reserved(event_name: str) -> bool:
    """Whether ``event_name`` is under kubestep's own prefix."""
    return event_name.startswith(SYSTEM_EVENT_PREFIX)
