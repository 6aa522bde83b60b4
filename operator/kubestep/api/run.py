"""The `WorkflowRun` resource: one execution of a workflow, with its steps and their attempts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field

from kubestep.api.base import API_VERSION, Condition, Model, ObjectMeta
from kubestep.api.event import EventSpec
from kubestep.api.flow import RunAdmission
from kubestep.api.policy import StepPolicyStatus
from kubestep.api.steps import StepType as StepType
from kubestep.api.workflow import MAX_BATCH_SIZE, WorkflowSpec

_PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


def _immutable(message: str) -> dict[str, Any]:
    """Schema extra making a field unchangeable after creation; ``message`` names the field and the fix."""
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": message}]}


class RunPhase(StrEnum):
    """Where a run is in its life."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SLEEPING = "Sleeping"
    WAITING = "Waiting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        """True when nothing more will happen to the run."""
        return self in (RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.CANCELLED)


class StepPhase(StrEnum):
    """Where a step is."""

    PENDING = "Pending"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SLEEPING = "Sleeping"
    WAITING = "Waiting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        """True when the step has its final result (an output or an error)."""
        return self in (StepPhase.SUCCEEDED, StepPhase.FAILED, StepPhase.CANCELLED)


class AttemptResult(StrEnum):
    """How one attempt ended. Only `Error`, `RetryAfter` and `Timeout` spend the retry budget."""

    SUCCEEDED = "Succeeded"
    ERROR = "Error"
    NON_RETRIABLE = "NonRetriable"
    RETRY_AFTER = "RetryAfter"
    TIMEOUT = "Timeout"
    DISRUPTION = "Disruption"
    LOST = "Lost"
    CANCELLED = "Cancelled"

    @property
    def spends_budget(self) -> bool:
        """Whether this result counts against `retries.limit`."""
        return self in (AttemptResult.ERROR, AttemptResult.RETRY_AFTER, AttemptResult.TIMEOUT)


class ErrorInfo(Model):
    """An error as users see it: its type and message."""

    type: str
    """The exception's class name, or a kubestep reason such as `Timeout` or `OutputTooLarge`."""
    message: str
    """What went wrong, in a sentence."""
    step: str | None = None
    """The step the error came from, when it came from a step."""


class Attempt(Model):
    """One attempt of a step: one pod (or, locally, one process)."""

    number: int
    """1 for the first attempt, 2 for the first retry, and so on."""
    job: str
    """Name of the Job (or local execution) that ran the attempt."""
    started_at: datetime | None = None
    """When the attempt started."""
    finished_at: datetime | None = None
    """When it ended."""
    result: AttemptResult | None = None
    """How it ended; unset while it runs."""
    reason: str = ""
    """Why it ended so, e.g. the exception type, `DeadlineExceeded`, `Evicted`, `PodDeleted`."""
    exit_code: int | None = None
    """The container's exit code, when it exited."""
    message: str = ""
    """The error message, shortened."""
    log_tail: str = ""
    """The last lines the attempt printed (`kubestep logs` shows them once its pod is gone)."""
    retry_delay_seconds: float | None = None
    """The wait before the next attempt, when one follows."""


class WaitInfo(Model):
    """What a waiting step waits for."""

    event: str
    """Name of the awaited event."""
    if_: str | None = Field(default=None, alias="if")
    """CEL condition over `event` (the run's trigger) and `async` (the candidate event)."""
    timeout_at: datetime
    """When the wait gives up and the step returns null."""
    matched: str | None = None
    """The name of the Event object that ended the wait, once one did."""


class InvokeInfo(Model):
    """The child run an invoke step waits on."""

    workflow: str
    """The invoked workflow."""
    run: str
    """Name of the child WorkflowRun."""
    timeout_at: datetime | None = None
    """When the invoke gives up with an error."""
    data: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_PRESERVE)
    """The data the child run was started with."""


