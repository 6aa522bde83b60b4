"""What adapters observed since the last decision: ended executions, arrived events, finished children."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kubestep.api.report import Report
from kubestep.api.run import ErrorInfo, RunPhase


class ExitKind(StrEnum):
    """How an execution ended, as the infrastructure saw it."""

    EXITED = "Exited"
    """The process exited by itself (any exit code)."""
    DEADLINE = "Deadline"
    """It ran past its step timeout and was stopped."""
    DISRUPTED = "Disrupted"
    """The cluster took it away: evicted, preempted, pod deleted, node lost."""
    LOST = "Lost"
    """It vanished: the Job is gone and nothing tells how it ended."""
    REFUSED = "Refused"
    """It could not be started: the platform refused it as invalid, so starting it again cannot help."""


@dataclass(frozen=True)
class Outcome:
    """An execution that ended."""

    name: str
    """The execution's (Job's) name."""
    kind: ExitKind
    """How it ended."""
    report: Report | None = None
    """The report it wrote, possibly only the interim ``started`` one, or none."""
    exit_code: int | None = None
    """The exit code, when it exited."""
    reason: str = ""
    """The infrastructure's reason: ``Error``, ``OOMKilled``, ``DeadlineExceeded``, ``Evicted``, ..."""
    message: str = ""
    """The infrastructure's message."""
    log_tail: str = ""
    """The last lines it printed."""
    finished_at: datetime | None = None
    """When it ended, if known."""
    chained: list[tuple[Report, datetime]] = field(default_factory=list)
    """Chained mode: the steps it finished, in order, with their end times, as its log recorded them."""
    image_id: str = ""
    """The image its container ran, as the runtime reported it (``imageID``: ``registry/repo@sha256:...``),
    if known."""


@dataclass(frozen=True)
class ArrivedEvent:
    """An event that may resume a waiting step."""

    payload: dict[str, Any]
    """The event as code sees it (name, data, user, id, ts)."""
    received_at: datetime
    """When it was published; only events published after a wait began can match it."""
    source: str = ""
    """The Event object's name."""


@dataclass(frozen=True)
class ChildResult:
    """The state of a run started by an invoke step."""

    step: str
    """The parent's invoke step id."""
    phase: RunPhase
    """The child's phase."""
    output: Any = None
    """The child's output, once it succeeded."""
    error: ErrorInfo | None = None
    """Why the child failed."""


@dataclass(frozen=True)
class Stalled:
    """An execution whose pod has not started running (not created, not scheduled, image not pulled)."""

    name: str
    """The execution's (Job's) name."""
    reason: str
    """Kubernetes' reason: ``FailedCreate``, ``ErrImagePull``, ``ImagePullBackOff``, ``Unschedulable``, ..."""
    message: str = ""
    """Kubernetes' message."""


@dataclass(frozen=True)
class Observed:
    """Everything observed since the last decision."""

    outcomes: list[Outcome] = field(default_factory=list)
    """Executions that ended."""
    events: list[ArrivedEvent] = field(default_factory=list)
    """Events that may match waiting steps."""
    children: list[ChildResult] = field(default_factory=list)
    """Child runs of invoke steps."""
    stalled: list[Stalled] = field(default_factory=list)
    """Executions that still run but whose pod has not started."""
    status_too_large: str = ""
    """Set when the platform refused to store the status this decision would give, as too large: why."""
    listeners: frozenset[str] | None = None
    """The names of the run-end Events (``kubestep/run.*``) that something could receive now: a Workflow
    triggered by one (or, for ``kubestep/run.failed``, one with `spec.onFailure`), a step waiting for one,
    a run cancelled on one. A run that ends while nothing listens for its end publishes nothing. None:
    every end is published."""
