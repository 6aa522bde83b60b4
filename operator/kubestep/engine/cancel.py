"""`spec.cancelOn`: which arrived Event, if any, cancels a run in flight."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubestep.api.durations import parse_duration
from kubestep.api.workflow import WorkflowSpec
from kubestep.engine.cel import CelError, holds
from kubestep.engine.observations import ArrivedEvent


@dataclass(frozen=True)
class Cancellation:
    """The Event that cancels the run and the rule it matched."""

    event: ArrivedEvent
    rule: int
    """Index in `spec.cancelOn`."""

    def message(self) -> str:
        """What `status.error` says."""
        source = f" (Event {self.event.source})" if self.event.source else ""
        name = self.event.payload.get("name")
        return f"cancelled by event {name!r}{source}, matching spec.cancelOn[{self.rule}]"


def cancelled_by(
    spec: WorkflowSpec, trigger: dict[str, Any], since: datetime, events: list[ArrivedEvent], own: str = ""
) -> Cancellation | None:
    """The first event (by arrival) that cancels a run started at ``since`` by ``trigger``.

    An event cancels when its name is a `cancelOn` rule's event, it arrived at or after ``since`` (and
    within the rule's `timeout` of it), it is not the run's own trigger (``own``, its object name), and the
    rule's `if` holds over `event` (the trigger) and `async` (the candidate). An `if` that cannot be
    evaluated for a candidate (a field it lacks) is not a match.
    """
    if not spec.cancel_on:
        return None
    for event in sorted(events, key=lambda e: e.received_at):
        if event.received_at < since or (own and event.source == own):
            continue
        for index, rule in enumerate(spec.cancel_on):
            if event.payload.get("name") != rule.event:
                continue
            if rule.timeout and event.received_at > since + timedelta(seconds=parse_duration(rule.timeout)):
                continue
            if rule.if_:
                try:
                    if not holds(rule.if_, {"event": trigger, "async": event.payload}):
                        continue
                except CelError:
                    continue
            return Cancellation(event, index)
    return None