class StepStatus(Model):
    """One step of the run, in the order the function reached it."""

    id: str
    """Unique id: the step's name, with `:N` added for the N-th repeat of a name in a loop."""
    name: str
    """The name the code gave the step."""
    type: StepType = StepType.RUN
    """`run`, `sleep`, `wait_for_event`, `invoke` or `send_event`."""
    phase: StepPhase = StepPhase.PENDING
    """Where the step is."""
    attempts: list[Attempt] = Field(default_factory=list)
    """The most recent attempts (the first and the last few are kept when there are many)."""
    attempt_count: int = 0
    """Attempts made in all, including those no longer listed."""
    failures: int = 0
    """Failed attempts that spent the retry budget."""
    disruptions: int = 0
    """Attempts lost to the cluster; they do not spend the retry budget."""
    output: Any = Field(default=None, json_schema_extra=_PRESERVE)
    """What the step returned (JSON), once it succeeded."""
    error: ErrorInfo | None = None
    """The final error, once the step failed."""
    started_at: datetime | None = None
    """When the first attempt started."""
    finished_at: datetime | None = None
    """When the step reached its result."""
    next_attempt_at: datetime | None = None
    """When the next attempt starts, while the step waits to retry."""
    wake_at: datetime | None = None
    """When a sleep step ends."""
    wait: WaitInfo | None = None
    """What a wait-for-event step waits for."""
    invoke: InvokeInfo | None = None
    """The child run of an invoke step."""
    pending: str = ""
    """Why the pod of this step's running attempt has not started yet, as Kubernetes says (e.g.
    `ImagePullBackOff: Back-off pulling image ...`); empty once it runs. Past `spec.timeouts.podStart` the
    attempt fails with that reason."""
    reused_from: str | None = None
    """In a rerun: the run whose recorded output this step reuses. The step did not run in this run."""
    policy: StepPolicyStatus | None = None
    """The retries and timeout in force for a run step and where they come from (`spec.steps`, the code's
    `StepOptions`, or the workflow-wide setting)."""


class Execution(Model):
    """A runner execution in flight: a Job in the cluster, a process locally."""

    name: str
    """The Job's name (deterministic, so creating it twice is harmless)."""
    step: str | None = None
    """The step it was started for, or unset when it discovers the next step."""
    attempt: int = 1
    """The attempt number it runs."""
    started_at: datetime
    """When it was started."""


class RunEvent(EventSpec):
    """The event that started the run, as the function receives it."""

    source: str | None = None
    """Name of the Event object (or the parent run, for invoked runs)."""


class WorkflowRef(Model):
    """Which workflow a run belongs to."""

    name: str
    """The Workflow's name, in the run's namespace."""


class ParentRef(Model):
    """The run and step that invoked this run."""

    run: str
    """The parent WorkflowRun."""
    step: str
    """The parent's invoke step."""


class ReusedStep(Model):
    """A step of the original run whose recorded output a rerun reuses instead of running the step."""

    id: str
    """The step's id in the original run."""
    name: str
    """The name the code gave the step."""
    type: StepType = StepType.RUN
    """`run`, `sleep`, `wait_for_event`, `invoke` or `send_event`."""
    output: Any = Field(default=None, json_schema_extra=_PRESERVE)
    """The output the step returned in the original run."""


class RerunRequest(Model):
    """A request for a new run of this run's event (`kubestep rerun`), carried out by the operator."""

    from_step: str | None = None
    """The first step to run again (default: the first failed step); every step before it must have
    succeeded, and the new run reuses their recorded outputs without running them."""


class RerunSpec(Model):
    """What a rerun repeats: the run it reruns and the recorded steps it reuses. Written by the operator,
    which creates reruns from `spec.rerunRequests` of the original run."""

    of: str = Field(min_length=1)
    """The original run, in the same namespace; its status lists this run under `reruns`."""
    from_step: str = Field(min_length=1)
    """The first step that runs again; every step before it reuses the original's output."""
    steps: list[ReusedStep] = Field(default_factory=list)
    """The steps reused, in the order the original reached them; the function replays them from these
    outputs without running them."""


class GatherKind(StrEnum):
    """How a run holds its workflow's events before it starts."""

    DEBOUNCE = "Debounce"
    BATCH = "Batch"


