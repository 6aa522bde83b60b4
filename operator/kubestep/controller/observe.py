"""Pure translation of what the cluster shows (Jobs, pods, Events, child runs) into engine observations."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from kubestep.api.event import Event
from kubestep.api.report import LOG_REPORT_MARKER, LOG_STEP_MARKER, Report, ReportKind, decode_report
from kubestep.api.run import ErrorInfo, RunPhase, WorkflowRun
from kubestep.controller.builders import CONTAINER
from kubestep.engine.observations import ArrivedEvent, ChildResult, ExitKind, Outcome

Obj = dict[str, Any]

#: Reasons with which the cluster takes a pod away (eviction, preemption, taints, node loss, deletion).
_DISRUPTION_REASONS = {"Evicted", "Preempting", "NodeLost", "Terminated", "Shutdown", "NodeShutdown"}


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def job_finished(job: Obj) -> str | None:
    """``Complete`` or ``Failed`` once the Job controller has decided, else None."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def _job_condition(job: Obj, kind: str) -> Obj:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def newest_pod(pods: list[Obj]) -> Obj | None:
    """The most recently created pod of a Job (with ``backoffLimit: 0`` there is one)."""
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def terminated_state(pod: Obj | None) -> Obj:
    """The step container's ``state.terminated``, or ``{}`` while it runs or when unknown."""
    if pod is None:
        return {}
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return {}


def report_needs_log(pod: Obj | None) -> bool:
    """Whether the container's report was too large for its termination message and lives in the log."""
    return (terminated_state(pod).get("message") or "").strip() == "log"


def _disruption(pod: Obj | None) -> tuple[str, str] | None:
    if pod is None:
        return "PodDeleted", "the step's pod was deleted before its end was recorded"
    status = pod.get("status", {})
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return str(cond.get("reason") or "DisruptionTarget"), str(cond.get("message") or "")
    if status.get("reason") in _DISRUPTION_REASONS:
        return str(status["reason"]), str(status.get("message") or "")
    if pod["metadata"].get("deletionTimestamp"):
        return "PodDeleted", "the step's pod was deleted while it ran"
    return None


def image_id(pod: Obj | None) -> str:
    """The image the step container ran, as the runtime reported it (``registry/repo@sha256:...``)."""
    for status in (pod or {}).get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return str(status.get("imageID") or "")
    return ""


def outcome(name: str, job: Obj | None, pod: Obj | None, log: str | None = None) -> Outcome | None:
    """How the execution ``name`` ended, or None while it still runs.

    A final report in the termination message (or the log) is trusted whatever else happened: the step
    finished. Without one, the pod tells whether the step timed out, was taken away by the cluster, or
    failed by itself. The image its container ran comes along (the run keeps it, by digest).
    """
    ended = _ending(name, job, pod, log)
    ran = image_id(pod)
    return dataclasses.replace(ended, image_id=ran) if ended is not None and ran else ended


def _ending(name: str, job: Obj | None, pod: Obj | None, log: str | None) -> Outcome | None:
    if job is None:
        # The Job is gone; what its pod said before going (the step it had started) still counts.
        terminated = terminated_state(pod)
        report = decode_report(terminated.get("message") or "", log)
        if is_final(report):
            return Outcome(
                name,
                ExitKind.EXITED,
                report,
                terminated.get("exitCode") or 0,
                "",
                "",
                "",
                _time(terminated.get("finishedAt")),
            )
        return Outcome(
            name,
            ExitKind.LOST,
            report,
            reason="JobDeleted",
            message=f"Job {name} is missing: it was deleted before its end was recorded, or never created "
            "because the operator stopped in between",
        )
    finished = job_finished(job)
    terminated = terminated_state(pod)
    message = terminated.get("message") or ""
    report = decode_report(message, log)
    if finished is None and not (terminated and is_final(report)):
        # Still running, or ended without a final report: the Job controller's verdict (a deadline, ...)
        # is awaited. A final report is acted on as soon as the node records it, seconds before that.
        return None
    exit_code = terminated.get("exitCode")
    ended = _time(terminated.get("finishedAt")) or _time(
        _job_condition(job, finished or "").get("lastTransitionTime")
    )
    tail = _tail(log if log is not None else ("" if report is not None or message == "log" else message))
    if report is not None and report.kind is not ReportKind.STARTED:
        return Outcome(
            name,
            ExitKind.EXITED,
            report,
            exit_code if exit_code is not None else 0,
            str(terminated.get("reason") or ""),
            "",
            tail,
            ended,
        )
    pod_status = (pod or {}).get("status", {})
    if (
        pod_status.get("reason") == "DeadlineExceeded"
        or _job_condition(job, "Failed").get("reason") == "DeadlineExceeded"
    ):
        return Outcome(
            name,
            ExitKind.DEADLINE,
            report,
            exit_code,
            "DeadlineExceeded",
            str(pod_status.get("message") or ""),
            tail,
            ended,
        )
    disrupted = _disruption(pod)
    if disrupted is not None:
        return Outcome(name, ExitKind.DISRUPTED, report, exit_code, disrupted[0], disrupted[1], tail, ended)
    if not terminated:
        # Finished Job, pod without a terminated container: treat like a pod the cluster took away.
        return Outcome(
            name,
            ExitKind.DISRUPTED,
            report,
            None,
            "PodLost",
            "the step's pod ended without a recorded container exit",
            tail,
            ended,
        )
    return Outcome(
        name, ExitKind.EXITED, report, exit_code, str(terminated.get("reason") or "Error"), "", tail, ended
    )


