"""Which workflows an event starts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubestep.api.workflow import WorkflowSpec
from kubestep.engine.cel import CelError, holds


@dataclass(frozen=True)
class TriggerMatch:
    """Whether an event starts a workflow, and why not when an expression failed."""

    matched: bool
    error: str | None = None


def match(spec: WorkflowSpec, event: dict[str, Any]) -> TriggerMatch:
    """The first trigger of ``spec`` on ``event['name']`` whose ``if`` holds decides."""
    errors: list[str] = []
    for trigger in spec.triggers:
        if trigger.event != event.get("name"):
            continue
        if trigger.if_ is None:
            return TriggerMatch(True)
        try:
            if holds(trigger.if_, {"event": event}):
                return TriggerMatch(True)
        except CelError as exc:
            errors.append(str(exc))
    return TriggerMatch(False, "; ".join(errors) or None)


#: Default window within which a second event with the same ``spec.id`` starts nothing (as Inngest).
DEFAULT_DEDUPE_WINDOW = timedelta(hours=24)
#: Dedupe windows an idempotency key can span: after this many, its events start nothing.
ID_GENERATIONS = 64


def id_run_seed(event_name: str, event_id: str, generation: int) -> str:
    """What the name of the run an event with ``spec.id`` starts derives from, in the operator and in
    `kubestep run` alike: every event with this name and id maps to the same run name, so the first one
    handled creates the run and the others find it. Generation ``n`` is used once the run of generation
    ``n - 1`` is older than the dedupe window."""
    return f"id:{event_name}:{event_id}:{generation}"


def duplicate(first: datetime | None, created: datetime, window: timedelta) -> bool:
    """Whether an event created at ``created`` repeats the id of one whose run was created at ``first``:
    within the dedupe window it starts nothing (a run of unknown age counts as recent)."""
    return first is None or created - first < window