#: Once a run has been released, its gathered events no longer change.
_GATHER_CLOSES: dict[str, Any] = {
    "rule": "oldSelf.open || self == oldSelf",
    "message": "spec.gather is fixed once the run is released (open: false); send a new Event instead",
}
#: `spec.event` changes only while a debounced run still holds its events; the rule on the whole spec
#: (not on the field) can read `spec.gather`.
_EVENT_FIXED: dict[str, Any] = {
    "rule": "(has(oldSelf.gather) && oldSelf.gather.open) || self.event == oldSelf.event",
    "message": "spec.event is immutable: it is the event that started the run; "
    "send a new Event to start another run",
}
_GATHER_KEPT: dict[str, Any] = {
    "rule": "has(self.gather) == has(oldSelf.gather)",
    "message": "spec.gather is set when the run is created and stays; create a new WorkflowRun instead",
}


class RunGather(Model):
    """The events a run holds under `spec.debounce` or `spec.batch` of its workflow, written by the
    operator: it adds events while `open`, then releases the run (admitted as any other run)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_GATHER_CLOSES]})

    kind: GatherKind
    """`Debounce` (`spec.event` is the newest event) or `Batch` (`events` lists them all)."""
    key: str = Field(default="", max_length=4096)
    """The value of the `key` expression its events share ('' without a key)."""
    generation: int = Field(default=0, ge=0)
    """Which run of the key this is: 0 for the first, then one more each time."""
    open: bool = True
    """While true, the run takes in new events of its key and waits in phase `Queued`; the operator
    sets it false when it releases the run."""
    first_at: datetime
    """When the operator took in its first event: `batch.timeout` and `debounce.timeout` count from here."""
    last_at: datetime
    """When the operator took in its newest event: `debounce.period` counts from here."""
    count: int = Field(default=1, ge=1)
    """Events taken in so far (for `Debounce`, the replaced ones included)."""
    replaced: str | None = Field(default=None, max_length=253)
    """`Debounce`: the Event that `spec.event` replaced last, told so (its `Processed` condition says
    `Debounced`) by the operator, again if it stopped before."""
    events: list[RunEvent] = Field(default_factory=list, max_length=MAX_BATCH_SIZE)
    """`Batch`: the events, oldest first (`ctx.events`): by their `ts` (their Event's creation, in whole
    seconds, unless they set one), those of the same time in the order they were taken in. The first is
    also `spec.event`."""


#: `spec.cancelReason` says why `spec.cancel` is set: alone it would say something false.
_CANCEL_REASON: dict[str, Any] = {
    "rule": "!has(self.cancelReason) || (has(self.cancel) && self.cancel)",
    "message": "spec.cancelReason is set but spec.cancel is not true; set spec.cancel: true to cancel the "
    "run, or remove spec.cancelReason",
    "fieldPath": ".cancelReason",
}


class WorkflowRunSpec(Model):
    """The frozen inputs of a run. Editing the Workflow never changes a run already started."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [_EVENT_FIXED, _GATHER_KEPT, _CANCEL_REASON]}
    )

    workflow_ref: WorkflowRef = Field(
        json_schema_extra=_immutable(
            "spec.workflowRef is immutable: a run belongs to the workflow it started from; "
            "create a new WorkflowRun to run another workflow"
        )
    )
    """The workflow this run executes."""
    workflow: WorkflowSpec = Field(
        json_schema_extra=_immutable(
            "spec.workflow is immutable: it is the snapshot the run executes; "
            "edit the Workflow instead, which affects runs started afterwards"
        )
    )
    """A copy of the workflow's spec taken when the run started."""
    event: RunEvent
    """The triggering event (for a debounced run: the newest event, until the run is released)."""
    parent: ParentRef | None = None
    """Set when another run invoked this one."""
    gather: RunGather | None = None
    """Set on a run that holds events under the workflow's `spec.debounce` or `spec.batch`."""
    cancel: bool = False
    """Set to true to cancel the run: running step pods are deleted and the run ends Cancelled."""
    cancel_reason: str | None = Field(default=None, max_length=1024)
    """Why the run is cancelled, set together with `cancel`; the run's `status.error` says it. The operator
    sets it when an Event replaces the run under `spec.singleton` (mode `Cancel`), naming that Event."""
    rerun: RerunSpec | None = Field(
        default=None,
        json_schema_extra=_immutable(
            "spec.rerun is immutable: it is what the run reuses; start another rerun instead"
        ),
    )
    """Set when the run reruns another run's event, reusing the outputs of the steps before `fromStep`."""
    rerun_requests: list[RerunRequest] = Field(
        default_factory=list,
        max_length=100,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.size() >= oldSelf.size()",
                    "message": "spec.rerunRequests only grows; append an entry to ask for another rerun",
                }
            ]
        },
    )
    """Append an entry to ask for a new run of this run's event once this run has ended; the operator starts
    it (with the Workflow's current spec) and lists it under `status.reruns`. `kubestep rerun` appends."""


