"""The decision: one level-triggered step from the whole observed state of a run.

``decide`` never mutates its input and never does I/O. Calling it again with the same input yields the
same result, which is what makes crashes harmless — provided adapters keep two rules:

- **carry out the actions first, then save the status**, so that a crash in between only repeats actions,
  each idempotent by the deterministic name it carries (a child run, a sent event);
- except **starting an execution, which follows the save** of the status that records it: then an
  execution recorded but never seen (deleted, or its start cut short by a crash) is observed as ``Lost``
  and retried under the next attempt's name, so no execution name is ever started twice.

After a step returns, the runner goes on replaying to the next boundary and reports it with the output
(``Report.next``): every execution but a run's first (and those after a wait, an invoke or a step that
failed for good) is started for a known step, and a function that returns right after a step needs none.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubestep.api import names
from kubestep.api.base import Condition, set_condition
from kubestep.api.durations import format_duration, parse_duration
from kubestep.api.report import MemoEntry, Report, ReportKind, RunnerState, StepRef
from kubestep.api.run import (
    Attempt,
    AttemptResult,
    ErrorInfo,
    Execution,
    InvokeInfo,
    RerunSpec,
    RunPhase,
    StepPhase,
    StepStatus,
    StepType,
    WaitInfo,
    WorkflowRun,
    WorkflowRunStatus,
)
from kubestep.api.workflow import ExecutionMode, ExecutionPolicy
from kubestep.engine import admission, backoff, images, rerun, starting
from kubestep.engine.actions import (
    Action,
    AnnounceEnd,
    CancelChild,
    Note,
    PublishEvents,
    RequeueAt,
    StartChild,
    StartExecution,
    StopExecution,
)
from kubestep.engine.cancel import cancelled_by
from kubestep.engine.cel import CelError, check, holds
from kubestep.engine.lifecycle import end_event
from kubestep.engine.observations import ArrivedEvent, ChildResult, ExitKind, Observed, Outcome, Stalled
from kubestep.engine.policy import Resolved, describe_retries, describe_timeout, resolve

#: Reasons every pod passes through on its way to running: not worth telling the user, unless they last.
_STARTING = {"PodNotCreated", "ContainerCreating", "PodInitializing"}
#: Attempts kept per step: the first and the most recent ones.
MAX_ATTEMPTS_KEPT = 10
#: No wait, delay or timeout is longer than this (as Inngest's longest sleep).
MAX_DELAY_SECONDS = 366 * 86400.0
_LOG_TAIL_CHARS = 1500
_MESSAGE_CHARS = 1000


@dataclass
class Decision:
    """The new status of the run and what to do."""

    status: WorkflowRunStatus
    actions: list[Action] = field(default_factory=list)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        """The actions of one type."""
        return [a for a in self.actions if isinstance(a, kind)]


def decide(run: WorkflowRun, observed: Observed, now: datetime) -> Decision:
    """Advance ``run`` given what was ``observed`` at ``now``."""
    return _Decider(run, now).decide(observed)


class _Decider:
    def __init__(self, run: WorkflowRun, now: datetime) -> None:
        self.run = run
        self.spec = run.spec.workflow
        self.now = now
        self.status = run.status.model_copy(deep=True)
        self.actions: list[Action] = []
        # Why the pod of an execution that has no step yet (the run's first one, or the one after a step
        # that named none) has not started: no step can show it, so the Succeeded condition does.
        self.unstarted = ""
        # Executions due to start that wait for a slot of the workflow's flow control (`engine.admission`).
        self.held = 0
        # The end Events something listens for (None: all); see `lifecycle.end_event`.
        self.listeners: frozenset[str] | None = None

    # ---------------------------------------------------------------------------------------------

    def decide(self, observed: Observed) -> Decision:
        status = self.status
        self.listeners = observed.listeners
        if status.phase.finished:
            self.start_reruns()
            return self.announce()
        if status.started_at is None and not self.run.spec.cancel:
            overdue = starting.timed_out(self.run, self.now)
            if overdue is not None:
                self.end_all(RunPhase.CANCELLED, overdue, starting.START_TIMEOUT, overdue.message)
                return self.finish()
        if status.started_at is None and not self.run.spec.cancel and admission.must_wait(self.run):
            self.held = 1  # its first execution: nothing of it starts before admission
            due = starting.deadline(self.run)
            if due is not None:
                self.actions.append(RequeueAt(due))  # nothing else wakes a queued run at its deadline
            return self.finish()
        if status.started_at is None:
            status.started_at = self.now
            status.phase = RunPhase.RUNNING
            self.note("RunStarted", f"run started by event {self.run.spec.event.name!r}")
            if self.run.spec.rerun is not None:
                self.start_rerun(self.run.spec.rerun)
        if self.run.spec.cancel:
            why = self.run.spec.cancel_reason  # e.g. the Event that replaced it under `spec.singleton`
            error = ErrorInfo(type="Cancelled", message=why) if why else None
            self.end_all(RunPhase.CANCELLED, error, "Cancelled", why or "the run was cancelled (spec.cancel)")
            return self.finish()
        since = self.run.metadata.creation_timestamp or status.started_at or self.now
        trigger = self.run.spec.event
        cancel = cancelled_by(self.spec, trigger.as_payload(), since, observed.events, trigger.source or "")
        if cancel is not None:
            error = ErrorInfo(type="Cancelled", message=cancel.message())
            self.end_all(RunPhase.CANCELLED, error, "Cancelled", cancel.message())
            return self.finish()
        for outcome in observed.outcomes:
            self.absorb(outcome)
        if not status.phase.finished:
            self.check_starts(observed.stalled)
        if not status.phase.finished:
            self.wake(observed.events, observed.children)
        if not status.phase.finished:
            self.check_run_timeout()
        if not status.phase.finished:
            self.schedule()
        if observed.status_too_large:
            self.too_large(observed.status_too_large)
        return self.finish()

    def start_rerun(self, spec: RerunSpec) -> None:
        """Begin with the reused steps already succeeded."""
        self.status.steps = rerun.seed(spec, self.now)
        self.status.rerun_of = spec.of
        self.note("RerunStarted", f"rerun of run {spec.of} from step {spec.from_step!r}")

    def start_reruns(self) -> None:
        """Start the reruns asked for in ``spec.rerunRequests`` since the last decision (once ended)."""
        starts, notes, handled = rerun.requested(self.run)
        self.status.reruns = [*self.status.reruns, *(s.name for s in starts)]
        self.status.rerun_requests_handled = handled
        self.actions.extend([*starts, *notes])

    def too_large(self, why: str) -> None:
        """End the run whose status cannot be stored, keeping what still fits: each step's id, phase,
        error and last attempt, without outputs, messages or log tails."""
        text = json.dumps(self.status.model_dump(mode="json", by_alias=True, exclude_none=True))
        # Kubernetes stores `<`, `>` and `&` escaped, as six bytes each.
        kept = len(text.encode()) + 5 * sum(text.count(c) for c in "<>&")
        for step in self.status.steps:
            step.output = None
            for attempt in step.attempts:
                attempt.log_tail = ""
                attempt.message = attempt.message[:200]
            step.attempts = step.attempts[-1:]
        self.status.output = None
        message = (
            f"the run's status grew to about {kept} bytes, more than the API server stores ({why}); "
            "the steps' outputs and attempt details were dropped. Return references to large data instead "
            "of the data, and keep spec.limits.runOutputBytes well below 1 MiB"
        )
        if self.status.phase.finished:
            self.status.error = ErrorInfo(type="StatusTooLarge", message=message)
            self.status.phase = RunPhase.FAILED
            self.note("RunFailed", message, warning=True)
            return
        self.end_all(
            RunPhase.FAILED, ErrorInfo(type="StatusTooLarge", message=message), "StatusTooLarge", message
        )

    def finish(self) -> Decision:
        self.summarize()
        admission.settle(self.run, self.status, self.held)
        if self.status.phase.finished:
            # Nothing is left to wake up for (a timer set earlier in this decision, before the run ended)
            # but the announcement of the end, made once this final status is saved.
            self.actions = [a for a in self.actions if not isinstance(a, RequeueAt)]
            ended_now = not self.run.status.phase.finished and self.status.announced is None
            if ended_now and end_event(self.run.model_copy(update={"status": self.status}), self.listeners):
                self.status.announced = False
                self.actions.append(RequeueAt(self.now))
        return Decision(self.status, self.actions)

    def announce(self) -> Decision:
        """A finished run, saved so: publish the Event of its end, once (then record that it did)."""
        # Only runs that ended owing it (False): a run that ended before kubestep announced ends (None) or
        # that announced already (True) publishes nothing.
        ended = end_event(self.run) if self.status.announced is False else None
        if ended is not None:
            self.status.announced = True
            self.actions.append(AnnounceEnd(ended.object_name, ended.payload))
        return Decision(self.status, self.actions)

    def note(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(Note(reason, message, warning))

    # Outcomes of executions -----------------------------------------------------------------------

    def absorb(self, outcome: Outcome) -> None:
        execution = next((e for e in self.status.active if e.name == outcome.name), None)
        if execution is None:
            return  # already recorded: outcomes are observed again after a crash, so ignore repeats
        self.status.active.remove(execution)
        self.pin_image(outcome)
        if outcome.kind is ExitKind.REFUSED:
            # Nothing ran, and the same execution would be refused again: retrying cannot help.
            error = ErrorInfo(type=outcome.reason or "Refused", message=outcome.message)
            self.end_all(RunPhase.FAILED, error, error.type, outcome.message)
            return
        report = outcome.report
        if outcome.chained:
            execution = self.absorb_chain(execution, outcome)
            if execution is None:
                return
        final = report is not None and report.kind is not ReportKind.STARTED
        if final:
            assert report is not None
            stray = self.stray_report(execution, report)
            if stray:
                error = ErrorInfo(type="NondeterminismError", message=stray)
                self.end_all(RunPhase.FAILED, error, "NondeterminismError", stray)
                return
            self.status.discovery_failures = 0
            self.status.retry_at = None
            self.apply_report(execution, report, outcome)
            return
        step_ref = report.step if report is not None else None
        step: StepStatus | None = self.target_step(execution)
        if step_ref is not None:
            step = self.ensure_step(step_ref, execution.started_at)
        if step is None:
            self.discovery_failed(execution, outcome)
            return
        result, reason = _failure_class(outcome)
        message = outcome.message or _describe_exit(outcome, self.timeout_text(step))
        self.attempt_failed(step, execution, outcome, result, reason, message, None)

    def pin_image(self, outcome: Outcome) -> None:
        """Keep the image the run's first pod ran, by digest, for every later pod (see `engine.images`)."""
        if self.status.image is not None:
            return
        pinned = images.pin(self.spec.image, outcome.image_id)
        if pinned is None:
            return
        self.status.image = pinned
        if pinned != self.spec.image:
            self.note(
                "ImagePinned",
                f"the run's later steps run {pinned}, the image {self.spec.image} named "
                "when its first pod started; pushing that tag again changes only new runs",
            )

    def absorb_chain(self, execution: Execution, outcome: Outcome) -> Execution | None:
        """Record the steps a chained execution finished before its last report; the execution as its last
        report is to be read (a discovery of whatever step came next), or None if the run failed."""
        recorded = chained_steps(outcome)
        for done, finished_at in recorded:
            assert done.step is not None
            if execution.step is None:
                stray = self.stray_boundary(done)
            elif done.step.id != execution.step:
                stray = (
                    f"execution {execution.name} was to run step {execution.step!r} but ran {done.step.id!r}"
                )
            else:
                stray = None
            if stray:
                error = ErrorInfo(type="NondeterminismError", message=stray)
                self.end_all(RunPhase.FAILED, error, "NondeterminismError", stray)
                return None
            ended = dataclasses.replace(outcome, finished_at=finished_at, exit_code=0)
            self.apply_report(execution, done.model_copy(update={"next": None}), ended)
            # The next step of the chain is a new step of this execution, begun when this one ended.
            execution = execution.model_copy(update={"step": None, "attempt": 1, "started_at": finished_at})
        return execution

    def check_starts(self, stalled: list[Stalled]) -> None:
        """Say on each step why its pod has not started (on the Succeeded condition for an execution with no
        step yet, such as the run's first); fail the attempts whose pod did not start within
        ``spec.timeouts.podStart`` with Kubernetes' reason, as a failed attempt retried by the policy."""
        limit = parse_duration(self.spec.timeouts.pod_start)
        by_name = {s.name: s for s in stalled}
        for execution in list(self.status.active):
            stall = by_name.get(execution.name)
            step = self.target_step(execution)
            pending = "" if stall is None else f"{stall.reason}: {stall.message}".rstrip(": ")
            shown = "" if stall is None or stall.reason in _STARTING else pending
            if step is not None and step.pending != shown:
                step.pending = shown
                if shown:
                    self.note("StepPending", f"step {step.id!r}: its pod has not started: {shown}", True)
            if stall is None or self.now < execution.started_at + timedelta(seconds=limit):
                if step is None and shown:
                    self.unstarted = shown
                    if shown not in self.condition_message():
                        self.note("RunPending", f"the run's pod has not started: {shown}", True)
                continue
            self.status.active.remove(execution)
            self.actions.append(StopExecution(execution.name, stall.reason))
            within = self.spec.timeouts.pod_start
            whose = "the run's" if step is None else "the step's"
            message = f"{whose} pod did not start within spec.timeouts.podStart ({within}): {pending}"
            outcome = Outcome(execution.name, ExitKind.EXITED, reason=stall.reason, message=message)
            if step is None:
                self.discovery_failed(execution, outcome)
                continue
            step.pending = ""
            self.attempt_failed(step, execution, outcome, AttemptResult.ERROR, stall.reason, message, None)

    def stray_report(self, execution: Execution, report: Report) -> str | None:
        """Why ``report`` cannot come from ``execution``, if it cannot."""
        reported = report.step.id if report.step else None
        if execution.step is not None:
            executed = report.kind in (ReportKind.STEP_SUCCEEDED, ReportKind.STEP_FAILED)
            if report.kind is ReportKind.FAILED or (executed and reported == execution.step):
                return None
            return (
                f"execution {execution.name} was to run step {execution.step!r} but reported "
                f"{report.kind.value} for {reported or 'no step'}; the function must reach its steps in the "
                "same order every time"
            )
        return self.stray_boundary(report)

    def stray_boundary(self, report: Report) -> str | None:
        """Why ``report``, a boundary replay reached beyond the recorded steps, cannot be, if it cannot."""
        if report.kind in (ReportKind.FAILED, ReportKind.COMPLETED):
            return None
        refs = report.planned if report.kind is ReportKind.PLANNED else [report.step] if report.step else []
        for ref in refs:
            known = self.run_step(ref.id)
            if known is not None and known.phase.finished:
                return (
                    f"replay reported step {ref.id!r} as new, but the run already recorded it; step ids "
                    "must be unique (a name repeated in a loop gets `:1`, `:2`, ... — don't also use such a "
                    "name yourself)"
                )
        return None

    def target_step(self, execution: Execution) -> StepStatus | None:
        return None if execution.step is None else self.run_step(execution.step)

    def run_step(self, step_id: str) -> StepStatus | None:
        return next((s for s in self.status.steps if s.id == step_id), None)

    def ensure_step(self, ref: StepRef, since: datetime | None = None) -> StepStatus:
        step = self.run_step(ref.id)
        if step is None:
            step = StepStatus(id=ref.id, name=ref.name, type=ref.type, started_at=since or self.now)
            self.status.steps.append(step)
        if step.type is StepType.RUN and step.policy is None:
            step.policy = self.policy(step, ref).status(ref.options)
        return step

    def policy(self, step: StepStatus | None, ref: StepRef | None = None) -> Resolved:
        """The retries, timeout and pod settings of ``step`` (the workflow's when it is not known yet)."""
        if step is None:
            return resolve(self.spec, None, None, None)
        code = ref.options if ref is not None else step.policy.code if step.policy else None
        return resolve(self.spec, step.id, step.name, code)

    def timeout_text(self, step: StepStatus | None) -> str:
        """Where the timeout of ``step``'s attempts comes from, for messages."""
        return describe_timeout(self.policy(step))

    def apply_report(self, execution: Execution, report: Report, outcome: Outcome) -> None:
        kind = report.kind
        if kind is ReportKind.COMPLETED:
            self.status.output = report.output
            self.end_all(RunPhase.SUCCEEDED, None, "Succeeded", "run succeeded")
            return
        if kind is ReportKind.FAILED:
            assert report.error is not None
            step_id = report.step.id if report.step else None
            error = ErrorInfo(type=report.error.type, message=report.error.message, step=step_id)
            where = f" (from step {step_id!r})" if step_id else ""
            self.end_all(RunPhase.FAILED, error, report.error.type, f"{report.error.message}{where}")
            return
        if kind is ReportKind.PLANNED:
            for ref in report.planned:
                self.ensure_step(ref)
            self.note("StepsPlanned", "parallel steps: " + ", ".join(r.id for r in report.planned))
            return
        assert report.step is not None
        # A wait listens from the moment its execution started: events published while the pod ran count.
        step = self.ensure_step(report.step, None if kind is ReportKind.NEXT_STEP else execution.started_at)
        if kind is ReportKind.STEP_SUCCEEDED:
            attempt = self.add_attempt(step, execution, outcome)
            attempt.result = AttemptResult.SUCCEEDED
            attempt.reason = "Completed"
            attempt.log_tail = outcome.log_tail[-_LOG_TAIL_CHARS:]
            self.step_done(step, output=report.output, took=_took(attempt))
            if report.next is not None and step.phase is StepPhase.SUCCEEDED:
                # Replay went on from this output: what it reached is known without another execution.
                self.apply_boundary(execution, report.next, outcome)
        elif kind is ReportKind.NEXT_STEP:
            step.phase = StepPhase.PENDING  # `schedule` starts its first attempt, named by the step
        elif kind is ReportKind.STEP_FAILED:
            assert report.error is not None
            err = report.error
            if not err.retriable:
                result = AttemptResult.NON_RETRIABLE
            elif err.retry_after_seconds is not None:
                result = AttemptResult.RETRY_AFTER
            else:
                result = AttemptResult.ERROR
            tail = outcome.log_tail or err.traceback
            self.attempt_failed(
                step, execution, outcome, result, err.type, err.message, err.retry_after_seconds, tail
            )
        elif kind is ReportKind.SLEEP:
            assert report.until is not None
            step.phase = StepPhase.SLEEPING
            step.wake_at = min(report.until, self.later(MAX_DELAY_SECONDS))
            self.note("Sleeping", f"step {step.id!r} sleeps until {report.until.isoformat()}")
        elif kind is ReportKind.WAIT_FOR_EVENT:
            assert report.event is not None and report.timeout_seconds is not None
            problem = check(report.if_) if report.if_ else None
            if problem:
                self.step_done(step, error=ErrorInfo(type="ExpressionError", message=problem, step=step.id))
                return
            step.phase = StepPhase.WAITING
            step.wait = WaitInfo(
                event=report.event, if_=report.if_, timeout_at=self.later(report.timeout_seconds)
            )
            self.note("Waiting", f"step {step.id!r} waits for event {report.event!r}")
        elif kind is ReportKind.INVOKE:
            assert report.workflow is not None
            child = names.child_run_name(self.run.metadata.name, step.id)
            timeout_at = None if report.timeout_seconds is None else self.later(report.timeout_seconds)
            step.phase = StepPhase.WAITING
            step.invoke = InvokeInfo(
                workflow=report.workflow, run=child, timeout_at=timeout_at, data=report.data or {}
            )
            # `wake` asks for the child, in this decision and every later one until the child is seen.
            self.note("Invoked", f"step {step.id!r} started run {child!r} of workflow {report.workflow!r}")
        elif kind is ReportKind.SEND_EVENT:
            ids = [
                names.sent_event_name(self.run.metadata.name, step.id, i) for i in range(len(report.events))
            ]
            self.actions.append(PublishEvents(step.id, ids, report.events))
            self.step_done(step, output=ids)
            if report.next is not None and step.phase is StepPhase.SUCCEEDED:
                self.apply_boundary(execution, report.next, outcome)

    def apply_boundary(self, execution: Execution, report: Report, outcome: Outcome) -> None:
        """Act on the boundary replay reached right after a step's output (the report's ``next``)."""
        stray = self.stray_boundary(report)
        if stray:
            error = ErrorInfo(type="NondeterminismError", message=stray)
            self.end_all(RunPhase.FAILED, error, "NondeterminismError", stray)
            return
        self.apply_report(execution, report, outcome)

    def add_attempt(self, step: StepStatus, execution: Execution, outcome: Outcome) -> Attempt:
        # An execution's outcome is absorbed once (it leaves `active`), so this is always a new attempt.
        # A discovery execution's attempt number is the step's, not the execution's retry counter.
        number = execution.attempt if execution.step is not None else step.attempt_count + 1
        attempt = Attempt(number=number, job=execution.name, started_at=execution.started_at)
        if execution.step is None:
            # Its step was not known when it started: the start is told now, before how it ended.
            self.note(
                "StepStarted", f"step {step.id!r} attempt {number} started (execution {execution.name})"
            )
        step.pending = ""
        step.attempts.append(attempt)
        step.attempt_count += 1
        # Kubernetes stamps ends in whole seconds and a restart may time a start late: never end before start.
        finished = outcome.finished_at or self.now
        attempt.finished_at = max(finished, execution.started_at) if execution.started_at else finished
        attempt.exit_code = outcome.exit_code
        return attempt

    def attempt_failed(
        self,
        step: StepStatus,
        execution: Execution,
        outcome: Outcome,
        result: AttemptResult,
        reason: str,
        message: str,
        retry_after: float | None,
        log_tail: str = "",
    ) -> None:
        attempt = self.add_attempt(step, execution, outcome)
        attempt.result = result
        attempt.reason = reason
        attempt.message = message[:_MESSAGE_CHARS]
        attempt.log_tail = (log_tail or outcome.log_tail)[-_LOG_TAIL_CHARS:]
        self.note(
            "AttemptFailed",
            f"step {step.id!r} attempt {attempt.number} failed ({result.value}) {reason}: {message}",
            warning=True,
        )
        policy = self.spec.retries
        limit = self.policy(step)
        if result.spends_budget:
            step.failures += 1
        if result in (AttemptResult.DISRUPTION, AttemptResult.LOST):
            step.disruptions += 1
        exhausted = (result.spends_budget and step.failures > limit.retries) or (
            step.disruptions > policy.disruption_limit
        )
        if result is AttemptResult.NON_RETRIABLE or exhausted:
            if result is AttemptResult.NON_RETRIABLE:
                why = "not retriable"
            elif result.spends_budget:
                why = f"retries exhausted: {describe_retries(limit)}"
            else:
                why = f"disruptions exhausted: spec.retries.disruptionLimit is {policy.disruption_limit}"
            error_type = reason if result is not AttemptResult.TIMEOUT else "Timeout"
            self.step_done(step, error=ErrorInfo(type=error_type, message=message, step=step.id))
            self.note(
                "StepFailed",
                f"step {step.id!r} failed after {step.attempt_count} attempt(s) ({why}): {reason}: {message}",
                warning=True,
            )
            return
        if retry_after is not None:
            wait = retry_after
        elif result.spends_budget:
            uid = self.run.metadata.uid or self.run.metadata.name
            wait = backoff.delay(policy.backoff, step.failures, uid, step.id)
        else:
            wait = 0.0
        wait = min(max(0.0, wait), MAX_DELAY_SECONDS)
        attempt.retry_delay_seconds = round(wait, 3)
        step.phase = StepPhase.RETRYING
        step.next_attempt_at = self.later(wait)
        self.note(
            "RetryScheduled",
            f"step {step.id!r} attempt {step.attempt_count + 1} at {_stamp(step.next_attempt_at)} "
            f"(in {format_duration(wait)})",
        )

    def discovery_failed(self, execution: Execution, outcome: Outcome) -> None:
        """An execution ended before reaching any step: retry it (after a backoff, unless the cluster took
        it away), within the sum of the two retry limits."""
        self.status.discovery_failures += 1
        policy = self.spec.retries
        message = outcome.message or _describe_exit(outcome, self.timeout_text(None))
        if outcome.log_tail:
            message += "\n" + outcome.log_tail[-_LOG_TAIL_CHARS:]
        if self.status.discovery_failures > policy.limit + policy.disruption_limit:
            error = ErrorInfo(
                type=outcome.reason or "RunnerFailed",
                message=f"the runner failed {self.status.discovery_failures} times before reaching a step: "
                + message,
            )
            self.end_all(RunPhase.FAILED, error, "RunnerFailed", error.message)
            return
        wait = 0.0
        if outcome.kind in (ExitKind.EXITED, ExitKind.DEADLINE):
            uid = self.run.metadata.uid or self.run.metadata.name
            wait = backoff.delay(policy.backoff, self.status.discovery_failures, uid, "(next)")
        self.status.retry_at = self.later(wait)
        self.note(
            "RunnerFailed",
            f"execution {execution.name} ended before reaching a step: {message}; "
            f"trying again in {format_duration(wait)}",
            True,
        )

    def step_done(
        self, step: StepStatus, output: object = None, error: ErrorInfo | None = None, took: str = ""
    ) -> None:
        if error is None and output is not None:
            error = self.over_budget(step, output)
            if error is not None:
                output = None
                self.note("StepFailed", f"step {step.id!r} failed: {error.message}", warning=True)
        step.phase = StepPhase.FAILED if error else StepPhase.SUCCEEDED
        step.output = output if error is None else None
        step.error = error
        step.finished_at = self.now
        step.next_attempt_at = None
        if error is None:
            detail = f"attempt {step.attempt_count}, {took}" if took else step.type.value
            self.note("StepSucceeded", f"step {step.id!r} succeeded ({detail})")

    def over_budget(self, step: StepStatus, output: object) -> ErrorInfo | None:
        """Outputs live in the run's status and Secret: their total has a ceiling."""
        size = _json_size(output) + sum(_json_size(s.output) for s in self.status.steps if s is not step)
        limit = self.spec.limits.run_output_bytes
        if size <= limit:
            return None
        message = (
            f"recording the output of step {step.id!r} would bring the run's outputs to {size} bytes; the "
            f"limit is {limit} bytes (spec.limits.runOutputBytes). Return references to large data instead"
        )
        return ErrorInfo(type="OutputTooLarge", message=message, step=step.id)

    def later(self, seconds: float) -> datetime:
        """``now + seconds``, bounded so that no user-chosen duration can overflow a date."""
        return self.now + timedelta(seconds=min(max(0.0, seconds), MAX_DELAY_SECONDS))

    # Sleeps, waits and children --------------------------------------------------------------------

    def wake(self, events: list[ArrivedEvent], children: list[ChildResult]) -> None:
        by_step = {c.step: c for c in children}
        trigger = self.run.spec.event.as_payload()
        for step in self.status.steps:
            if step.phase is StepPhase.SLEEPING and step.wake_at is not None and step.wake_at <= self.now:
                self.step_done(step)
            elif step.phase is StepPhase.WAITING and step.wait is not None:
                self.wake_wait(step, step.wait, events, trigger)
            elif step.phase is StepPhase.WAITING and step.invoke is not None:
                self.wake_invoke(step, step.invoke, by_step.get(step.id))

    def wake_wait(self, step: StepStatus, wait: WaitInfo, events: list[ArrivedEvent], trigger: dict) -> None:  # type: ignore[type-arg]
        began = step.started_at or self.now
        for event in sorted(events, key=lambda e: e.received_at):
            if event.payload.get("name") != wait.event or event.received_at < began:
                continue
            if wait.if_:
                try:
                    if not holds(wait.if_, {"event": trigger, "async": event.payload}):
                        continue
                except CelError:
                    continue  # e.g. a field this candidate lacks: not a match, the wait goes on
            step.wait = wait.model_copy(update={"matched": event.source or None})
            self.step_done(step, output=event.payload)
            return
        if wait.timeout_at <= self.now:
            self.step_done(step, output=None)
            self.note("WaitTimedOut", f"step {step.id!r} saw no {wait.event!r} event before its timeout")

    def wake_invoke(self, step: StepStatus, invoke: InvokeInfo, child: ChildResult | None) -> None:
        if child is None:
            # Not seen yet (or lost): asking again is harmless, the child's name is fixed.
            self.actions.append(StartChild(step.id, invoke.run, invoke.workflow, invoke.data))
        if child is not None and child.phase is RunPhase.SUCCEEDED:
            self.step_done(step, output=child.output)
        elif child is not None and child.phase.finished:
            error = child.error or ErrorInfo(
                type=child.phase.value, message=f"run {invoke.run} {child.phase.value}"
            )
            self.step_done(step, error=ErrorInfo(type=error.type, message=error.message, step=step.id))
        elif invoke.timeout_at is not None and invoke.timeout_at <= self.now:
            message = f"run {invoke.run} of workflow {invoke.workflow!r} did not finish in time"
            self.actions.append(CancelChild(invoke.run, "the invoke step timed out"))
            self.step_done(step, error=ErrorInfo(type="Timeout", message=message, step=step.id))

    def check_run_timeout(self) -> None:
        limit = self.spec.timeouts.run
        started = self.status.started_at
        if limit is None or started is None:
            return
        if self.now >= started + timedelta(seconds=parse_duration(limit)):
            error = ErrorInfo(type="Timeout", message=f"the run took longer than spec.timeouts.run ({limit})")
            self.end_all(RunPhase.FAILED, error, "RunTimeout", error.message)

    # Starting executions -----------------------------------------------------------------------------

    def schedule(self) -> None:
        status = self.status
        busy = {e.step for e in status.active}
        for step in status.steps:
            if step.id in busy or step.type is not StepType.RUN:
                continue
            due = step.phase is StepPhase.PENDING or (
                step.phase is StepPhase.RETRYING
                and (step.next_attempt_at is None or step.next_attempt_at <= self.now)
            )
            if due and not admission.take_ticket(self.run, status):
                self.held += 1
            elif due:
                attempt = step.attempt_count + 1
                self.start(
                    step.id, attempt, names.step_execution_name(self.run.metadata.name, step.id, attempt)
                )
                step.phase = StepPhase.RUNNING
                step.next_attempt_at = None
                self.note("StepStarted", f"step {step.id!r} attempt {attempt} started")
        unfinished = [s for s in status.steps if not s.phase.finished]
        backing_off = status.retry_at is not None and status.retry_at > self.now
        discover = not status.active and not unfinished and not backing_off
        if discover and not admission.take_ticket(self.run, status):
            self.held += 1
        elif discover:
            done = sum(1 for s in status.steps if s.phase.finished)
            self.start(
                None,
                status.discovery_failures + 1,
                names.discovery_execution_name(self.run.metadata.name, done, status.discovery_failures + 1),
            )
        # A retry due but held for a slot is woken by its admission, not by its past time.
        retries = [s.next_attempt_at for s in unfinished if s.phase is StepPhase.RETRYING]
        wakeups: list[datetime | None] = [w for w in retries if w is not None and w > self.now]
        wakeups += [s.wake_at for s in unfinished if s.phase is StepPhase.SLEEPING]
        wakeups += [s.wait.timeout_at for s in unfinished if s.phase is StepPhase.WAITING and s.wait]
        wakeups += [s.invoke.timeout_at for s in unfinished if s.phase is StepPhase.WAITING and s.invoke]
        if backing_off:
            wakeups.append(status.retry_at)
        # A pod that never starts changes nothing the operator watches: look again when it is due to have.
        start_limit = timedelta(seconds=parse_duration(self.spec.timeouts.pod_start))
        wakeups += [
            e.started_at + start_limit for e in status.active if e.started_at + start_limit > self.now
        ]
        if self.spec.timeouts.run and status.started_at:
            wakeups.append(status.started_at + timedelta(seconds=parse_duration(self.spec.timeouts.run)))
        upcoming = [w for w in wakeups if w is not None]
        if upcoming:
            self.actions.append(RequeueAt(min(upcoming)))

    def start(self, step_id: str | None, attempt: int, name: str) -> None:
        self.status.active.append(Execution(name=name, step=step_id, attempt=attempt, started_at=self.now))
        # An execution with no step yet runs with the workflow's settings: its step is not known.
        policy = self.policy(None if step_id is None else self.run_step(step_id))
        self.actions.append(
            StartExecution(
                name=name,
                step=step_id,
                attempt=attempt,
                # A discovery execution runs the first attempt of whatever new step it reaches.
                state=runner_state(self.run, self.status, step_id, attempt if step_id else 1),
                timeout_seconds=pod_deadline(self.spec.execution, policy.timeout_seconds),
                pod=policy.pod or None,
                image=self.status.image,
            )
        )

    # Ending -------------------------------------------------------------------------------------------

    def end_all(self, phase: RunPhase, error: ErrorInfo | None, reason: str, message: str) -> None:
        status = self.status
        # Executions this very decision started never ran: drop them rather than stop them.
        unstarted = {a.name for a in self.actions if isinstance(a, StartExecution)}
        self.actions = [a for a in self.actions if not isinstance(a, StartExecution)]
        for execution in status.active:
            if execution.name in unstarted:
                continue
            self.actions.append(StopExecution(execution.name, reason))
            step = self.target_step(execution)
            if step is not None:
                attempt = Attempt(
                    number=execution.attempt,
                    job=execution.name,
                    started_at=execution.started_at,
                    finished_at=self.now,
                    result=AttemptResult.CANCELLED,
                    reason=reason,
                )
                step.attempts.append(attempt)
                step.attempt_count += 1
        status.active = []
        for step in status.steps:
            if step.phase is StepPhase.WAITING and step.invoke is not None:
                self.actions.append(CancelChild(step.invoke.run, reason))
            if not step.phase.finished:
                step.phase = StepPhase.CANCELLED
                step.next_attempt_at = None
                step.finished_at = self.now
        status.phase = phase
        status.error = error
        status.finished_at = self.now
        self.note(f"Run{phase.value}", message, warning=phase is not RunPhase.SUCCEEDED)

    def summarize(self) -> None:
        status = self.status
        for step in status.steps:
            if len(step.attempts) > MAX_ATTEMPTS_KEPT:
                step.attempts = step.attempts[:1] + step.attempts[-(MAX_ATTEMPTS_KEPT - 1) :]
        status.progress = progress(status)
        current = next((s for s in reversed(status.steps) if not s.phase.finished), None)
        running = [e for e in status.active if e.step is not None]
        if running:
            status.current_step = ",".join(str(e.step) for e in running)
            status.current_attempt = max(e.attempt for e in running)
        elif current is not None:
            status.current_step = current.id
            status.current_attempt = (
                current.attempt_count + (1 if current.phase is StepPhase.RETRYING else 0) or None
            )
        elif status.active:
            status.current_step = "(next)"
            status.current_attempt = status.active[0].attempt
        else:
            status.current_step = ""
            status.current_attempt = None
        if not status.phase.finished:
            phases = {s.phase for s in status.steps if not s.phase.finished}
            if self.held and not status.active:
                if status.phase is not RunPhase.QUEUED:
                    paused = status.admission is not None and status.admission.paused
                    self.note(
                        "RunQueued",
                        "the workflow is paused (spec.paused): the next step starts once it is resumed"
                        if paused
                        else "waiting for the workflow's flow control (its Admitted condition says why)",
                    )
                status.phase = RunPhase.QUEUED
            elif status.active or StepPhase.RETRYING in phases or StepPhase.PENDING in phases:
                status.phase = RunPhase.RUNNING
            elif StepPhase.SLEEPING in phases:
                status.phase = RunPhase.SLEEPING
            elif StepPhase.WAITING in phases:
                status.phase = RunPhase.WAITING
            else:
                status.phase = RunPhase.RUNNING
        status.conditions = set_condition(status.conditions, self.succeeded_condition(), self.now)

    def succeeded_condition(self) -> Condition:
        status = self.status
        if status.phase is RunPhase.SUCCEEDED:
            return Condition(type="Succeeded", status="True", reason="Succeeded", message="the run succeeded")
        if status.phase.finished:
            error = status.error
            message = f"{error.type}: {error.message}" if error else status.phase.value
            return Condition(type="Succeeded", status="False", reason=status.phase.value, message=message)
        message = f"progress: {status.progress}"
        if self.unstarted:
            message += f"; the run's pod has not started: {self.unstarted}"
        return Condition(type="Succeeded", status="Unknown", reason=status.phase.value, message=message)

    def condition_message(self) -> str:
        """The Succeeded condition's message as it was before this decision."""
        return next((c.message for c in self.status.conditions if c.type == "Succeeded"), "")


