"""Cron triggers: which ticks of a workflow's schedules are due, which start a run, which are skipped.

Pure, from the workflow's spec, the latest tick already handled (``status.lastTick``), when the workflow
was created, and the time. Each tick's run is named from the workflow and the tick's time, so a pass
repeated after a crash (or two operators racing) starts nothing twice: the API server refuses the name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cronsim import CronSim

from kubestep.api import names
from kubestep.api.cron import expand, zone
from kubestep.api.durations import parse_duration
from kubestep.api.workflow import WorkflowSpec

#: The event a scheduled run is started by.
TICK_EVENT = "kubestep/scheduled.tick"
DEFAULT_STARTING_DEADLINE = "5m"
#: Ticks walked one by one after an outage; beyond, the older ones are counted as skipped in one go.
MAX_TICKS_WALKED = 10_000
#: The most recent due tick (if any), how many older due ticks it hides, and the next tick.
Due = tuple[datetime | None, int, datetime]


@dataclass(frozen=True)
class Tick:
    """A scheduled time of one `cron` trigger."""

    trigger: int
    """Index in `spec.triggers`."""
    at: datetime
    """The scheduled time (in the trigger's zone)."""

    def run_name(self, workflow: str) -> str:
        """The run of this tick: one name per (workflow, scheduled time), whichever trigger it came from."""
        return names.run_name(workflow, f"tick:{self.at.astimezone(UTC).isoformat()}")

    def event(self, spec: WorkflowSpec) -> dict[str, Any]:
        """The run's event, as its function sees it."""
        trigger = spec.triggers[self.trigger]
        return {
            "name": TICK_EVENT,
            "data": {
                "scheduledAt": self.at.isoformat(),
                "cron": trigger.cron,
                "timezone": trigger.timezone or "UTC",
            },
            "ts": self.at,
        }


@dataclass(frozen=True)
class Plan:
    """What a pass does about the schedules."""

    start: list[Tick] = field(default_factory=list)
    """Ticks whose run starts now: per trigger, the most recent due one within its `startingDeadline`."""
    skipped: int = 0
    """Due ticks never started: older than the most recent, or past the deadline."""
    last: datetime | None = None
    """The latest tick handled, to store as `status.lastTick` (unchanged when none was due)."""
    next: datetime | None = None
    """When the next tick of any trigger is due."""


def plan(spec: WorkflowSpec, last: datetime | None, since: datetime, now: datetime) -> Plan:
    """The ticks due at ``now``: those after ``last`` (or after ``since``, the workflow's creation)."""
    start: list[Tick] = []
    skipped = 0
    handled = last
    upcoming: list[datetime] = []
    base = last or since
    for index, trigger in enumerate(spec.triggers):
        if trigger.cron is None:
            continue
        tz = zone(trigger.timezone)
        deadline = timedelta(seconds=parse_duration(trigger.starting_deadline or DEFAULT_STARTING_DEADLINE))
        due, missed, following = _due(expand(trigger.cron), base.astimezone(tz), now, deadline)
        skipped += missed
        upcoming.append(following)
        if due is None:
            continue
        handled = due if handled is None else max(handled, due)
        if now - due <= deadline:
            start.append(Tick(index, due))
        else:
            skipped += 1
    return Plan(start, skipped, handled, min(upcoming, default=None))


def _due(expr: str, after: datetime, now: datetime, deadline: timedelta) -> Due:
    """The most recent tick in (``after``, ``now``], how many older ones it hides, and the next tick."""
    ticks = iter(CronSim(expr, after))
    latest: datetime | None = None
    older = 0
    for walked, tick in enumerate(ticks):
        if tick > now:
            return latest, older, tick
        if latest is not None:
            older += 1
        latest = tick
        if walked >= MAX_TICKS_WALKED:
            # A long outage of a frequent schedule: count the rest up to the deadline's start as skipped
            # without walking them, and walk only the window that may still start a run.
            resume = max(tick, now - deadline - timedelta(seconds=1))
            older += 1 + _estimate(tick, resume, walked, after)
            return _due_tail(expr, resume, now, older)
    raise AssertionError("a cron schedule always has a next tick")  # pragma: no cover


def _estimate(tick: datetime, resume: datetime, walked: int, after: datetime) -> int:
    span = (tick - after).total_seconds()
    # The ticks walked, `walked + 1`, took `span`: as many more per as much time until `resume`.
    return 0 if span <= 0 else round((resume - tick).total_seconds() / span * (walked + 1))


def _due_tail(expr: str, after: datetime, now: datetime, older: int) -> Due:
    latest: datetime | None = None
    for tick in CronSim(expr, after):
        if tick > now:
            return latest, older, tick
        if latest is not None:
            older += 1
        latest = tick
    raise AssertionError("a cron schedule always has a next tick")  # pragma: no cover