class WorkflowRunStatus(Model):
    """Progress and results of the run, written by the operator only."""

    phase: RunPhase = RunPhase.PENDING
    """Pending, Queued (waiting for the workflow's flow control to admit it; see `admission`), Running,
    Sleeping, Waiting, Succeeded, Failed or Cancelled."""
    started_at: datetime | None = None
    """When the run started."""
    finished_at: datetime | None = None
    """When the run ended."""
    steps: list[StepStatus] = Field(default_factory=list)
    """Steps in the order the function reached them."""
    active: list[Execution] = Field(default_factory=list)
    """Executions (Jobs) in flight."""
    image: str | None = None
    """The image every later step pod of the run uses, pinned by digest (`registry/repo@sha256:...`): the
    workflow's image as the run's first step pod ran it (its `imageID`). Pushing the workflow's tag again
    changes runs started afterwards, never this one; to move a run to new code, cancel it and rerun it
    from a step. An image given by digest is kept as written. Unset until a step pod has run, and when the
    container runtime reports no registry digest (an image loaded into the node)."""
    output: Any = Field(default=None, json_schema_extra=_PRESERVE)
    """What the function returned, once it succeeded."""
    error: ErrorInfo | None = None
    """Why the run failed."""
    progress: str = ""
    """Steps done so far, and failed ones if any, e.g. `3 done, 1 failed`. No total: steps are discovered as
    the function runs."""
    current_step: str = ""
    """The step running (several, comma-separated, when parallel steps run), else the step waiting to retry,
    sleeping or waiting; `(next)` while an execution runs whose step is not known yet (a run's first)."""
    current_attempt: int | None = None
    """The attempt number of the current step (the next one while it waits to retry)."""
    discovery_failures: int = 0
    """Executions in a row that ended before reaching any step; bounded by the sum of the retry limits."""
    retry_at: datetime | None = None
    """When the next execution starts, after one ended before reaching any step."""
    conditions: list[Condition] = Field(default_factory=list)
    """`Succeeded`: Unknown while running (its message: the progress, and why the run's pod has not
    started when its step is not known yet), then True or False, so `kubectl wait` works."""
    observed_generation: int | None = None
    """The generation of the spec last acted on."""
    rerun_of: str | None = None
    """The run this one reruns (from `spec.rerun.of`)."""
    reruns: list[str] = Field(default_factory=list)
    """Runs started later to rerun this one's event, oldest first."""
    rerun_requests_handled: int = 0
    """How many of `spec.rerunRequests` the operator has acted on (started, or refused with a warning)."""
    admission: RunAdmission | None = None
    """The run under the workflow's flow control (`spec.workflow.concurrency`): the slots granted to it and
    what it waits for. Unset for workflows without flow control."""
    announced: bool | None = None
    """Whether the run's end was published as an Event (`kubestep/run.failed`, `kubestep/run.cancelled` or
    `kubestep/run.finished`): false from its end until the Event exists, then true. Unset while the run goes
    on, and for runs that publish none: those started by such an Event, and those whose end nothing listened
    for when they ended (no Workflow triggered by that Event or, for `kubestep/run.failed`, with
    `spec.onFailure`; no step waiting for it; no run cancelled on it)."""


class WorkflowRun(Model):
    """One execution of a workflow. Short name `ksr`."""

    api_version: Literal["kubestep.dev/v1alpha1"] = API_VERSION
    """`kubestep.dev/v1alpha1`."""
    kind: Literal["WorkflowRun"] = "WorkflowRun"
    """`WorkflowRun`."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: WorkflowRunSpec
    """What the run executes."""
    status: WorkflowRunStatus = Field(default_factory=WorkflowRunStatus)
    """Written by the operator."""

    def step(self, step_id: str) -> StepStatus | None:
        """The step with this id, if the run reached it."""
        return next((s for s in self.status.steps if s.id == step_id), None)
