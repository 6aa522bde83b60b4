"""Garbage collection of what finished runs and handled Events leave behind.

Pure: from a run (or an Event, the Events sharing its id and the runs that may still refer to it) and the
time, whether to delete now and when to look again. The operator only carries the verdicts out.

- A finished run's step Jobs (and, through owner references, their pods) are deleted
  `spec.history.jobsAfterFinished` after it finished, once every attempt is recorded in its status with
  its log tail.
- An Event is deleted once its dedupe window has passed, unless an unfinished run still refers to it.
  Its `spec.id` must stay a duplicate's for the whole window (see :mod:`kubestep.engine.dedupe`, which
  reads the Events' statuses): so it is kept until every Event with the same name and id published within
  its window has been handled, and a little longer than the window, for Events still on their way to the
  operator's watch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kubestep.api.durations import parse_duration
from kubestep.api.event import Event
from kubestep.api.run import StepPhase, WorkflowRun

#: An Event outlives its dedupe window by this much (at most): one published just inside the window may
#: reach the operator's watch a little later than it reached the API server.
MAX_EVENT_GRACE = timedelta(seconds=30)
#: How often an Event kept for a reference is looked at again, at most and at least: the runs that refer to
#: it do not tell it when they finish.
EVENT_RECHECK_MAX = timedelta(minutes=10)
EVENT_RECHECK_MIN = timedelta(seconds=2)
#: The condition an Event gets once the operator handled it.
PROCESSED = "Processed"


@dataclass(frozen=True)
class Verdict:
    """Delete now, or look again at ``at`` (never, when None)."""

    delete: bool = False
    at: datetime | None = None
    why: str = ""
    """Why it is kept (or, when deleted, why it may go), for the log."""


def jobs_due(run: WorkflowRun) -> datetime | None:
    """When the run's step Jobs may be deleted: None while the run is unfinished or any attempt of it is
    not recorded yet (an attempt's log tail is read from its pod when its outcome is recorded)."""
    status = run.status
    if not status.phase.finished or status.finished_at is None or status.active:
        return None
    if any(attempt.result is None for step in status.steps for attempt in step.attempts):
        return None
    keep = timedelta(seconds=parse_duration(run.spec.workflow.history.jobs_after_finished))
    return status.finished_at + keep


def collect_jobs(run: WorkflowRun, jobs_left: bool, now: datetime) -> Verdict:
    """Whether to delete the run's step Jobs now (``jobs_left``: some are still there), else when to look."""
    due = jobs_due(run)
    if due is None or not jobs_left:
        return Verdict()
    if due <= now:
        return Verdict(delete=True, why="the run finished and every attempt's log tail is recorded")
    return Verdict(at=due, why="spec.history.jobsAfterFinished has not passed")


def event_expiry(event: Event, window: timedelta) -> datetime | None:
    """When an Event may be deleted at the earliest: its dedupe window, plus a grace for late arrivals."""
    created = event.metadata.creation_timestamp
    if created is None:
        return None
    return created + window + min(window, MAX_EVENT_GRACE)


def collect_event(
    event: Event,
    same_name: list[Event],
    referrers: list[WorkflowRun],
    window: timedelta,
    now: datetime,
) -> Verdict:
    """Whether to delete ``event`` now, else when to look again.

    ``same_name``: the Events with its `spec.name` (itself may be among them); ``referrers``: runs that may
    refer to it (those it started, those waiting for or matched by an event of its name, those it may cancel),
    finished or not.
    """
    if not any(c.type == PROCESSED for c in event.status.conditions):
        return Verdict(why="not handled yet")  # handling it changes it, which looks at it again
    expiry = event_expiry(event, window)
    if expiry is None:
        return Verdict(why="no creation time")
    if now < expiry:
        return Verdict(at=expiry, why="inside its dedupe window")
    recheck = now + max(EVENT_RECHECK_MIN, min(window, EVENT_RECHECK_MAX))
    pending = _unhandled_duplicate(event, same_name, window)
    if pending is not None:
        return Verdict(at=recheck, why=f"Event {pending} with the same id is not handled yet")
    for run in referrers:
        why = refers_to(run, event)
        if why:
            return Verdict(at=recheck, why=f"run {run.metadata.name} {why}")
    return Verdict(delete=True, why="its dedupe window has passed and no unfinished run refers to it")


def _unhandled_duplicate(event: Event, same_name: list[Event], window: timedelta) -> str | None:
    """An unhandled Event with ``event``'s id published within its window: ``event`` is what makes it a
    duplicate, so it must still be there when that one is handled."""
    created = event.metadata.creation_timestamp
    if not event.spec.id or created is None:
        return None
    for other in same_name:
        when = other.metadata.creation_timestamp
        if (
            other.metadata.name != event.metadata.name
            and other.spec.name == event.spec.name
            and other.spec.id == event.spec.id
            and (when is None or when - created < window)
            and not any(c.type == PROCESSED for c in other.status.conditions)
        ):
            return other.metadata.name
    return None


def refers_to(run: WorkflowRun, event: Event) -> str:
    """How an unfinished ``run`` still refers to ``event`` (empty if it does not, or is finished)."""
    if run.status.phase.finished:
        return ""
    name = event.metadata.name
    received = _received(event)
    if run.spec.event.source == name:
        return "was started by it and has not finished"
    for step in run.status.steps:
        if step.wait is None:
            continue
        if step.wait.matched == name:
            return f"matched it in step {step.id!r} and has not finished"
        began = step.started_at
        waiting = step.phase is StepPhase.WAITING and step.wait.event == event.spec.name
        if waiting and (received is None or began is None or began <= received):
            return f"waits for {event.spec.name!r} in step {step.id!r}"
    since = run.metadata.creation_timestamp
    for rule in run.spec.workflow.cancel_on:
        if rule.event == event.spec.name and (received is None or since is None or since <= received):
            return f"may be cancelled by it (spec.cancelOn {rule.event!r})"
    return ""


def _received(event: Event) -> datetime | None:
    # Stamps are whole seconds: an Event counts from the end of its second (as waits and cancelOn see it).
    created = event.metadata.creation_timestamp
    return None if created is None else created + timedelta(seconds=1)
