"""The runner protocol: the state a runner execution receives and the one report it returns.

The runner writes the report to the container's termination message, so it must stay small; see
`kubestep.runner.report_io` for compression and the log fallback.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from kubestep.api.base import Model
from kubestep.api.policy import CodeOptions
from kubestep.api.steps import StepType

#: Marks the log line that carries a report too large for the termination message.
LOG_REPORT_MARKER = "::kubestep-report::"
#: Marks the log line by which a chained execution records a step it finished (its report, packed).
LOG_STEP_MARKER = "::kubestep-step::"
#: Exit codes of `python -m kubestep.runner`.
EXIT_OK = 0
"""A report was written: a step result (success or error), a plan, a wait, or the function's end."""
EXIT_STEP_FAILED = 1
"""A report was written and it says a step or the function failed (kept distinct for `kubectl get pods`)."""
EXIT_BAD_INPUT = 2
"""The runner's own input was unusable (missing or corrupt state file); no report was written."""
EXIT_REPORT_UNWRITABLE = 3
"""The report could not be delivered (termination message path not writable)."""


class MemoEntry(Model):
    """A step the run has reached, with its result once it has one."""

    id: str
    """The step's unique id."""
    name: str
    """The step's name."""
    type: StepType
    """The step's type."""
    done: bool = False
    """True once the step has its final result."""
    output: Any = None
    """The step's output, when it succeeded."""
    error: dict[str, str] | None = None
    """`{"type", "message"}` when the step failed for good; replay raises `StepError` there."""


class RunnerState(Model):
    """Everything a runner execution needs, mounted read-only into the step pod."""

    run: str
    """The run's name."""
    function: str
    """`module:function` to import."""
    event: dict[str, Any]
    """The triggering event payload."""
    events: list[dict[str, Any]] = Field(default_factory=list)
    """A batched run's events, oldest first (`spec.batch`); empty otherwise (the function sees `[event]`)."""
    steps: list[MemoEntry] = Field(default_factory=list)
    """Steps reached so far, in order."""
    target: str | None = None
    """Execute this step (a planned parallel step or a retry); unset: execute the next new step."""
    attempt: int = 1
    """The attempt number being run (1-based)."""
    max_output_bytes: int = 65536
    """Largest JSON output a step may return."""
    chain_steps: int = 1
    """Most `step.run` steps this execution may execute in a row (more than 1: chained mode)."""
    chain_seconds: float | None = None
    """Chained mode: begin no further step once the execution has run this long."""


class ReportKind(StrEnum):
    """What a runner execution found."""

    STARTED = "started"
    """Interim: a step began executing (kept if the process dies before the final report)."""
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    PLANNED = "planned"
    SLEEP = "sleep"
    WAIT_FOR_EVENT = "wait_for_event"
    INVOKE = "invoke"
    SEND_EVENT = "send_event"
    COMPLETED = "completed"
    FAILED = "failed"
    NEXT_STEP = "next_step"
    """Only as a ``next`` report: replay reached this new ``step.run`` after the executed step returned."""


class StepRef(Model):
    """A step as the runner met it."""

    id: str
    """Unique id."""
    name: str
    """User's name."""
    type: StepType = StepType.RUN
    """Step type."""
    options: CodeOptions | None = None
    """Options the code gave a run step (`StepOptions`), when it gave any."""


class ReportError(Model):
    """An error raised by user code, classified."""

    type: str
    """Exception class name."""
    message: str
    """Exception message (shortened)."""
    retriable: bool = True
    """False for `NonRetriableError` and errors kubestep knows retrying cannot fix."""
    retry_after_seconds: float | None = None
    """Set by `RetryAfterError`: wait this long before the next attempt."""
    traceback: str = ""
    """The last lines of the traceback."""


