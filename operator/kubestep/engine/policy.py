"""Per-step policy: which `spec.steps` entries apply to a step, and the retries, timeout and pod settings
that result from them, the step's code options (`StepOptions`) and the workflow-wide settings.

Pure: the engine records the result on the step's status and puts the pod settings on the executions it
starts for the step. Precedence, per setting: `spec.steps` (most specific key first), then the code, then
the workflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from kubestep.api.durations import format_duration, parse_duration
from kubestep.api.policy import CodeOptions, StepPolicyStatus
from kubestep.api.workflow import StepPolicy, WorkflowSpec

_GLOB = set("*?[")


@dataclass(frozen=True)
class PodOverrides:
    """The step pod's settings from `spec.steps`, merged over `spec.podTemplate` by the Job builder."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`limits` and `requests` by resource name; each name given replaces the template's."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Node labels added to (and overriding) the template's."""
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    """Tolerations added to the template's."""

    def __bool__(self) -> bool:
        return bool(self.resources or self.node_selector or self.tolerations)


@dataclass(frozen=True)
class Resolved:
    """The policy of one step."""

    retries: int
    """Retries after the first attempt."""
    retries_from: str
    timeout_seconds: float | None
    """Longest time one attempt may run; None: no limit."""
    timeout_from: str
    pod: PodOverrides
    matched: list[str]

    def status(self, code: CodeOptions | None) -> StepPolicyStatus:
        """How the step's status records it."""
        return StepPolicyStatus(
            retries=self.retries,
            retries_from=self.retries_from,
            timeout=None if self.timeout_seconds is None else format_duration(self.timeout_seconds),
            timeout_from=self.timeout_from,
            code=code,
            matched=self.matched,
        )


def _specificity(key: str, step_id: str, name: str) -> tuple[int, int, str] | None:
    """A sort key (lower is more specific) if ``key`` matches the step, else None."""
    if key == step_id:
        return (0, 0, key)
    if key == name:
        return (1, 0, key)
    if _GLOB & set(key) and (fnmatchcase(step_id, key) or fnmatchcase(name, key)):
        literal = sum(1 for c in key if c not in _GLOB)
        return (2, -literal, key)
    return None


def matching(steps: dict[str, StepPolicy], step_id: str, name: str) -> list[str]:
    """The keys of `spec.steps` that apply to the step, most specific first: its exact id, its exact name,
    then globs over either with the most literal characters first (ties in key order)."""
    ranked = [(rank, key) for key in steps if (rank := _specificity(key, step_id, name)) is not None]
    return [key for _, key in sorted(ranked)]


def resolve(spec: WorkflowSpec, step_id: str | None, name: str | None, code: CodeOptions | None) -> Resolved:
    """The policy of the step ``step_id`` (named ``name``), or of an execution whose step is not known yet
    (``step_id`` None: the workflow-wide settings)."""
    keys = [] if step_id is None else matching(spec.steps, step_id, name or step_id)
    entries = [(key, spec.steps[key]) for key in keys]

    def first(attr: str) -> tuple[str, Any] | None:
        return next(((k, getattr(e, attr)) for k, e in entries if getattr(e, attr) is not None), None)

    retries: tuple[int, str]
    if (hit := first("retries")) is not None:
        retries = (hit[1], f"spec.steps[{hit[0]}]")
    elif code is not None and code.retries is not None:
        retries = (code.retries, "code")
    else:
        retries = (spec.retries.limit, "spec.retries.limit")
    timeout: tuple[float | None, str]
    if (hit := first("timeout")) is not None:
        timeout = (parse_duration(hit[1]), f"spec.steps[{hit[0]}]")
    elif code is not None and code.timeout_seconds is not None:
        timeout = (code.timeout_seconds, "code")
    elif spec.timeouts.step is not None:
        timeout = (parse_duration(spec.timeouts.step), "spec.timeouts.step")
    else:
        timeout = (None, "")
    return Resolved(
        retries=retries[0],
        retries_from=retries[1],
        timeout_seconds=timeout[0],
        timeout_from=timeout[1],
        pod=_pod(entries),
        matched=keys,
    )


def _pod(entries: list[tuple[str, StepPolicy]]) -> PodOverrides:
    resources: dict[str, dict[str, Any]] = {}
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    # Least specific first, so that the most specific entry's values are the ones left.
    for _, entry in reversed(entries):
        if entry.resources is not None:
            for kind, amounts in entry.resources.to_dict().items():
                resources.setdefault(kind, {}).update(amounts)
        node_selector.update(entry.node_selector or {})
        for toleration in entry.tolerations or []:
            as_dict = toleration.to_dict()
            if as_dict not in tolerations:
                tolerations.append(as_dict)
    return PodOverrides(resources, node_selector, tolerations)


def describe_timeout(resolved: Resolved) -> str:
    """Where a step's timeout comes from, for messages: ``spec.steps[enrich].timeout (30s)``."""
    text = format_duration(resolved.timeout_seconds or 0)
    if resolved.timeout_from == "code":
        return f"the step's StepOptions(timeout) ({text})"
    if resolved.timeout_from.startswith("spec.steps"):
        return f"{resolved.timeout_from}.timeout ({text})"
    return f"{resolved.timeout_from} ({text})"


def describe_retries(resolved: Resolved) -> str:
    """Where a step's retry limit comes from, for messages."""
    if resolved.retries_from == "code":
        return f"the step's StepOptions(retries) is {resolved.retries}"
    if resolved.retries_from.startswith("spec.steps"):
        return f"{resolved.retries_from}.retries is {resolved.retries}"
    return f"spec.retries.limit is {resolved.retries}"