#: Waiting states every container passes through on its way to running: not a problem by themselves.
_ON_ITS_WAY = {"ContainerCreating", "PodInitializing"}


def not_started(pod: Obj | None, job_events: list[Obj]) -> tuple[str, str] | None:
    """Why a running Job's pod has not started, as ``(reason, message)``; None once it runs or ended.

    Without a pod, the newest Warning the Job controller recorded on the Job (``FailedCreate``: a missing
    ServiceAccount, a quota, an admission webhook) says why. A pending pod says it in its containers'
    waiting state (``ErrImagePull``, ``ImagePullBackOff``, ``CreateContainerConfigError``) or its
    scheduling condition (``Unschedulable``).
    """
    if pod is None:
        warnings = [e for e in job_events if e.get("type") == "Warning"]
        if not warnings:
            return "PodNotCreated", "the Job has created no pod yet"
        last = max(warnings, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return str(last.get("reason") or "FailedCreate"), str(last.get("message") or "")
    status = pod.get("status", {})
    if status.get("phase") not in (None, "Pending"):
        return None
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _ON_ITS_WAY:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("reason") or "Unschedulable"), str(cond.get("message") or "")
    return "ContainerCreating", "the pod is starting"


def held_up(pod: Obj) -> bool:
    """Whether a pod is stuck on its way to running (its image not pulled, unschedulable, ...), rather
    than starting, running or ended: only its status says so, and the run should show why."""
    why = not_started(pod, [])
    return why is not None and why[0] != "ContainerCreating"


def owned_by(obj: Obj, uid: str | None) -> bool:
    """Whether ``obj`` is owned by the object with this uid (and not by an earlier one of the same name)."""
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


#: An end seen within this long of now is timed by the operator's clock.
_RECENT = timedelta(seconds=2)
_SECOND = timedelta(seconds=1) - timedelta(microseconds=1)


def timed(ended: Outcome, now: datetime) -> Outcome:
    """``ended`` with an end time as precise as can be known.

    Kubernetes stamps whole seconds: an end seen just now is timed by the operator's finer clock, an end
    seen late (after a restart) by the end of its second, so no attempt looks shorter than it was.
    """
    if ended.finished_at is None:
        return ended
    late = now - ended.finished_at >= _RECENT
    return dataclasses.replace(ended, finished_at=min(now, ended.finished_at + _SECOND) if late else now)


def _tail(text: str, lines: int = 20) -> str:
    # The report line (large reports travel in the log) is data, not output anyone wants to read. In a
    # chained execution the tail is the last step's own: what follows the line recording the step before.
    kept = text.strip().splitlines()
    ends = [i for i, line in enumerate(kept) if line.startswith(LOG_STEP_MARKER)]
    kept = kept[ends[-1] + 1 :] if ends else kept
    kept = [line for line in kept if not line.startswith(LOG_REPORT_MARKER)]
    return "\n".join(kept[-lines:])


def event_received_at(event: Event) -> datetime:
    """When an event was published, as precisely as the API server tells.

    ``creationTimestamp`` has a resolution of one second, so an event counts from the end of its second:
    one published a moment after a wait began must not look older than the wait.
    """
    created = event.metadata.creation_timestamp or datetime.now(UTC)
    return created + timedelta(seconds=1) - timedelta(microseconds=1)


def event_payload(event: Event) -> dict[str, Any]:
    """The event as workflow code and CEL see it; ``id`` defaults to the object's uid, ``ts`` to when it was
    created."""
    meta = event.metadata
    return event.spec.completed(meta.uid or meta.name, meta.creation_timestamp).as_payload()


def arrived(event: Event) -> ArrivedEvent:
    """An Event as a candidate for waiting steps."""
    return ArrivedEvent(event_payload(event), event_received_at(event), event.metadata.name)


def child_result(step: str, child: WorkflowRun) -> ChildResult:
    """The state of an invoked child run."""
    return ChildResult(step, child.status.phase, child.status.output, child.status.error)


def missing_workflow(step: str, workflow: str) -> ChildResult:
    """A child that cannot start because its workflow does not exist: the invoke fails at once."""
    error = ErrorInfo(
        type="WorkflowNotFound",
        message=f"no Workflow named {workflow!r} in this namespace; create it, "
        "or fix the name given to invoke",
    )
    return ChildResult(step, RunPhase.FAILED, None, error)


def is_final(report: Report | None) -> bool:
    """Whether ``report`` ends the execution (anything but the interim ``started``)."""
    return report is not None and report.kind is not ReportKind.STARTED
