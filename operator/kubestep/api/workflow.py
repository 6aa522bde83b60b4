"""The `Workflow` resource: a definition — the image and function to run, its triggers and policies."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from kubestep.api.base import API_VERSION, Condition, Model, ObjectMeta, Rule, SpecModel, Worded
from kubestep.api.cron import CRON_FORMAT_PROBLEM, CRON_PATTERN
from kubestep.api.cron import problem as cron_problem
from kubestep.api.durations import (
    MAX_SPEC_DURATION,
    MAX_SPEC_DURATION_SECONDS,
    SPEC_DURATION_PARSABLE_PATTERN,
    SPEC_DURATION_PATTERN,
    parse_duration,
)
from kubestep.api.flow import MAX_CONCURRENCY_ENTRIES, MAX_CONCURRENCY_LIMIT, UNIQUE_CONCURRENCY, Concurrency
from kubestep.api.pod import PodTemplate, ResourceRequirements, Toleration

#: Event names: a path of words, for example `api/contact_list.uploaded`.
EVENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*$"
#: `module.path:function` as Python imports it.
FUNCTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

#: How event names are refused, by the API server and by `kubestep run` alike.
EVENT_NAME_FORMAT = Worded(
    EVENT_NAME_PATTERN,
    "is not a valid event name; use ASCII letters, digits and the characters . _ - in parts joined by /, "
    "each part starting with a letter or a digit, e.g. api/contact_list.uploaded",
)
FUNCTION_FORMAT = Worded(
    FUNCTION_PATTERN,
    "is not module:function; write the module's import path, a colon and the function's name, "
    "e.g. contacts.workflows:process",
)
DURATION_FORMAT = Worded(
    SPEC_DURATION_PATTERN,
    "is not a duration; write a number and a unit (ms, s, m or h; a day is 24h), e.g. 30s, 1h30m or 48h",
)
_TOO_LONG = (
    f"is longer than {MAX_SPEC_DURATION} (366 days), the longest duration kubestep accepts; "
    f"use {MAX_SPEC_DURATION} or less"
)
#: Well-formed but too long. A value with too many digits for CEL's `duration()` is longer than the limit
#: anyway, so it is refused without being parsed; a malformed value is left to the format's own message.
_DURATION_BOUND = Rule(
    rule=f"!self.matches(r'{SPEC_DURATION_PATTERN}') || (self.matches(r'{SPEC_DURATION_PARSABLE_PATTERN}') "
    f"&& duration(self) <= duration('{MAX_SPEC_DURATION}'))",
    message=f"the duration {_TOO_LONG}",
    message_expression=f'"\'" + self + "\' {_TOO_LONG}"',
)


def _within_bound(value: str) -> str:
    if parse_duration(value) > MAX_SPEC_DURATION_SECONDS:
        raise PydanticCustomError(
            "kubestep_duration", "'{value}' {problem}", {"value": value, "problem": _TOO_LONG}
        )
    return value


#: A duration in a resource spec: a number and a unit (`15s`, `1h30m`, `500ms`), at most 366 days.
SpecDuration = Annotated[
    str,
    Field(max_length=32),
    DURATION_FORMAT,
    _DURATION_BOUND,
    AfterValidator(_within_bound),
]


def _parsable(*fields: str) -> str:
    """A CEL guard: the fields hold durations that `duration()` parses (else the field's own rules speak)."""
    return " && ".join(f"self.{f}.matches(r'{SPEC_DURATION_PARSABLE_PATTERN}')" for f in fields)


# Rules the API server checks (CEL in the CRDs that `kubestep.api.crdgen` writes); Pydantic ignores them.
# The API server rejects a CRD whose rules it estimates too costly: a rule that iterates a list needs the
# list's `max_length` and the items' strings a `max_length` (triggers: 20 events of at most 253 characters).
# A rule's message names the field, what is wrong and the fix. No `reason: FieldValueDuplicate`: the API
# server would then print "Duplicate value" and drop the message. A rule comparing durations first checks
# that both parse: on a malformed value only that field's own message is shown, not a CEL type error.

_UNIQUE_TRIGGER_EVENTS: dict[str, Any] = {
    "rule": "self.all(t, !has(t.event) || self.exists_one(u, has(u.event) && u.event == t.event))",
    "message": "triggers lists the same event more than once; an event starts at most one run of a workflow, "
    "so list each event once and merge the conditions into one `if` (joined with ||)",
}
_BACKOFF_ORDER: dict[str, Any] = {
    "rule": "!has(self.initial) || !has(self.max) || !(" + _parsable("initial", "max") + ") "
    "|| duration(self.initial) <= duration(self.max)",
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
    "rule": "!has(self.step) || !has(self.run) || !(" + _parsable("step", "run") + ") "
    "|| duration(self.step) <= duration(self.run)",
    "message": "timeouts.step is longer than timeouts.run, which bounds every step as well; "
    "shorten timeouts.step or lengthen timeouts.run",
    "messageExpression": "'timeouts.step (' + self.step + ') is longer than timeouts.run (' + self.run + "
    "'), which bounds every step as well; shorten timeouts.step or lengthen timeouts.run'",
    "fieldPath": ".step",
}


_THROTTLE_PERIOD: dict[str, Any] = {
    "rule": "!(" + _parsable("period") + ") || duration(self.period) >= duration('1s')",
    "message": "throttle.period is shorter than 1s; use a period of at least 1s (e.g. 1s, 1m)",
    "fieldPath": ".period",
}


_TRIGGER_KIND: list[dict[str, Any]] = [
    {
        "rule": "has(self.event) != has(self.cron)",
        "message": "each of spec.triggers has either `event` (runs start on an event) or `cron` (runs "
        "start on a schedule); set exactly one of them",
    },
    {
        "rule": "has(self.cron) || (!has(self.timezone) && !has(self.startingDeadline))",
        "message": "timezone and startingDeadline of spec.triggers belong to a `cron` trigger; remove them "
        "or add `cron`",
    },
    {
        "rule": "!has(self.cron) || !has(self.__if__)",
        "message": "`if` of spec.triggers belongs to an `event` trigger; a `cron` trigger starts a run at "
        "every tick",
    },
]
CRON_FORMAT = Worded(CRON_PATTERN, CRON_FORMAT_PROBLEM)


class Trigger(SpecModel):
    """What starts a run of the workflow: an event (`event`, with an optional `if`) or a schedule (`cron`)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _TRIGGER_KIND})  # type: ignore[dict-item]

    event: Annotated[str, EVENT_NAME_FORMAT] | None = Field(default=None, min_length=1, max_length=253)
    """Name of the event that starts a run, for example `api/contact_list.uploaded`."""
    if_: str | None = Field(default=None, alias="if", max_length=4096)
    """Optional CEL expression over `event` (with `event.name`, `event.data`, `event.user`); the run starts
    only when it is true. Example: `event.data.rows > 0`."""
    cron: Annotated[str, CRON_FORMAT] | None = Field(default=None, max_length=128)
    """A schedule: five cron fields (`minute hour day-of-month month day-of-week`, e.g. `*/15 * * * *`;
    a sixth, leading field of seconds is accepted) or `@yearly`, `@monthly`, `@weekly`, `@daily`,
    `@hourly`. Each tick starts one run (event `kubestep/scheduled.tick`, `data.scheduledAt` its time)
    named from the workflow and the tick, so no tick ever starts two."""
    timezone: str | None = Field(default=None, max_length=64)
    """IANA time zone of `cron` (`Europe/Berlin`); unset: UTC. The zone's daylight-saving rules apply: a
    time skipped in spring runs at the first time after it, a time repeated in autumn runs once."""
    starting_deadline: SpecDuration | None = None
    """How late a missed tick (the operator was down) may still start; older ones are skipped and counted
    in `status.skippedTicks`. Only the most recent missed tick starts. Unset: `5m`."""

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        # The CRD's rules, for files read without an API server (`kubestep run`).
        holds = (
            (self.event is None) != (self.cron is None),
            self.cron is not None or (self.timezone is None and self.starting_deadline is None),
            self.cron is None or self.if_ is None,
        )
        for rule, ok in zip(_TRIGGER_KIND, holds, strict=True):
            if not ok:
                raise ValueError(rule["message"])
        if self.cron is not None and (found := cron_problem(self.cron, self.timezone)):
            raise ValueError(found)
        return self


class Backoff(SpecModel):
    """How long to wait before retrying a failed step: `initial * factor^(n-1)`, capped at `max`, plus a
    random jitter of up to `jitter`."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_BACKOFF_ORDER]})

    initial: SpecDuration = "15s"
    """Delay before the first retry, as a duration (`15s`, `1m`, `500ms`)."""
    factor: float = Field(default=2.0, ge=1.0, le=10.0)
    """Multiplier between successive delays; fractions such as 1.5 are allowed."""
    max: SpecDuration = "1h"
    """Upper bound of a delay before jitter."""
    jitter: SpecDuration = "30s"
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

    step: SpecDuration | None = None
    """Longest time one step attempt may run (its pod's `activeDeadlineSeconds`), as a duration (`30m`, `2h`)
    of at most `8784h` (366 days). Unset: no limit."""
    run: SpecDuration | None = None
    """Longest time a whole run may take, waits included, as a duration of at most `8784h` (366 days).
    Unset: no limit."""
    pod_start: SpecDuration = "5m"
    """Longest time a step attempt's pod may take to start running: to be created (a missing
    ServiceAccount or a quota stops that), scheduled, and have its image pulled and volumes mounted. Past
    it the attempt fails with the reason Kubernetes gives (`FailedCreate`, `ImagePullBackOff`,
    `Unschedulable`, ...) and is retried as `spec.retries` says. Until then the step's `pending` says why
    (for the run's first pod, whose step is not known yet, the `Succeeded` condition's message)."""
    start: SpecDuration | None = None
    """Longest time a run may wait from its creation to the start of its first step (queued by
    `spec.concurrency` or `spec.throttle`, or held by `spec.paused`), as a duration of at most `8784h`.
    Past it the run ends `Cancelled` with error type `StartTimeout`. Unset: it waits as long as it takes."""

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


class ExecutionMode(StrEnum):
    """How a run's steps map to pods."""

    POD_PER_STEP = "PodPerStep"
    CHAINED = "Chained"


class ExecutionPolicy(SpecModel):
    """How steps are given pods: one each (isolation, per-step resources and timeouts), or several in a row
    in one pod (speed: no pod start between them)."""

    mode: ExecutionMode = ExecutionMode.POD_PER_STEP
    """`PodPerStep`: every step attempt runs in a pod of its own. `Chained`: a pod that finished a
    `step.run` goes on to execute the next one, up to `maxStepsPerPod` steps and `maxPodSeconds`; each step
    is recorded as it finishes (a marked line in the pod's log), so a pod that dies keeps the steps it
    finished. Sleeps, waits, invokes, sends, parallel groups and retries end the chain, as does a step
    that fails. In a chain `timeouts.step` bounds the whole pod (plus `maxPodSeconds`), not each step."""
    max_steps_per_pod: int = Field(default=10, ge=1, le=100)
    """`Chained` only: most steps one pod executes."""
    max_pod_seconds: int = Field(default=300, ge=1, le=86400)
    """`Chained` only: no new step is begun in a pod that has run this long (seconds)."""


class Throttle(SpecModel):
    """A cap on how often runs start: the rest wait in phase `Queued`, in order, and are never dropped."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_THROTTLE_PERIOD]})

    limit: int = Field(ge=1, le=MAX_CONCURRENCY_LIMIT)
    """Run starts per `period` (per value of `key`, when set), spread evenly: one every `period / limit`."""
    period: SpecDuration
    """The period `limit` is counted over, at least `1s`, e.g. `1m`."""
    burst: int = Field(default=0, ge=0, le=MAX_CONCURRENCY_LIMIT)
    """Extra starts allowed at once after a quiet time, beyond the even spread."""
    key: str | None = Field(default=None, min_length=1, max_length=1024)
    """Optional CEL expression over `event` whose value gives each its own throttle, for example
    `event.data.tenant`."""

    @model_validator(mode="after")
    def _period_at_least_a_second(self) -> Throttle:
        if parse_duration(self.period) < 1:
            raise ValueError(_THROTTLE_PERIOD["message"])
        return self

    def interval(self) -> float:
        """Seconds between two starts at the even spread."""
        return parse_duration(self.period) / self.limit


#: How far `spec.priority` may move a queued run, in seconds, either way.
MAX_PRIORITY_SECONDS = 3600


class Priority(SpecModel):
    """Which queued runs go first."""

    run: str = Field(min_length=1, max_length=1024)
    """CEL expression over `event` giving an integer of seconds: a queued run is ordered as if it had been
    queued that much earlier (positive) or later (negative), in every queue of `concurrency` and `throttle`.
    Clamped to ±3600; a value that is not a number, or an expression that fails, counts as 0. Example:
    `event.data.plan == 'enterprise' ? 300 : 0`."""


#: The most events one run of `spec.batch` receives.
MAX_BATCH_SIZE = 100

_DEBOUNCE_PERIOD: dict[str, Any] = {
    "rule": "!(" + _parsable("period") + ") || duration(self.period) >= duration('1s')",
    "message": "debounce.period is shorter than 1s; use a period of at least 1s (e.g. 3s, 1m)",
    "fieldPath": ".period",
}
_DEBOUNCE_TIMEOUT: dict[str, Any] = {
    "rule": "!has(self.timeout) || !(" + _parsable("period", "timeout") + ") "
    "|| duration(self.timeout) >= duration(self.period)",
    "message": "debounce.timeout is shorter than debounce.period, so no event could ever be waited for; "
    "lengthen timeout or shorten period",
    "fieldPath": ".timeout",
}
_BATCH_TIMEOUT: dict[str, Any] = {
    "rule": "!(" + _parsable("timeout") + ") || duration(self.timeout) >= duration('1s')",
    "message": "batch.timeout is shorter than 1s; use a timeout of at least 1s (e.g. 5s, 1m)",
    "fieldPath": ".timeout",
}
_DEBOUNCE_OR_BATCH: dict[str, Any] = {
    "rule": "!has(self.debounce) || !has(self.batch)",
    "message": "spec.debounce and spec.batch are both set; a workflow holds its events one way: keep "
    "spec.debounce (one run with the last event) or spec.batch (one run with many events)",
}


class Debounce(SpecModel):
    """Hold a workflow's events and start one run, with the last of them, once they stop arriving."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [_DEBOUNCE_PERIOD, _DEBOUNCE_TIMEOUT]}
    )

    period: SpecDuration
    """The run starts once no event (of its key) arrived for this long, at least `1s`, e.g. `3s`. Each
    event replaces the one held before it; the replaced Events say `Debounced` and name the run."""
    key: str | None = Field(default=None, min_length=1, max_length=1024)
    """Optional CEL expression over `event` whose value debounces each separately, for example
    `event.data.document`. An event whose key fails to evaluate counts under the empty key."""
    timeout: SpecDuration | None = None
    """The longest a run waits from its first event, however steadily events keep arriving (at least
    `period`); unset: no bound."""

    @model_validator(mode="after")
    def _bounds(self) -> Debounce:
        if parse_duration(self.period) < 1:
            raise ValueError(_DEBOUNCE_PERIOD["message"])
        if self.timeout is not None and parse_duration(self.timeout) < parse_duration(self.period):
            raise ValueError(_DEBOUNCE_TIMEOUT["message"])
        return self


