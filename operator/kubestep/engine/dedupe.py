"""Exactly-once starts that outlive the runs: an Event whose `spec.id` already started a run of a
workflow within the dedupe window is a duplicate, even when that run has since been deleted (by hand,
or collected) and its name is free again.

The run's deterministic name catches duplicates while the run exists (also two Events handled at the same
time); the earlier Event's own status, which records the runs it started, catches them after.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kubestep.api.event import Event


def _created(event: Event) -> datetime | None:
    return event.metadata.creation_timestamp


def earlier_start(event: Event, workflow: str, others: list[Event], window: timedelta) -> Event | None:
    """The earliest other Event with ``event``'s name and id that started a run of ``workflow`` at most
    ``window`` before ``event`` was published, if any."""
    if not event.spec.id or _created(event) is None:
        return None
    published = _created(event)
    assert published is not None
    found: list[tuple[datetime, str, Event]] = []
    for other in others:
        when = _created(other)
        if (
            other.metadata.name == event.metadata.name
            or other.spec.name != event.spec.name
            or other.spec.id != event.spec.id
            or when is None
            or not any(ref.workflow == workflow for ref in other.status.started)
        ):
            continue
        # Stamps are whole seconds: at the same second, the object name breaks the tie.
        before = (when, other.metadata.name) < (published, event.metadata.name)
        if before and published - when < window:
            found.append((when, other.metadata.name, other))
    return min(found, key=lambda f: (f[0], f[1]))[2] if found else None
