"""Per-step policy as a run records it: what the code asked for and what applies to the step.

The spec side (`spec.steps`) lives with the workflow's spec; the options a step's code gives
(`step.run(..., opts=StepOptions(...))`) travel from the runner in the step's reference, and the policy in
force is recorded on the step's status, so `kubectl get ksr -o yaml` shows why a step got its retries.
"""

from __future__ import annotations

from pydantic import Field

from kubestep.api.base import Model


class CodeOptions(Model):
    """Options the workflow's code gave a step (`StepOptions`); `spec.steps` overrides them."""

    retries: int | None = None
    """Retries after the first attempt the code asked for; unset: not set in code."""
    timeout_seconds: float | None = None
    """Longest time one attempt may run, in seconds, as the code asked; unset: not set in code."""


class StepPolicyStatus(Model):
    """The policy in force for a step and where each part of it comes from."""

    retries: int
    """Retries after the first attempt this step may make."""
    retries_from: str
    """Where `retries` comes from: `spec.steps[<key>]`, `code` or `spec.retries.limit`."""
    timeout: str | None = None
    """Longest time one attempt may run (unset: no limit)."""
    timeout_from: str = ""
    """Where `timeout` comes from: `spec.steps[<key>]`, `code` or `spec.timeouts.step` (empty: no limit)."""
    code: CodeOptions | None = None
    """What the code asked for with `StepOptions`, when it asked for anything."""
    matched: list[str] = Field(default_factory=list)
    """Keys of `spec.steps` that apply to the step, most specific first."""