class Batch(SpecModel):
    """Hold a workflow's events and start one run for several of them (`ctx.events`)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_BATCH_TIMEOUT]})

    max_size: int = Field(ge=1, le=MAX_BATCH_SIZE)
    """The most events one run receives: the run starts as soon as it has this many."""
    timeout: SpecDuration
    """The run starts this long after its first event even when it has fewer than `maxSize`, at least
    `1s`, e.g. `5s`."""
    key: str | None = Field(default=None, min_length=1, max_length=1024)
    """Optional CEL expression over `event` whose value batches each separately, for example
    `event.data.tenant`. An event whose key fails to evaluate counts under the empty key."""

    @model_validator(mode="after")
    def _timeout_at_least_a_second(self) -> Batch:
        if parse_duration(self.timeout) < 1:
            raise ValueError(_BATCH_TIMEOUT["message"])
        return self


_RATE_LIMIT_PERIOD: dict[str, Any] = {
    "rule": "!(" + _parsable("period") + ") || duration(self.period) >= duration('1s')",
    "message": "rateLimit.period is shorter than 1s; use a period of at least 1s (e.g. 1m, 1h)",
    "fieldPath": ".period",
}


class RateLimit(SpecModel):
    """A cap on how many events start a run: an event over it starts nothing (it is dropped, not queued), and
    its `Processed` condition says `RateLimited`."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_RATE_LIMIT_PERIOD]})

    limit: int = Field(ge=1, le=MAX_CONCURRENCY_LIMIT)
    """Runs that events may start within any `period` (per value of `key`, when set): the runs of the
    workflow created in the last `period`, counted to the second, whatever they are doing now."""
    period: SpecDuration
    """The sliding window `limit` is counted over, at least `1s`, e.g. `1m` or `24h`."""
    key: str | None = Field(default=None, min_length=1, max_length=1024)
    """Optional CEL expression over `event` whose value gives each its own limit, for example
    `event.user.id`. An event whose key fails to evaluate counts under the empty key."""

    @model_validator(mode="after")
    def _period_at_least_a_second(self) -> RateLimit:
        if parse_duration(self.period) < 1:
            raise ValueError(_RATE_LIMIT_PERIOD["message"])
        return self


