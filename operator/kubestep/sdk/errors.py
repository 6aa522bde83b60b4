"""Errors that workflow code raises or catches, and the interrupts replay uses internally."""

from __future__ import annotations

from datetime import datetime, timedelta

from kubestep.api.durations import parse_duration


class NonRetriableError(Exception):
    """Raise from a step to fail it at once: no further attempts are made.

    Use it for errors retrying cannot fix, such as a malformed input file.
    """


class RetryAfterError(Exception):
    """Raise from a step to retry it after a delay of your choosing instead of the backoff policy.

    ``delay`` is seconds, a duration string such as ``"30s"``, a ``timedelta``, or the ``datetime`` at which
    to retry (for example from a ``Retry-After`` header). The attempt still counts against the retry limit.
    """

    def __init__(self, message: str, delay: float | str | timedelta | datetime) -> None:
        super().__init__(message)
        # Checked here, at the raise site: a bad delay found later would fail the whole run, not the step.
        if isinstance(delay, datetime) and delay.tzinfo is None:
            raise WorkflowDefinitionError(
                f"RetryAfterError needs a timezone-aware datetime, got {delay.isoformat()}; "
                "add a timezone, e.g. datetime(..., tzinfo=UTC)"
            )
        if not isinstance(delay, datetime):
            try:
                parse_duration(delay)
            except ValueError as exc:
                raise WorkflowDefinitionError(f"RetryAfterError got an unusable delay: {exc}") from None
        self.delay = delay

    def delay_seconds(self, now: datetime) -> float:
        """The delay in seconds, measured from ``now`` when it was given as a point in time."""
        if isinstance(self.delay, datetime):
            return max(0.0, (self.delay - now).total_seconds())
        return parse_duration(self.delay)


class StepError(Exception):
    """Raised at a step's call site when the step failed for good (retries exhausted or non-retriable).

    Catch it to handle the failure in the workflow; left uncaught, it fails the run.
    """

    def __init__(self, step_id: str, error_type: str, message: str) -> None:
        super().__init__(f"step {step_id!r} failed: {error_type}: {message}")
        self.step_id = step_id
        self.error_type = error_type
        self.error_message = message


class NondeterminismError(Exception):
    """The function reached its steps in a different order than the run recorded.

    Workflow code must reach the same steps in the same order on every replay: keep time, randomness and
    I/O inside steps.
    """


class WorkflowDefinitionError(Exception):
    """The workflow code uses the SDK in a way it does not support (reported as a non-retriable failure)."""


class Interrupt(BaseException):
    """Stops the workflow function once replay has something to report.

    It derives from ``BaseException`` so that ``except Exception`` in user code cannot swallow it.
    """
