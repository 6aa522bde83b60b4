"""The `Workflow` resource: a definition — the image and function to run, its triggers and policies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from kubestep.api.base import API_VERSION, Condition, Model, ObjectMeta, SpecModel
from kubestep.api.durations import SPEC_DURATION_PATTERN, parse_duration

#: Event names: a path of words, for example `api/contact_list.uploaded`.
EVENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*$"
#: `module.path:function` as Python imports it.
FUNCTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

_PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


# Rules the API server checks (CEL in the CRDs that `kubestep.api.crdgen` writes); Pydantic ignores them.
# The API server rejects a CRD whose rules it estimates too costly: a rule that iterates a list needs the
# list's `max_length` and the items' strings a `max_length` (triggers: 20 events of at most 253 characters).
# A rule's message names the field, what is wrong and the fix. No `reason: FieldValueDuplicate`: the API
# server would then print "Duplicate value" and drop the message.

_UNIQUE_TRIGGER_EVENTS: dict[str, Any] = {
    "rule": "self.all(t, self.exists_one(u, u.event == t.event))",
    "message": "triggers lists the same event more than once; an event starts at most one run of a workflow, "
    "so list each event once and merge the conditions into one `if` (joined with ||)",
}
_BACKOFF_ORDER: dict[str, Any] = {
    "rule": "!has(self.initial) || !has(self.max) || duration(self.initial) <= duration(self.max)",
    "message": "retries.backoff.initial is longer than retries.backoff.max, which caps every delay; "
    "lower initial or raise max",
    "messageExpression": "'retries.backoff.initial (' + self.initial + ') is longer than "
    "retries.backoff.max (' + self.max + '), which caps every delay; lower initial or raise max'",
    "fieldPath": ".initial",
}
_OUTPUT_ORDER: dict[str, Any] = {
    "rule": "!has(self.stepOutputBytes) || !has(self.runOutputBytes) "
    "|| self.stepOutputBytes <= self.runOutputBytes",
    "message": "limits.stepOutputBytes is larger than limits.runOutputBytes, which bounds all outputs "
    "together; lower stepOutputBytes or raise runOutputBytes",
    "fieldPath": ".stepOutputBytes",
}
_TIMEOUT_ORDER: dict[str, Any] = {
    "rule": "!has(self.step) || !has(self.run) || duration(self.step) <= duration(self.run)",
    "message": "timeouts.step is longer than timeouts.run, which bounds every step as well; "
    "shorten timeouts.step or lengthen timeouts.run",
    "messageExpression": "'timeouts.step (' + self.step + ') is longer than timeouts.run (' + self.run + "
    "'), which bounds every step as well; shorten timeouts.step or lengthen timeouts.run'",
    "fieldPath": ".step",
}


class Trigger(SpecModel):
    """An event that starts a run of the workflow."""

    event: str = Field(min_length=1, max_length=253, pattern=EVENT_NAME_PATTERN)
    """Name of the event that starts a run, for example `api/contact_list.uploaded`."""
    if_: str | None = Field(default=None, alias="if", max_length=4096)
    """Optional CEL expression over `event` (with `event.name`, `event.data`, `event.user`); the run starts
    only when it is true. Example: `event.data.rows > 0`."""


class Backoff(SpecModel):
    """How long to wait before retrying a failed step: `initial * factor^(n-1)`, capped at `max`, plus a
    random jitter of up to `jitter`."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_BACKOFF_ORDER]})

    initial: str = Field(default="15s", pattern=SPEC_DURATION_PATTERN, max_length=32)
    """Delay before the first retry, as a duration (`15s`, `1m`, `500ms`)."""
    factor: float = Field(default=2.0, ge=1.0, le=10.0)
    """Multiplier between successive delays; fractions such as 1.5 are allowed."""
    max: str = Field(default="1h", pattern=SPEC_DURATION_PATTERN, max_length=32)
    """Upper bound of a delay before jitter."""
    jitter: str = Field(default="30s", pattern=SPEC_DURATION_PATTERN, max_length=32)
    """Up to this much random time is added to each delay, so that many failing runs do not retry in step."""

    @model_validator(mode="after")
    def _initial_within_max(self) -> Backoff:
        # The same rule as the CRD's CEL, for files read without an API server (`kubestep run`).
        if parse_duration(self.initial) > parse_duration(self.max):
            raise ValueError(
                f"retries.backoff.initial ({self.initial}) is longer than retries.backoff.max ({self.max}), "
                "which caps every delay; lower initial or raise max"
            )
        return self

    def delays(self) -> tuple[float, float, float, float]:
        """The policy in seconds: initial, factor, max, jitter."""
        return (
            parse_duration(self.initial),
            self.factor,
            parse_duration(self.max),
            parse_duration(self.jitter),
        )


class RetryPolicy(SpecModel):
    """How failed step attempts are retried. Each step has its own budget."""

    limit: int = Field(default=4, ge=0, le=20)
    """Retries after the first attempt of a step (4 means up to 5 attempts). 0 disables retries."""
    backoff: Backoff = Field(default_factory=Backoff)
    """Delay between attempts."""
    disruption_limit: int = Field(default=10, ge=0, le=100)
    """Attempts lost to the cluster (pod evicted or deleted, node lost, Job vanished) are retried at once
    without spending `limit`, up to this many times per step."""


