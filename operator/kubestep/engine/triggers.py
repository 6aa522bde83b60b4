"""Which workflows an event starts."""

from __future__ import annotations

from dataclasses import dataclass
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
