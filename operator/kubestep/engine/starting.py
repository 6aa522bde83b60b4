"""How long a run may wait to start (`spec.timeouts.start`). Pure: the time is given.

A run waits before its first step while the workflow's flow control queues it or the workflow is paused.
Its wait is bounded from its creation, the moment its event asked for it, so that a run queued behind a
long backlog ends with a clear reason instead of doing work nobody waits for any more.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kubestep.api.durations import parse_duration
from kubestep.api.run import ErrorInfo, WorkflowRun

#: The error type (and condition reason) of a run that waited too long to start.
START_TIMEOUT = "StartTimeout"


def deadline(run: WorkflowRun) -> datetime | None:
    """When the run, not started yet, is cancelled if it still has not started; None without a limit."""
    limit = run.spec.workflow.timeouts.start
    created = run.metadata.creation_timestamp
    if limit is None or created is None or run.status.started_at is not None:
        return None
    return created + timedelta(seconds=parse_duration(limit))


def timed_out(run: WorkflowRun, now: datetime) -> ErrorInfo | None:
    """The error that ends the run when it has not started by its :func:`deadline`, else None."""
    due = deadline(run)
    if due is None or now < due:
        return None
    message = (
        f"the run did not start within spec.timeouts.start ({run.spec.workflow.timeouts.start}) of its "
        "creation"
    )
    admission = run.status.admission
    if admission is not None and admission.waiting_for:
        message += f"; it was waiting for: {admission.waiting_for}"
    return ErrorInfo(type=START_TIMEOUT, message=message)