class SingletonMode(StrEnum):
    """What an event does when a run of its key is still active."""

    SKIP = "Skip"
    CANCEL = "Cancel"


class Singleton(SpecModel):
    """At most one active (not finished) run of the workflow per key value."""

    key: str | None = Field(default=None, min_length=1, max_length=1024)
    """Optional CEL expression over `event` whose value names the run's slot, for example
    `event.data.customer`; unset: one active run for the whole workflow. An event whose key fails to
    evaluate counts under the empty key."""
    mode: SingletonMode = SingletonMode.SKIP
    """`Skip` (default): an event arriving while a run of its key is active starts nothing, and its
    `Processed` condition (reason `SingletonSkipped`) names that run. `Cancel`: the active run is cancelled
    (its `status.error` names the Event that replaced it) and the event's run starts once it has ended:
    until then it waits in phase `Queued`, so the two never run side by side."""


#: Entries of `spec.steps`: enough for every step of a large workflow, small enough for the API server's
#: cost estimate of the rules that iterate them.
MAX_STEP_POLICIES = 64
_STEP_KEYS: dict[str, Any] = {
    "rule": "self.all(k, size(k) >= 1 && size(k) <= 253)",
    "message": "spec.steps has a key that is empty or longer than 253 characters; use a step's id, its "
    "name, or a glob such as `enrich-*`",
}


