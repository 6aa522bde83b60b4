"""What every reconciler shares: the API, the watch indices, the settings and the run reconciler's memory.

Not the work queue: a reconciler tells the queue what it needs by the result it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from kubestep.api.event import Event
from kubestep.controller.kube import Kube
from kubestep.controller.recorder import EventRecorder
from kubestep.engine import triggers

#: Default window within which a second event with the same ``spec.id`` starts nothing.
DEFAULT_DEDUPE_WINDOW = triggers.DEFAULT_DEDUPE_WINDOW


class Key(NamedTuple):
    """What a queue entry names: a kind (``run``, ``event``, ``workflow``), a namespace and a name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Indices(Protocol):
    """In-memory views the watches keep up to date (no list call per event)."""

    def waiting_runs(self, namespace: str, event: str) -> list[str]:
        """Runs with a step waiting for an event of this name."""

    def events_named(self, namespace: str, event: str, event_id: str | None = None) -> list[Event]:
        """Events of this name (only those whose `spec.id` is ``event_id``, if given)."""

    def run_phases(self, namespace: str, workflow: str) -> list[str]:
        """The phases of every run of a workflow."""

    def resumed_by(self, namespace: str, event: str) -> list[tuple[str, str]]:
        """``(workflow, run)`` of the runs whose wait this Event ended."""

    def cancellable_runs(self, namespace: str, event: str) -> list[str]:
        """Unfinished runs with a `spec.cancelOn` rule for an event of this name."""

    def run_jobs(self, namespace: str, run: str) -> list[str]:
        """The step Jobs labelled with this run (its ``kubestep.dev/run`` label value)."""

    def listening_workflows(self, namespace: str, event: str) -> list[str]:
        """Workflows an event of this name starts a run of (a trigger, or `onFailure` for a failed run)."""

    # The watch cache (see `kubestep.controller.cache`): what the watches last saw, possibly behind.

    def run(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The run as its watch last saw it, if unfinished (finished runs are not kept)."""

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A step Job as its watch last saw it (metadata and status only)."""

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The pods of a step Job as their watch last saw them (metadata and status only)."""

    def workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Workflow as its watch last saw it."""


def utcnow() -> datetime:
    """The operator's clock."""
    return datetime.now(UTC)


@dataclass
class Controller:
    """The operator's shared state."""

    kube: Kube
    indices: Indices
    dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW
    clock: Callable[[], datetime] = field(default=utcnow)
    recorder: EventRecorder = field(default_factory=EventRecorder)
    """Posts the Kubernetes Events telling of what the operator did, aggregating repeats."""
    # What the run reconciler (`kubestep.controller.runs`) remembers between its passes; only it reads and
    # writes these (the pod watch hands over what it saw through `runs.remember_pod_ending`).
    pod_endings: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    """The last state seen of step pods being deleted, by (namespace, run), then Job name.

    A deleted pod can be gone by the time its Job is marked failed; what it reported (the step it had
    started) is kept here until the attempt is recorded.
    """
    missing: dict[tuple[str, str], dict[str, datetime]] = field(default_factory=dict)
    """Recorded executions found with neither Job nor pod, by (namespace, run), then Job name: when first
    found so. The pod watch may not have handed over a deleted pod's last state yet (it can lag the Job
    watch): the attempt is called Lost only once that had time to arrive."""
    rejected: dict[tuple[str, str], str] = field(default_factory=dict)
    """Jobs the API server refused to create, by (namespace, Job name): why. Recorded as failed attempts."""
    owed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """Executions recorded in a run's status whose Job this process has not created yet, by (namespace,
    run), then Job name: the ``StartExecution`` to carry out. A recorded execution with no Job and no debt
    here was deleted (or a restart cut its creation short): its attempt is Lost, never created again."""
    large_states: set[tuple[str, str]] = field(default_factory=set)
    """State Secrets too large to keep until their run ends, by (namespace, name): deleted as soon as their
    execution is recorded. The others are deleted together, in one request, when the run ends."""
    workflow_versions: dict[tuple[str, str], str] = field(default_factory=dict)
    """The newest ``resourceVersion`` of each Workflow this process read from the API or wrote, by
    (namespace, name): its status is written only from that version (a cached older one would conflict)."""
    gate_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    """One lock per (namespace, workflow) with start gates (`spec.rateLimit`, `spec.singleton`): an event's
    gate decision and the start it allows are made under it (`kubestep.controller.gates`)."""
    run_versions: dict[tuple[str, str], str] = field(default_factory=dict)
    """The newest ``resourceVersion`` of each run this process read from the API or wrote, by (namespace,
    run): a cached copy at another version may be behind, and is read again from the API."""
    event_versions: dict[tuple[str, str], str] = field(default_factory=dict)
    """The ``resourceVersion`` of each Event's status this process last wrote, by (namespace, name): its
    watch event needs no pass (the writing pass made it), until the Event is deleted."""
    run_decided: dict[tuple[str, str], str] = field(default_factory=dict)
    """The ``resourceVersion`` each run's last pass decided from (read, or wrote as its decision), by
    (namespace, run): its watch event needs no pass of its own."""
    run_superseded: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """Versions of each run this process wrote a later one under (a write the API server takes only at the
    version read), by (namespace, run), until the watch catches up: the watch brings them before that later
    one, so their events need no pass and leave the written copy in place."""
    runs_written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """Runs as this process last wrote them, by (namespace, run), until their watch brings that version
    back: the newest copy there is, read instead of the API while the watch cache is behind."""
    runs_gone: dict[tuple[str, str], datetime] = field(default_factory=dict)
    """Runs the run watch told were deleted, by (namespace, run): when, oldest first. Their Jobs and pods
    going with them need no pass, and a pass of one reads nothing from the API, until the name is used
    again (the watch tells of it) or `kubestep.controller.cache.GONE_FOR` has passed."""
    jobs_deleted: dict[tuple[str, str], datetime] = field(default_factory=dict)
    """Finished runs whose step Jobs this process asked to delete, by (namespace, run): when. Until the Job
    watch has caught up, the Jobs it still lists are not asked for again (`kubestep.controller.gc`)."""
