"""Garbage collection of finished runs: `spec.history` and `spec.ttlAfterFinished`.

Pure: from the finished runs of a workflow (name, phase, when it finished) and the time, which runs to
delete and when to look again. Deleting a run deletes what it owns (its Jobs, pods, Secrets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kubestep.api.durations import parse_duration
from kubestep.api.run import RunPhase
from kubestep.api.workflow import WorkflowSpec


@dataclass(frozen=True)
class Finished:
    """A finished run."""

    name: str
    phase: RunPhase
    finished_at: datetime
    created: datetime | None = None
    """When it was created: `spec.rateLimit` counts it for a period from then, so it is kept that long."""


@dataclass(frozen=True)
class Collection:
    """What to delete now, and when the next run's time to live ends."""

    delete: list[str] = field(default_factory=list)
    next: datetime | None = None


def collect(spec: WorkflowSpec, runs: list[Finished], now: datetime) -> Collection:
    """The runs beyond `spec.history` (per class, newest kept) or past `spec.ttlAfterFinished`."""
    ttl = (
        None
        if spec.ttl_after_finished is None
        else timedelta(seconds=parse_duration(spec.ttl_after_finished))
    )
    delete: list[str] = []
    kept = {True: 0, False: 0}
    limits = {True: spec.history.succeeded, False: spec.history.failed}
    expiries: list[datetime] = []
    counted = _rate_counted(spec)
    for run in sorted(runs, key=lambda r: (r.finished_at, r.name), reverse=True):
        succeeded = run.phase is RunPhase.SUCCEEDED
        if counted is not None and run.created is not None and run.created + counted > now:
            expiries.append(run.created + counted)  # the rate limit still counts it: collected after
            continue
        if kept[succeeded] >= limits[succeeded] or (ttl is not None and run.finished_at + ttl <= now):
            delete.append(run.name)
            continue
        kept[succeeded] += 1
        if ttl is not None:
            expiries.append(run.finished_at + ttl)
    return Collection(sorted(delete), min(expiries, default=None))


def _rate_counted(spec: WorkflowSpec) -> timedelta | None:
    """How long after its creation `spec.rateLimit` counts a run (see `engine.gates`)."""
    if spec.rate_limit is None:
        return None
    return timedelta(seconds=parse_duration(spec.rate_limit.period) + 1)


def over_limits(spec: WorkflowSpec, succeeded: int, failed: int) -> bool:
    """Whether the workflow's finished runs (as counted in its status) may need collecting."""
    return (spec.ttl_after_finished is not None and succeeded + failed > 0) or (
        succeeded > spec.history.succeeded or failed > spec.history.failed
    )