class StepPolicy(SpecModel):
    """Overrides for the steps whose id or name a `spec.steps` key matches. Each field set here wins over
    the same setting in the step's code (`StepOptions`) and over the workflow-wide one."""

    retries: int | None = Field(default=None, ge=0, le=20)
    """Retries after the first attempt of the step, in place of `spec.retries.limit` (6 attempts: 5).
    The backoff stays `spec.retries.backoff`."""
    timeout: SpecDuration | None = None
    """Longest time one attempt of the step may run, in place of `spec.timeouts.step`."""
    resources: ResourceRequirements | None = None
    """Container resources of the step's pod, merged by resource name over `spec.podTemplate.resources`
    (`limits.memory: 4Gi` here keeps the template's CPU)."""
    node_selector: dict[str, str] | None = Field(default=None, max_length=32)
    """Node labels the step's pod needs, added to (and overriding) `spec.podTemplate.nodeSelector`."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Tolerations of the step's pod, added to `spec.podTemplate.tolerations`."""


#: Entries of `spec.cancelOn`.
MAX_CANCEL_ON = 5


class CancelOn(SpecModel):
    """An event that cancels a run of this workflow in flight."""

    event: Annotated[str, EVENT_NAME_FORMAT] = Field(min_length=1, max_length=253)
    """Name of the event that cancels the run, for example `api/contact_list.deleted`."""
    if_: str | None = Field(default=None, alias="if", max_length=4096)
    """Optional CEL expression over `event` (the run's trigger) and `async` (the arriving event); the run
    is cancelled only when it is true. Example: `async.data.upload_id == event.data.upload_id`."""
    timeout: SpecDuration | None = None
    """How long after the run started such an event still cancels it; unset: for the whole run."""