def runner_state(
    run: WorkflowRun, status: WorkflowRunStatus, target: str | None = None, attempt: int = 1
) -> RunnerState:
    """The input of an execution of ``run`` given what ``status`` recorded: its event and every step so far.

    Without a target, that of an execution reaching past the last recorded step: steps and outputs only
    ever grow, so it is, within a few bytes per step, the largest input the run has had so far.
    """
    spec = run.spec.workflow
    memo = [
        MemoEntry(
            id=s.id,
            name=s.name,
            type=s.type,
            done=s.phase.finished,
            output=s.output,
            error=None if s.error is None else {"type": s.error.type, "message": s.error.message},
        )
        for s in status.steps
    ]
    return RunnerState(
        run=run.metadata.name,
        function=spec.function,
        event=run.spec.event.as_payload(),
        events=[e.as_payload() for e in run.spec.gather.events] if run.spec.gather else [],
        steps=memo,
        target=target,
        attempt=attempt,
        max_output_bytes=spec.limits.step_output_bytes,
        **chain_settings(spec.execution),
    )


def progress(status: WorkflowRunStatus) -> str:
    """Steps done (and failed) so far, e.g. ``3 done, 1 failed``.

    No total: the function discovers its steps as it goes, so any total would be the steps reached so far
    and look complete at every moment.
    """
    done = sum(1 for s in status.steps if s.phase is StepPhase.SUCCEEDED)
    failed = sum(1 for s in status.steps if s.phase is StepPhase.FAILED)
    return f"{done} done" + (f", {failed} failed" if failed else "")


