"""``StepOptions``: the policy of one step, given in code next to the step it belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from kubestep.api.durations import MAX_SPEC_DURATION_SECONDS, DurationError, parse_duration
from kubestep.api.policy import CodeOptions

#: The most retries a step may ask for, as `spec.retries.limit` allows.
MAX_RETRIES = 20


@dataclass(frozen=True)
class StepOptions:
    """Options of one ``step.run``: ``step.run("enrich", enrich, rows, opts=StepOptions(retries=9))``.

    Given as an object (rather than keyword arguments of ``step.run``) so that every keyword argument still
    reaches the step's function. A Workflow's ``spec.steps`` overrides them; both are recorded in the
    step's status (``policy``).
    """

    retries: int | None = None
    """Retries after the first attempt (0 to 20); unset: ``spec.retries.limit``."""
    timeout: str | float | timedelta | None = None
    """Longest time one attempt may run (``"30s"``, ``"2h"``, seconds, or a ``timedelta``); unset:
    ``spec.timeouts.step``. It bounds every attempt but the run's first step's first one, which starts
    before the step is known (see the README, per-step policy)."""

    def resolved(self, step_id: str) -> CodeOptions:
        """The options as the runner reports them; a bad value raises ``ValueError`` naming the step."""
        retries = self.retries
        if retries is not None and (
            isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES
        ):
            raise ValueError(
                f"step {step_id!r}: StepOptions(retries={retries!r}) must be a whole number from 0 to "
                f"{MAX_RETRIES}, e.g. StepOptions(retries=5)"
            )
        seconds = None
        if self.timeout is not None:
            try:
                seconds = parse_duration(self.timeout)
            except (DurationError, TypeError) as exc:
                raise ValueError(f"step {step_id!r}: StepOptions(timeout={self.timeout!r}): {exc}") from None
            if not 0 < seconds <= MAX_SPEC_DURATION_SECONDS:
                raise ValueError(
                    f"step {step_id!r}: StepOptions(timeout={self.timeout!r}) must be more than 0 and at "
                    "most 366 days, e.g. StepOptions(timeout='10m')"
                )
        return CodeOptions(retries=retries, timeout_seconds=seconds)
