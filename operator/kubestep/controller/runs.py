"""Reconcile one WorkflowRun: observe its Jobs, events and children, let the engine decide, carry it out."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta

from pydantic import ValidationError

from kubestep.api.report import decode_step_lines
from kubestep.api.run import StepPhase, WorkflowRun, WorkflowRunStatus
from kubestep.api.workflow import ExecutionMode, Workflow
from kubestep.controller import builders, cache, gc, observe
from kubestep.controller.context import Controller, Key
from kubestep.controller.kube import (
    RUNS,
    WORKFLOWS,
    AlreadyExists,
    Conflict,
    KubeError,
    NotFound,
    Obj,
    Rejected,
    TooLarge,
    Unavailable,
)
from kubestep.controller.metrics import METRICS
from kubestep.controller.queue import Result
from kubestep.controller.recorder import one_note
from kubestep.engine.actions import (
    Action,
    AnnounceEnd,
    CancelChild,
    Note,
    PublishEvents,
    RequeueAt,
    StartChild,
    StartExecution,
    StartRerun,
    StopExecution,
)
from kubestep.engine.decide import Decision, decide
from kubestep.engine.lifecycle import end_event_names
from kubestep.engine.observations import ArrivedEvent, ChildResult, ExitKind, Observed, Outcome, Stalled

log = logging.getLogger(__name__)

#: Lines of a step's log read for its report (when too large for the termination message) or its tail.
LOG_LINES = 60
#: Lines of a chained execution's log read for the steps it recorded (one marked line per step).
CHAIN_LOG_LINES = 100_000
#: A state Secret larger than this is deleted as soon as its execution is recorded; smaller ones are deleted
#: together when their run ends (one request per run instead of one per step attempt).
LARGE_STATE_BYTES = 64 * 1024
#: A Job with no pod this old is asked why (its Events): younger ones are just being started.
JOB_EVENTS_AFTER = timedelta(seconds=10)
#: How long a recorded execution with neither Job nor pod waits for the pod watch to hand over its pod's
#: last state (the step it had started, or finished) before its attempt is called Lost without it.
MISSING_GRACE = timedelta(seconds=5)


async def reconcile_run(ctl: Controller, key: Key) -> Result:
    """One level-triggered pass over the run ``key``; API errors are raised (the queue retries them).

    The order of its writes is what keeps a step from running twice: the actions that need no record
    (stopping, cancelling, publishing, starting children) first, then the status save, then — only once
    the save passed — the Jobs of the executions it records and the Kubernetes Events telling of it.
    """
    try:
        obj = await cache.run(ctl, key.namespace, key.name)
    except NotFound:
        forget(ctl, key.namespace, key.name)
        return Result.done()
    if obj["metadata"].get("deletionTimestamp"):
        forget(ctl, key.namespace, key.name)
        return Result.done()
    cache.deciding_run(ctl, obj)
    try:
        run = WorkflowRun.model_validate(obj)
    except ValidationError as exc:
        # The CRD's schema makes this unlikely; never crash on a user's object, say it once per change.
        log.warning("run %s/%s is unusable and is left alone: %s", key.namespace, key.name, exc)
        return Result.done()
    wakeups: list[datetime] = []
    observed = await _observe(ctl, run, wakeups)
    decision = decide(run, observed, ctl.clock())
    await _carry_out(ctl, obj, run, decision)
    # Executions are started only once the status that records them is saved, so a Job name is used once:
    # a recorded execution whose Job is missing was deleted and counts as Lost, it is never created again.
    # The debt is noted before the save: a save whose answer is lost (the API server went away) may still
    # have landed, and the next pass must then create the Job rather than call it Lost.
    debts = ctl.owed.setdefault((key.namespace, key.name), {})
    debts.update((start.name, start) for start in decision.of(StartExecution))
    if decision.status != run.status:
        try:
            decision = await _save(ctl, obj, run, observed, decision)
        except (Conflict, NotFound):
            # Changed meanwhile: decide again from what is there now, read from the API.
            cache.forget_run(ctl, key.namespace, key.name)
            return Result.again()
        # Counted once saved: a pass that lost a conflict counts nothing, the one deciding again counts.
        METRICS.run_saved(run, decision.status, ctl.clock())
    else:
        METRICS.run_seen(run)
    try:
        refused = await _pay(ctl, obj, run, decision.status)
    finally:
        # Posted once the transition they tell of is saved (a pass that lost a conflict tells nothing), even
        # when a Job could not be created: the next pass does not decide this transition again. One Event
        # tells the whole pass (`recorder.one_note`).
        told = one_note(decision.of(Note))
        if told is not None:
            await _note(ctl, obj, told)
    if decision.status != run.status:
        await _after_save(ctl, key, run, decision.status)
    # The engine's timers (a backoff, a sleep, a timeout); a refused Job is recorded by a pass at once.
    timers = [requeue.when for requeue in decision.of(RequeueAt)] + ([ctl.clock()] if refused else [])
    timers += wakeups
    # A finished run's step Jobs, once every attempt's log tail is in its status (`spec.history`).
    timers += await gc.collect_run_jobs(ctl, run, decision.status)
    return Result.requeue_at(min(timers, default=None))


async def _carry_out(ctl: Controller, obj: Obj, run: WorkflowRun, decision: Decision) -> None:
    """The actions that come before the save: all but starting executions, posting notes and timers.

    Each is idempotent by the name it carries, as the engine asks. Timers are the pass's result.
    """
    for action in decision.actions:
        if not isinstance(action, StartExecution | Note | RequeueAt):
            await _apply(ctl, obj, run, action)


async def _save(
    ctl: Controller, obj: Obj, run: WorkflowRun, observed: Observed, decision: Decision
) -> Decision:
    """Save the decided status and return the decision saved.

    A status the API server cannot store (too large) is decided again knowing that: the run ends with
    what still fits, and that decision is the one saved.
    """
    try:
        saved = await ctl.kube.replace_status(RUNS, obj, decision.status.to_dict())
        cache.saw_run(ctl, saved, written=True, decided=True, replaced=obj)
        return decision
    except TooLarge as exc:
        log.warning("%s/%s: status refused as too large: %s", run.metadata.namespace, run.metadata.name, exc)
        why = str(exc)
    smaller = decide(run, dataclasses.replace(observed, status_too_large=why), ctl.clock())
    await _carry_out(ctl, obj, run, smaller)
    saved = await ctl.kube.replace_status(RUNS, obj, smaller.status.to_dict())
    cache.saw_run(ctl, saved, written=True, decided=True, replaced=obj)
    return smaller


def forget(ctl: Controller, namespace: str, name: str) -> None:
    """Drop what this process remembers of a run that is gone (or finished)."""
    METRICS.run_gone(namespace, name)
    ctl.pod_endings.pop((namespace, name), None)
    ctl.owed.pop((namespace, name), None)
    ctl.missing.pop((namespace, name), None)
    cache.forget_run(ctl, namespace, name)


async def _observe(ctl: Controller, run: WorkflowRun, wakeups: list[datetime]) -> Observed:
    """What the engine decides from; ``wakeups`` gets when to look again at what is not known yet."""
    outcomes: list[Outcome] = []
    stalled: list[Stalled] = []
    for execution in run.status.active:
        ended = await _execution_outcome(ctl, run, execution.name, stalled, wakeups)
        if ended is not None:
            outcomes.append(ended)
    namespace = run.metadata.namespace or ""
    events: list[ArrivedEvent] = []
    awaited = {s.wait.event for s in run.status.steps if s.phase is StepPhase.WAITING and s.wait is not None}
    awaited |= {rule.event for rule in run.spec.workflow.cancel_on}
    for name in sorted(awaited):
        events.extend(observe.arrived(e) for e in ctl.indices.events_named(namespace, name))
    children: list[ChildResult] = []
    for step in run.status.steps:
        if step.invoke is None or step.phase is not StepPhase.WAITING:
            continue
        try:
            child = WorkflowRun.model_validate(await ctl.kube.get(RUNS, namespace, step.invoke.run))
        except ValidationError:
            continue  # a child no one can read is not observed; the invoke's timeout still applies
        except NotFound:
            if not await _exists(ctl, WORKFLOWS, namespace, step.invoke.workflow):
                children.append(observe.missing_workflow(step.id, step.invoke.workflow))
            continue
        children.append(observe.child_result(step.id, child))
    return Observed(outcomes, events, children, stalled, listeners=_end_listeners(ctl, namespace))


def _end_listeners(ctl: Controller, namespace: str) -> frozenset[str]:
    """The run-end Events something in ``namespace`` could receive now, as the watches last saw it."""
    indices = ctl.indices
    return frozenset(
        name
        for name in end_event_names()
        if indices.listening_workflows(namespace, name)
        or indices.waiting_runs(namespace, name)
        or indices.cancellable_runs(namespace, name)
    )


async def _execution_outcome(
    ctl: Controller, run: WorkflowRun, name: str, stalled: list[Stalled], wakeups: list[datetime]
) -> Outcome | None:
    """How execution ``name`` ended, or None while it runs (adding it to ``stalled`` if its pod has not
    started, and to ``wakeups`` when to look again if its end is not known yet)."""
    namespace = run.metadata.namespace or ""
    rejected = ctl.rejected.get((namespace, name))
    if rejected is not None:
        return Outcome(name, ExitKind.REFUSED, reason="JobRejected", message=rejected)
    if name in ctl.owed.get((namespace, run.metadata.name), {}):
        return None  # recorded, not created yet: this pass creates it
    job, pods = await cache.job_and_pods(ctl, namespace, name)
    pod = observe.newest_pod(pods)
    if job is not None and observe.job_finished(job) is None and not observe.terminated_state(pod):
        events: list[Obj] = []
        if pod is None and _age(job, ctl.clock()) >= JOB_EVENTS_AFTER:
            events = await ctl.kube.job_events(namespace, name)
        why = observe.not_started(pod, events)
        if why is not None:
            stalled.append(Stalled(name, *why))
        return None
    if job is None and pod is not None and not observe.terminated_state(pod):
        # The Job vanished but its pod still runs the step: stop it, and record the attempt once it ended,
        # so that its retry never runs beside it.
        if not pod["metadata"].get("deletionTimestamp"):
            await _ignore_missing(ctl.kube.delete_pod(namespace, pod["metadata"]["name"]))
        return None
    seen = ctl.pod_endings.get((namespace, run.metadata.name), {}).get(name)
    if seen is not None and not observe.terminated_state(pod):
        pod = seen  # the pod went away (or has not said how it ended); what it said before is what counts
    if job is None and pod is None:
        # Both gone, and the pod watch has handed over nothing yet: it may be behind the Job watch with the
        # pod's last state (the step a discovery execution had started, a final report). Wait for it.
        missing = ctl.missing.setdefault((namespace, run.metadata.name), {})
        since = missing.setdefault(name, ctl.clock())
        if ctl.clock() < since + MISSING_GRACE:
            wakeups.append(since + MISSING_GRACE)
            return None
    log_text = None
    ended = observe.outcome(name, job, pod)
    needs_log = observe.report_needs_log(pod)
    # A chained execution's log records every step it finished: read it whole once it ended. Every ended
    # attempt keeps its log's tail too, so `kubestep logs` can show it once the pod is gone.
    chained = run.spec.workflow.execution.mode is ExecutionMode.CHAINED and ended is not None
    if pod is not None and (needs_log or chained or ended is not None):
        try:
            log_text = await ctl.kube.pod_log_tail(
                namespace,
                pod["metadata"]["name"],
                builders.CONTAINER,
                CHAIN_LOG_LINES if chained else LOG_LINES,
            )
        except NotFound:
            if needs_log:
                raise
            # The pod and its log are gone (deleted with its node): the steps it finished run again.
        except KubeError:
            if needs_log or chained:
                raise  # the report is in the log: decide once it can be read, never without it
        ended = observe.outcome(name, job, pod, log_text)
        if chained and ended is not None:
            ended = dataclasses.replace(ended, chained=decode_step_lines(log_text))
    return None if ended is None else observe.timed(ended, ctl.clock())


def _age(obj: Obj, now: datetime) -> timedelta:
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return timedelta(0)
    return now - datetime.fromisoformat(str(created).replace("Z", "+00:00"))


async def _exists(ctl: Controller, plural: str, namespace: str, name: str) -> bool:
    try:
        await ctl.kube.get(plural, namespace, name)
    except NotFound:
        return False
    return True


async def _apply(ctl: Controller, obj: Obj, run: WorkflowRun, action: Action) -> None:
    namespace = run.metadata.namespace or ""
    if isinstance(action, StopExecution):
        await _ignore_missing(ctl.kube.delete_job(namespace, action.name))
        if builders.may_have_state_secrets(run, run.status):
            await _ignore_missing(ctl.kube.delete_secret(namespace, action.name))
    elif isinstance(action, StartChild):
        await _start_child(ctl, run, action)
    elif isinstance(action, CancelChild):
        with contextlib.suppress(NotFound):
            patched = await ctl.kube.merge_patch(RUNS, namespace, action.name, {"spec": {"cancel": True}})
            cache.saw_run(ctl, patched, written=True)
    elif isinstance(action, PublishEvents):
        for event_id, payload in zip(action.ids, action.events, strict=True):
            try:
                await ctl.kube.create("events", namespace, builders.sent_event(run, event_id, payload))
            except AlreadyExists:
                pass
            except Rejected as exc:
                message = f"step {action.step!r}: event {payload.get('name')!r} cannot be published: {exc}"
                await _note(ctl, obj, Note("EventRejected", message, warning=True))
    elif isinstance(action, AnnounceEnd):
        # Named after the run: a pass repeated after a crash finds it there, and publishes nothing twice.
        try:
            await ctl.kube.create("events", namespace, builders.end_event(run, action))
        except AlreadyExists:
            pass
        except Rejected as exc:
            message = f"the Event {action.name} ({action.payload['name']}) cannot be published: {exc}"
            await _note(ctl, obj, Note("EventRejected", message, warning=True))
    elif isinstance(action, Note):
        await _note(ctl, obj, action)
    elif isinstance(action, StartRerun):
        await _start_rerun(ctl, run, action)


async def _start_rerun(ctl: Controller, run: WorkflowRun, action: StartRerun) -> None:
    """Create the rerun, with the Workflow's current spec (the original's copy if the Workflow is gone)."""
    namespace = run.metadata.namespace or ""
    try:
        workflow: Workflow | None = Workflow.model_validate(
            await ctl.kube.get(WORKFLOWS, namespace, run.spec.workflow_ref.name)
        )
    except (NotFound, ValidationError):
        workflow = None
    with contextlib.suppress(AlreadyExists):
        await ctl.kube.create(RUNS, namespace, builders.rerun_run(run, workflow, action))


async def _pay(ctl: Controller, obj: Obj, run: WorkflowRun, status: WorkflowRunStatus) -> bool:
    """Create the Jobs of the executions ``status`` records that this process still owes.

    A creation that fails stays owed (the error makes the queue try the run again); one whose execution
    is no longer active (the run was cancelled meanwhile) is dropped. True if the API server refused a
    Job as invalid: the next pass records that attempt as failed.
    """
    debts = ctl.owed.get((run.metadata.namespace or "", run.metadata.name), {})
    active = {e.name for e in status.active}
    refused = False
    for name, start in list(debts.items()):
        if name in active:
            refused = not await _start_execution(ctl, obj, run, start) or refused
        debts.pop(name, None)
    return refused


async def _start_execution(ctl: Controller, obj: Obj, run: WorkflowRun, action: StartExecution) -> bool:
    """Create the execution's Job, and its Secret if its input is too large for the pod to carry; False if
    the API server refused the Job as invalid."""
    namespace = run.metadata.namespace or ""
    state = builders.state_json(action)  # up to the run's output limit: serialized once
    job = builders.step_job(run, action, state)
    secret = builders.state_secret(run, action, state)
    if secret is not None:
        await _create_state_secret(ctl, run, secret)
    try:
        await ctl.kube.create_job(namespace, job)
    except AlreadyExists:
        if not observe.owned_by(await ctl.kube.get_job(namespace, action.name), run.metadata.uid):
            raise Unavailable(
                f"Job {action.name} of an earlier run of this name is still being deleted"
            ) from None
    except Rejected as exc:
        message = f"the API server refused Job {action.name}: {exc}; check spec.podTemplate"
        await _note(ctl, obj, Note("JobRejected", message, warning=True))
        if exc.status == 403:
            raise  # forbidden, e.g. by a quota: may pass later, so try again with backoff
        # Invalid: observed on the next pass as an execution the cluster refused.
        ctl.rejected[(namespace, action.name)] = message
        return False
    return True


async def _create_state_secret(ctl: Controller, run: WorkflowRun, secret: Obj) -> None:
    namespace, name = run.metadata.namespace or "", secret["metadata"]["name"]
    if len(secret["stringData"][builders.STATE_KEY].encode()) > LARGE_STATE_BYTES:
        ctl.large_states.add((namespace, name))
    try:
        await ctl.kube.create_secret(namespace, secret)
    except AlreadyExists:
        # Created by a previous pass before a crash or a conflict (same name, same content) — unless it is
        # left over from an earlier run of the same name that is still being garbage-collected.
        if not observe.owned_by(await ctl.kube.get_secret(namespace, name), run.metadata.uid):
            raise Unavailable(
                f"Secret {name} of an earlier run of this name is still being deleted"
            ) from None


async def _start_child(ctl: Controller, run: WorkflowRun, action: StartChild) -> None:
    namespace = run.metadata.namespace or ""
    try:
        workflow = Workflow.model_validate(await ctl.kube.get(WORKFLOWS, namespace, action.workflow))
    except (NotFound, ValidationError):
        return  # observed on the next pass as a child that failed at once
    with contextlib.suppress(AlreadyExists):
        await ctl.kube.create(RUNS, namespace, builders.child_run(run, workflow, action, ctl.clock()))


def remember_pod_ending(ctl: Controller, namespace: str, run: str, job: str, pod: Obj) -> None:
    """Keep what a step pod that is going away showed last, until its attempt is recorded.

    Once deleted, the pod (and the step its report named) is gone; a terminated state seen earlier is
    never replaced by a later, emptier one.
    """
    endings = ctl.pod_endings.setdefault((namespace, run), {})
    if observe.terminated_state(pod) or job not in endings:
        endings[job] = pod


async def _ignore_missing(call: Awaitable[object]) -> None:
    with contextlib.suppress(NotFound):
        await call


async def _note(ctl: Controller, obj: Obj, note: Note) -> None:
    # One line per note: a step's log tail quoted in it (a user's traceback) never reads as the operator's.
    (log.warning if note.warning else log.info)(
        "%s/%s: %s: %s",
        obj["metadata"]["namespace"],
        obj["metadata"]["name"],
        note.reason,
        note.message.replace("\n", " ⏎ "),
    )
    try:
        await ctl.recorder.record(ctl.kube, obj, note, ctl.clock())
    except KubeError as exc:
        log.debug("could not record event %s: %s", note.reason, exc)


async def _after_save(ctl: Controller, key: Key, before: WorkflowRun, status: WorkflowRunStatus) -> None:
    namespace = key.namespace
    still = {e.name for e in status.active}
    endings = ctl.pod_endings.get((namespace, key.name), {})
    for execution in before.status.active:
        if execution.name not in still:
            # Its outcome is recorded: the input it was given is no longer needed.
            endings.pop(execution.name, None)
            ctl.missing.get((namespace, key.name), {}).pop(execution.name, None)
            ctl.rejected.pop((namespace, execution.name), None)
            if (namespace, execution.name) in ctl.large_states:
                ctl.large_states.discard((namespace, execution.name))
                await _ignore_missing_quiet(ctl, namespace, execution.name)
    if status.phase.finished:
        forget(ctl, key.namespace, key.name)
    if status.phase.finished and not before.status.phase.finished:
        # Every state Secret of the run (the inputs too large for their pods), in one request, once: when it
        # ends (a later save, such as announcing the end, has none left to delete). Owned by the run anyway.
        label = builders.execution_labels(before)[builders.LABEL_RUN]
        executed = before.status.active or any(step.attempts for step in status.steps)
        # Judged from the last status saved before too: a run ended for a status too large to store drops
        # its outputs from the status it ends with, not from the inputs its executions were given.
        if executed and (
            builders.may_have_state_secrets(before, before.status)
            or builders.may_have_state_secrets(before, status)
        ):
            with contextlib.suppress(KubeError):
                await ctl.kube.delete_secrets(namespace, f"{builders.LABEL_RUN}={label}")
        await _stop_strays(ctl, namespace, before, status)
    # The workflow's counts, the parent of an invoked run and the Events whose waits matched are queued by
    # the watch of this change, once the indices they read have it.


async def _stop_strays(ctl: Controller, namespace: str, run: WorkflowRun, status: WorkflowRunStatus) -> None:
    # A Job created by a pass whose status was never saved (a conflict with a cancel, a crash) is in no
    # status: once the run is over, nothing of it may keep running. A recorded execution's Job is no stray,
    # though the Job controller may not have marked it finished yet (its pod's report was read at once):
    # it and its pod's log stay until `spec.history.jobsAfterFinished` (`kubestep.controller.gc`).
    # (Executions the run's end stopped were deleted by their StopExecution.)
    recorded = {attempt.job for step in status.steps for attempt in step.attempts}
    recorded.update(execution.name for execution in run.status.active)  # ended now, or stopped
    for job in await ctl.kube.run_jobs(namespace, run.metadata.name):
        if job["metadata"]["name"] in recorded:
            continue
        if observe.owned_by(job, run.metadata.uid) and observe.job_finished(job) is None:
            await _ignore_missing(ctl.kube.delete_job(namespace, job["metadata"]["name"]))
            await _ignore_missing_quiet(ctl, namespace, job["metadata"]["name"])


async def _ignore_missing_quiet(ctl: Controller, namespace: str, secret: str) -> None:
    # Owned by the run: garbage-collected with it at the latest.
    with contextlib.suppress(KubeError):
        await ctl.kube.delete_secret(namespace, secret)