class History(SpecModel):
    """How many finished runs of the workflow are kept; older ones are deleted with their Jobs."""

    succeeded: int = Field(default=50, ge=0, le=10000)
    """Succeeded runs kept, newest first."""
    failed: int = Field(default=50, ge=0, le=10000)
    """Failed and cancelled runs kept, newest first."""
    jobs_after_finished: SpecDuration = "1m"
    """How long a finished run keeps its step Jobs, and their pods (for `kubectl logs`), before they are
    deleted; the run itself stays as `succeeded` and `failed` say. Every attempt's log tail is in the run's
    status, so `kubestep logs` and `kubectl describe ksr` still show it. `0s` deletes them as soon as the
    run has finished; a long duration (`8760h`) keeps them as long as the run."""


class OnFailure(SpecModel):
    """A handler run when a run of this workflow fails for good."""

    function: Annotated[str, FUNCTION_FORMAT] = Field(max_length=512)
    """The handler as `module:function`, in the workflow's image, written like any workflow function
    (`fn(ctx, step)`, with every step tool). `ctx.event` is the `kubestep/run.failed` Event: its `data`
    holds `workflow`, `run`, `error` (`type`, `message`, `step`) and `event` (the failed run's event)."""


class WorkflowSpec(SpecModel):
    """What to run and when."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_DEBOUNCE_OR_BATCH]})

    triggers: list[Trigger] = Field(
        min_length=1, max_length=20, json_schema_extra={"x-kubernetes-validations": [_UNIQUE_TRIGGER_EVENTS]}
    )
    """Events that start a run. Each event starts at most one run of this workflow."""
    image: str = Field(min_length=1)
    """Container image holding the workflow's code, built `FROM` the kubestep runner image."""
    function: Annotated[str, FUNCTION_FORMAT] = Field(max_length=512)
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
    execution: ExecutionPolicy = Field(default_factory=ExecutionPolicy)
    """One pod per step (the default), or several steps in a row per pod (`mode: Chained`)."""
    concurrency: list[Concurrency] = Field(
        default_factory=list,
        max_length=MAX_CONCURRENCY_ENTRIES,
        json_schema_extra={"x-kubernetes-validations": [UNIQUE_CONCURRENCY]},
    )
    """Flow control: at most two caps on step attempts (`scope: Steps`) or runs (`scope: Runs`) executing at
    once, overall or per key. Work over a cap waits in phase `Queued`; see "Flow control" in the README."""
    throttle: Throttle | None = None
    """Flow control: at most `limit` run starts per `period` (plus `burst`), the rest queued in order."""
    priority: Priority | None = None
    """Flow control: moves queued runs earlier or later in their queues."""
    debounce: Debounce | None = None
    """Flow control: hold the events and start one run with the last, once they stop arriving for
    `period` (per key). Not together with `batch`."""
    batch: Batch | None = None
    """Flow control: one run receives up to `maxSize` events (`ctx.events`), started when full or `timeout`
    after its first. Not together with `debounce`."""
    rate_limit: RateLimit | None = None
    """Flow control: at most `limit` runs started by events per `period`; events over it start nothing."""
    singleton: Singleton | None = None
    """Flow control: at most one active run per key; a new event is skipped, or replaces the active run."""
    steps: dict[str, StepPolicy] = Field(
        default_factory=dict,
        max_length=MAX_STEP_POLICIES,
        json_schema_extra={"x-kubernetes-validations": [_STEP_KEYS]},
    )
    """Per-step policy: a step's id (`enrich`, `fetch:2`), its name (every repeat of it in a loop) or a glob
    over either (`notify-*`) mapped to overrides of `retries`, `timeout` and the step pod's `resources`,
    `nodeSelector` and `tolerations`. When several keys match, each setting comes from the most specific:
    the exact id, then the exact name, then the glob with the most literal characters. Pod settings apply to
    every execution created for a known step, that is all but a run's first (which discovers its step and
    runs with `spec.podTemplate` and `spec.timeouts.step`); retries apply from the first attempt."""
    history: History = Field(default_factory=History)
    """Finished runs kept: the newest `succeeded` succeeded ones and `failed` failed or cancelled ones; older
    runs are deleted, and their Jobs, pods and Secrets with them (owner references). An Event's `spec.id`
    stays deduplicated for the dedupe window all the same."""
    ttl_after_finished: SpecDuration | None = None
    """Delete each run this long after it finished, whatever `history` keeps; unset: runs stay until
    `history` deletes them."""
    cancel_on: list[CancelOn] = Field(default_factory=list, max_length=MAX_CANCEL_ON)
    """Events that cancel a run in flight (at most 5): the first published after the run started whose
    `if` holds cancels it, as `spec.cancel` does: its running step pods are stopped, its child runs
    cancelled, and `status.error` names the Event."""
    on_failure: OnFailure | None = None
    """Shorthand for a handler of this workflow's failures: each run that fails for good starts one run of
    `onFailure.function` (same image and settings), triggered by its `kubestep/run.failed` Event. A
    handler's own failure starts no other handler."""
    paused: bool = False
    """Hold the workflow: events still start runs, but they wait in phase `Queued` (their `Admitted`
    condition says `WorkflowPaused`), and runs in flight finish the steps they are running, then wait the
    same way before their next step. Setting it back to `false` resumes them where they were, under
    `spec.concurrency` and `spec.throttle`. Sleeps, waits and timeouts run on meanwhile."""

    @model_validator(mode="after")
    def _unique_trigger_events(self) -> WorkflowSpec:
        events = [t.event for t in self.triggers]
        if len(set(events)) != len(events):
            raise ValueError(_UNIQUE_TRIGGER_EVENTS["message"])
        pairs = [(c.scope, c.key or "") for c in self.concurrency]
        if len(set(pairs)) != len(pairs):
            raise ValueError(UNIQUE_CONCURRENCY["message"])
        if self.debounce is not None and self.batch is not None:
            raise ValueError(_DEBOUNCE_OR_BATCH["message"])
        return self

    @model_validator(mode="after")
    def _step_keys(self) -> WorkflowSpec:
        bad = [k for k in self.steps if not 1 <= len(k) <= 253]
        if bad:
            raise ValueError(_STEP_KEYS["message"])
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
    next_tick: datetime | None = None
    """When the next run of a `cron` trigger is due."""
    last_tick: datetime | None = None
    """The latest tick handled: its run started, or it was skipped."""
    skipped_ticks: int = 0
    """Ticks missed (the operator was down) by more than their `startingDeadline`, so never started."""


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