class Timeouts(SpecModel):
    """Time limits. A step attempt over its limit is stopped and counts as a failed attempt."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_TIMEOUT_ORDER]})

    step: str | None = Field(default=None, pattern=SPEC_DURATION_PATTERN, max_length=32)
    """Longest time one step attempt may run (its pod's `activeDeadlineSeconds`). Unset: no limit."""
    run: str | None = Field(default=None, pattern=SPEC_DURATION_PATTERN, max_length=32)
    """Longest time a whole run may take, waits included. Unset: no limit."""

    @model_validator(mode="after")
    def _step_within_run(self) -> Timeouts:
        if self.step and self.run and parse_duration(self.step) > parse_duration(self.run):
            raise ValueError(
                f"timeouts.step ({self.step}) is longer than timeouts.run ({self.run}), which bounds every "
                "step as well; shorten timeouts.step or lengthen timeouts.run"
            )
        return self


class Limits(SpecModel):
    """Size limits of what steps return. Outputs live in the run's status and reach every step pod through
    a Secret, both of which Kubernetes caps near 1 MiB."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_OUTPUT_ORDER]})

    step_output_bytes: int = Field(default=65536, ge=1024, le=262144)
    """Largest JSON output a step may return, in bytes. A larger output fails the step (not retried)
    with a message naming the size; keep big data in object storage and return a reference."""
    run_output_bytes: int = Field(default=524288, ge=1024, le=786432)
    """Largest total of the JSON outputs of all steps of a run, in bytes. A step whose output would
    exceed it fails (not retried) with a message naming the total."""

    @model_validator(mode="after")
    def _step_within_run(self) -> Limits:
        if self.step_output_bytes > self.run_output_bytes:
            raise ValueError(
                f"limits.stepOutputBytes ({self.step_output_bytes}) is larger than limits.runOutputBytes "
                f"({self.run_output_bytes}), which bounds all outputs together; lower stepOutputBytes or "
                "raise runOutputBytes"
            )
        return self


class PodTemplate(SpecModel):
    """Overrides applied to every step pod."""

    service_account_name: str | None = None
    """ServiceAccount the step pods run as. Its token is never mounted: steps need no API access."""
    resources: dict[str, Any] | None = Field(default=None, json_schema_extra=_PRESERVE)
    """Container resources (`requests`, `limits`), as in a Pod."""
    env: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra={"items": _PRESERVE})
    """Environment variables, as in a container (`name` with `value` or `valueFrom`)."""
    env_from: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra={"items": _PRESERVE})
    """Sources of environment variables (`configMapRef`, `secretRef`), as in a container."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Labels a node must have to run step pods."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra={"items": _PRESERVE})
    """Tolerations of step pods, as in a Pod."""
    image_pull_secrets: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra={"items": _PRESERVE}
    )
    """Secrets used to pull the image (`- name: regcred`)."""


class WorkflowSpec(SpecModel):
    """What to run and when."""

    triggers: list[Trigger] = Field(
        min_length=1, max_length=20, json_schema_extra={"x-kubernetes-validations": [_UNIQUE_TRIGGER_EVENTS]}
    )
    """Events that start a run. Each event starts at most one run of this workflow."""
    image: str = Field(min_length=1)
    """Container image holding the workflow's code, built `FROM` the kubestep runner image."""
    function: str = Field(pattern=FUNCTION_PATTERN)
    """The workflow function as `module:function`, importable in the image, for example
    `contacts.workflows:process`."""
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    """Retry policy of every step."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    """Time limits of step attempts and of the whole run."""
    limits: Limits = Field(default_factory=Limits)
    """Size limits of step outputs."""
    pod_template: PodTemplate = Field(default_factory=PodTemplate)
    """Overrides applied to every step pod."""

    @model_validator(mode="after")
    def _unique_trigger_events(self) -> WorkflowSpec:
        events = [t.event for t in self.triggers]
        if len(set(events)) != len(events):
            raise ValueError(_UNIQUE_TRIGGER_EVENTS["message"])
        return self


class WorkflowStatus(Model):
    """What the operator observed about the workflow."""

    observed_generation: int | None = None
    """The generation of the spec this status describes."""
    conditions: list[Condition] = Field(default_factory=list)
    """`Ready` is True when the spec is usable; otherwise False with a reason and a message naming the fix."""
    active: int = 0
    """Runs of this workflow not yet finished."""
    succeeded: int = 0
    """Runs of this workflow that succeeded."""
    failed: int = 0
    """Runs of this workflow that failed or were cancelled."""


class Workflow(Model):
    """A durable workflow: a Python function made of steps, started by events. Short name `ksw`."""

    api_version: Literal["kubestep.dev/v1alpha1"] = API_VERSION
    """`kubestep.dev/v1alpha1`."""
    kind: Literal["Workflow"] = "Workflow"
    """`Workflow`."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: WorkflowSpec
    """The definition."""
    status: WorkflowStatus = Field(default_factory=WorkflowStatus)
    """Written by the operator."""