class Report(Model):
    """The one report a runner execution returns."""

    kind: ReportKind
    """What happened."""
    step: StepRef | None = None
    """The step concerned (all kinds but planned, completed, and failed outside a step)."""
    output: Any = None
    """Step output (step_succeeded) or function output (completed)."""
    error: ReportError | None = None
    """For step_failed and failed."""
    planned: list[StepRef] = Field(default_factory=list)
    """For planned: steps to run at the same time."""
    until: datetime | None = None
    """For sleep: when to wake up."""
    event: str | None = None
    """For wait_for_event: the awaited event's name."""
    if_: str | None = Field(default=None, alias="if")
    """For wait_for_event: the CEL condition."""
    timeout_seconds: float | None = None
    """For wait_for_event and invoke: how long to wait."""
    workflow: str | None = None
    """For invoke: the workflow to start."""
    data: dict[str, Any] | None = None
    """For invoke: the child's event data."""
    events: list[dict[str, Any]] = Field(default_factory=list)
    """For send_event: events to publish (`name`, `data`, `user`, `id`)."""
    next: Report | None = None
    """For step_succeeded: where replay went after the step returned, without running another step body —
    the next step to execute (next_step), a sleep, a wait, an invoke, a send (whose own ``next`` goes on),
    a parallel plan, or the function's end. Unset when the runner stopped at the step (inside a parallel
    group, or when replay could not go on), so the run needs another execution to find out."""

    @model_validator(mode="after")
    def _complete(self) -> Report:
        # Reports come from pods running user code: check their shape here, not deep in the engine.
        needed = _REQUIRED.get(self.kind, ())
        missing = [name for name in needed if getattr(self, name) in (None, [])]
        if missing:
            raise ValueError(f"a {self.kind.value} report needs {', '.join(missing)}")
        if self.until is not None and self.until.tzinfo is None:
            raise ValueError("until must carry a timezone")
        if self.next is not None and self.kind not in (ReportKind.STEP_SUCCEEDED, ReportKind.SEND_EVENT):
            raise ValueError(f"a {self.kind.value} report has no next report")
        if self.next is not None and self.next.kind in _NEVER_NEXT:
            raise ValueError(f"a {self.next.kind.value} report cannot be a next report")
        if self.kind is ReportKind.NEXT_STEP and self.step is not None and self.step.type is not StepType.RUN:
            raise ValueError("a next_step report names a run step")
        return self


_REQUIRED: dict[ReportKind, tuple[str, ...]] = {
    ReportKind.STARTED: ("step",),
    ReportKind.STEP_SUCCEEDED: ("step",),
    ReportKind.STEP_FAILED: ("step", "error"),
    ReportKind.PLANNED: ("planned",),
    ReportKind.SLEEP: ("step", "until"),
    ReportKind.WAIT_FOR_EVENT: ("step", "event", "timeout_seconds"),
    ReportKind.INVOKE: ("step", "workflow"),
    ReportKind.SEND_EVENT: ("step", "events"),
    ReportKind.FAILED: ("error",),
    ReportKind.NEXT_STEP: ("step",),
}
#: Reports that only an executing step gives, never the boundary that follows one.
_NEVER_NEXT = (ReportKind.STARTED, ReportKind.STEP_SUCCEEDED, ReportKind.STEP_FAILED)


#: Kubelet keeps at most this many bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
_ZIP_PREFIX = "z:"
_IN_LOG = "log"


def encode_report(report: Report) -> tuple[str, str | None]:
    """Encode ``report`` for the termination message: ``(message, log_line)``.

    Small reports are plain JSON; larger ones are compressed; those still too large go to the pod log as
    one marked line, and the message then says so.
    """
    import base64
    import zlib

    text = report.model_dump_json(by_alias=True, exclude_none=True)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text, None
    packed = _ZIP_PREFIX + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    if len(packed) <= TERMINATION_MESSAGE_LIMIT:
        return packed, None
    return _IN_LOG, LOG_REPORT_MARKER + packed[len(_ZIP_PREFIX) :]


def decode_report(message: str | None, log: str | None = None) -> Report | None:
    """The report in a termination message (reading the log when the message points there), or None."""
    import base64
    import zlib

    text = (message or "").strip()
    if not text:
        return None
    if text == _IN_LOG:
        lines = [line for line in (log or "").splitlines() if line.startswith(LOG_REPORT_MARKER)]
        if not lines:
            return None
        text = _ZIP_PREFIX + lines[-1][len(LOG_REPORT_MARKER) :]
    try:
        if text.startswith(_ZIP_PREFIX):
            text = zlib.decompress(base64.b64decode(text[len(_ZIP_PREFIX) :])).decode()
        return Report.model_validate_json(text)
    except (ValueError, zlib.error):
        return None


def encode_step_line(report: Report, finished_at: datetime) -> str:
    """The log line recording a step a chained execution finished, and when (one line, however large)."""
    import base64
    import zlib

    text = report.model_dump_json(by_alias=True, exclude_none=True)
    packed = base64.b64encode(zlib.compress(text.encode(), 6)).decode()
    return f"{LOG_STEP_MARKER}{finished_at.isoformat()} {packed}"


def decode_step_lines(log: str | None) -> list[tuple[Report, datetime]]:
    """The steps a chained execution recorded in its log as it finished them, in order, with their end
    times (unreadable lines are skipped: the step is then executed again, as after a lost pod)."""
    import base64
    import zlib

    found: list[tuple[Report, datetime]] = []
    for line in (log or "").splitlines():
        if not line.startswith(LOG_STEP_MARKER):
            continue
        when, _, packed = line[len(LOG_STEP_MARKER) :].partition(" ")
        try:
            finished_at = datetime.fromisoformat(when)
            text = zlib.decompress(base64.b64decode(packed)).decode()
            report = Report.model_validate_json(text)
        except (ValueError, zlib.error):
            continue
        if report.kind is ReportKind.STEP_SUCCEEDED and finished_at.tzinfo is not None:
            found.append((report, finished_at))
    return found
