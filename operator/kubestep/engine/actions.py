"""What the engine asks adapters to do. Every action is idempotent by the names it carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubestep.api.report import RunnerState
from kubestep.api.run import RerunSpec
from kubestep.engine.policy import PodOverrides


@dataclass(frozen=True)
class StartExecution:
    """Start a runner execution (a Job; locally, a process) named ``name`` with ``state`` as its input."""

    name: str
    step: str | None
    attempt: int
    state: RunnerState
    timeout_seconds: float | None
    pod: PodOverrides | None = None
    """The step's own pod settings (`spec.steps`), when its step is known and has any."""
    image: str | None = None
    """The run's image pinned by digest (``status.image``), once its first pod ran; else the workflow's
    image as written is used."""


@dataclass(frozen=True)
class StopExecution:
    """Stop a running execution (cancellation, run timeout)."""

    name: str
    reason: str


@dataclass(frozen=True)
class StartChild:
    """Start the child run ``name`` of workflow ``workflow`` with event ``data`` for invoke step ``step``."""

    step: str
    name: str
    workflow: str
    data: dict[str, Any]


@dataclass(frozen=True)
class CancelChild:
    """Cancel the child run ``name`` (its parent ended, or the invoke timed out)."""

    name: str
    reason: str


@dataclass(frozen=True)
class PublishEvents:
    """Publish events for a ``send_event`` step; ``ids`` are their deterministic names."""

    step: str
    ids: list[str]
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class RequeueAt:
    """Decide again at ``when`` even if nothing is observed (a backoff, a sleep, a wait timeout)."""

    when: datetime


@dataclass(frozen=True)
class Note:
    """Something worth telling people: a timeline line locally, a Kubernetes Event in the cluster."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class StartRerun:
    """Start run ``name``: a rerun of this run's event that reuses what ``rerun`` lists."""

    name: str
    rerun: RerunSpec


@dataclass(frozen=True)
class AnnounceEnd:
    """Publish the Event telling that the run ended (`kubestep/run.failed`, ...), named ``name``."""

    name: str
    payload: dict[str, Any]


Action = (
    StartExecution
    | StopExecution
    | StartChild
    | CancelChild
    | PublishEvents
    | RequeueAt
    | Note
    | StartRerun
    | AnnounceEnd
)