def _stamp(when: datetime | None) -> str:
    return "" if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


def chain_settings(execution: ExecutionPolicy) -> dict[str, Any]:
    """What a runner is told of chained mode: how many steps in a row, for how long."""
    if execution.mode is not ExecutionMode.CHAINED:
        return {}
    return {"chain_steps": execution.max_steps_per_pod, "chain_seconds": float(execution.max_pod_seconds)}


def pod_deadline(execution: ExecutionPolicy, step_seconds: float | None) -> float | None:
    """A step pod's ``activeDeadlineSeconds``: the step's timeout; in a chain, plus the chain's own bound."""
    if step_seconds is None:
        return None
    extra = execution.max_pod_seconds if execution.mode is ExecutionMode.CHAINED else 0
    return step_seconds + extra


def chained_steps(outcome: Outcome) -> list[tuple[Report, datetime]]:
    """The steps a chained execution recorded, less the one its last report tells of (told there too)."""
    last = outcome.report.step.id if outcome.report is not None and outcome.report.step else None
    return [(r, t) for r, t in outcome.chained if r.step is not None and r.step.id != last]


def _json_size(value: object) -> int:
    return 0 if value is None else len(json.dumps(value, separators=(",", ":")).encode())


def _took(attempt: Attempt) -> str:
    if attempt.started_at is None or attempt.finished_at is None:
        return ""
    return format_duration(max(0.0, (attempt.finished_at - attempt.started_at).total_seconds()))


def _failure_class(outcome: Outcome) -> tuple[AttemptResult, str]:
    """The attempt result of an execution that died without its final report."""
    if outcome.kind is ExitKind.DEADLINE:
        return AttemptResult.TIMEOUT, outcome.reason or "DeadlineExceeded"
    if outcome.kind is ExitKind.DISRUPTED:
        return AttemptResult.DISRUPTION, outcome.reason or "Disrupted"
    if outcome.kind is ExitKind.LOST:
        return AttemptResult.LOST, outcome.reason or "Lost"
    return AttemptResult.ERROR, outcome.reason or "Error"


def _describe_exit(outcome: Outcome, step_timeout: str) -> str:
    if outcome.kind is ExitKind.EXITED:
        return f"the step process exited with code {outcome.exit_code} ({outcome.reason or 'Error'})"
    if outcome.kind is ExitKind.DEADLINE:
        return f"the step ran longer than {step_timeout} and was stopped"
    if outcome.kind is ExitKind.DISRUPTED:
        return f"the cluster stopped the step ({outcome.reason or 'disrupted'})"
    return "the step's execution vanished without a trace"
