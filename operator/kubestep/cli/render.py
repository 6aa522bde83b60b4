"""Pure renderers of the read commands: table rows, a run's timeline, log lines. No I/O; each takes the
objects (as the API server returns them, or as models) and the time, and returns text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from rich.markup import escape

from kubestep.api.event import Event
from kubestep.api.report import LOG_REPORT_MARKER
from kubestep.api.run import Attempt, RunPhase, StepPhase, StepStatus, WorkflowRun
from kubestep.api.workflow import Trigger, Workflow

Obj = dict[str, Any]

OUTPUTS = ("table", "json", "yaml")
RUN_COLUMNS = ("NAME", "WORKFLOW", "PHASE", "PROGRESS", "STEP", "ATTEMPT", "AGE", "DURATION")
WORKFLOW_COLUMNS = ("NAME", "READY", "TRIGGERS", "ACTIVE", "SUCCEEDED", "FAILED", "AGE")
EVENT_COLUMNS = ("NAME", "EVENT", "ID", "RUNS", "REASON", "AGE")
_PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "red",
    "Cancelled": "yellow",
    "Running": "cyan",
    "Retrying": "yellow",
    "Error": "red",
    "NonRetriable": "red",
    "Timeout": "red",
    "Lost": "yellow",
    "Disruption": "yellow",
}
#: Colours that tell the steps of a run apart in `kubestep logs`.
STEP_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")


def dump(obj: Obj | list[Obj], output: str) -> str:
    """``obj`` as JSON or YAML; a list becomes a ``List``, as kubectl prints it."""
    if isinstance(obj, list):
        obj = {"apiVersion": "v1", "kind": "List", "items": [_shown(o) for o in obj]}
    else:
        obj = _shown(obj)
    if output == "json":
        return json.dumps(obj, indent=2, default=str)
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def _shown(obj: Obj) -> Obj:
    """An object as kubectl prints it: without ``metadata.managedFields``, which says who wrote what."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


#: Column widths of `kubestep runs --watch`, whose lines come one by one (a long value just pushes on).
WATCH_WIDTHS = (40, 28, 10, 17, 38, 8, 7, 8)


def watch_line(row: list[str]) -> str:
    """One line of ``kubestep runs --watch``: the row, in columns of fixed width."""
    widths = ((30,) if len(row) > len(WATCH_WIDTHS) else ()) + WATCH_WIDTHS
    return " ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()


def watch_key(row: list[str]) -> tuple[str, ...]:
    """What makes a run's row worth printing again: anything but its age and duration (the last two)."""
    return tuple(row[:-2])


def short_duration(seconds: float) -> str:
    """kubectl's style: ``850ms``, ``12.3s``, ``4m5s``, ``3h2m``, ``5d4h``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def age(since: datetime | None, now: datetime) -> str:
    """How long ago ``since`` was, in whole seconds below a minute, or ``-``."""
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    return f"{seconds}s" if seconds < 60 else short_duration(seconds)


def between(start: datetime | None, end: datetime | None) -> str:
    """The time from ``start`` to ``end``, or ``-`` when either is unknown."""
    if start is None or end is None:
        return "-"
    return short_duration((end - start).total_seconds())


# Runs ------------------------------------------------------------------------------------------------


def current(run: WorkflowRun) -> tuple[str, str]:
    """The step being worked on and its attempt, from the steps and executions in the status: the steps
    whose pods run, else the unfinished step (sleeping, waiting, backing off), else ``(next)`` while an
    execution looks for the next step."""
    status = run.status
    if status.phase.finished:
        return "", ""
    running = [e for e in status.active if e.step is not None]
    if running:
        return ",".join(str(e.step) for e in running), str(max(e.attempt for e in running))
    waiting = next((s for s in status.steps if not s.phase.finished), None)
    if waiting is not None:
        next_attempt = (
            waiting.attempt_count + 1 if waiting.phase is StepPhase.RETRYING else waiting.attempt_count
        )
        return f"{waiting.id} ({waiting.phase.value.lower()})", str(next_attempt or "")
    if status.active:
        return "(next)", str(status.active[0].attempt)
    return "", ""


def progress(run: WorkflowRun) -> str:
    """Steps done (and failed) so far; no total, which no one knows before the function returns."""
    done = sum(1 for s in run.status.steps if s.phase is StepPhase.SUCCEEDED)
    failed = sum(1 for s in run.status.steps if s.phase is StepPhase.FAILED)
    return f"{done} done" + (f", {failed} failed" if failed else "")


def run_row(run: WorkflowRun, now: datetime, namespace: bool = False) -> list[str]:
    """One line of ``kubestep runs``."""
    status = run.status
    step, attempt = current(run)
    end = status.finished_at or (now if status.started_at else None)
    row = [
        run.metadata.name,
        run.spec.workflow_ref.name,
        status.phase.value,
        progress(run),
        step or "-",
        attempt or "-",
        age(run.metadata.creation_timestamp or status.started_at, now),  # local runs have no creation time
        between(status.started_at, end),
    ]
    return [run.metadata.namespace or "", *row] if namespace else row


def phase_style(phase: str) -> str:
    """The colour of a phase or an attempt's result."""
    return _PHASE_STYLE.get(phase, "")


# Workflows and events -------------------------------------------------------------------------------


def _trigger_text(trigger: Trigger) -> str:
    if trigger.cron is not None:
        return f"cron {trigger.cron}" + (f" ({trigger.timezone})" if trigger.timezone else "")
    return (trigger.event or "") + (f" if {trigger.if_}" if trigger.if_ else "")


def workflow_row(workflow: Workflow, now: datetime, namespace: bool = False) -> list[str]:
    """One line of ``kubestep workflows``."""
    ready = next((c for c in workflow.status.conditions if c.type == "Ready"), None)
    ready_text = "Unknown" if ready is None else ready.status
    if ready is not None and ready.status != "True" and ready.reason:
        ready_text += f" ({ready.reason})"
    if workflow.spec.paused:
        ready_text += " (Paused)"
    triggers = ", ".join(_trigger_text(t) for t in workflow.spec.triggers) or "-"
    st = workflow.status
    row = [
        workflow.metadata.name,
        ready_text,
        triggers,
        str(st.active),
        str(st.succeeded),
        str(st.failed),
        age(workflow.metadata.creation_timestamp, now),
    ]
    return [workflow.metadata.namespace or "", *row] if namespace else row


def event_row(event: Event, now: datetime, namespace: bool = False) -> list[str]:
    """One line of ``kubestep events``."""
    processed = next((c for c in event.status.conditions if c.type == "Processed"), None)
    runs = [r.run for r in event.status.started] + [f"{r.run} (resumed)" for r in event.status.resumed]
    reason = "-" if processed is None else processed.reason or processed.status
    if processed is not None and not runs and processed.message:
        # The whole message is in `-o yaml`; a table row stays readable.
        message = processed.message.split(";")[0]
        reason += f": {message[:77] + '...' if len(message) > 80 else message}"
    row = [
        event.metadata.name,
        event.spec.name,
        event.spec.id or "-",
        ", ".join(runs) or "-",
        reason,
        age(event.metadata.creation_timestamp, now),
    ]
    return [event.metadata.namespace or "", *row] if namespace else row


# The timeline -----------------------------------------------------------------------------------------


def _json_line(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clock(when: datetime | None) -> str:
    return "-" if when is None else when.strftime("%H:%M:%S")


def attempt_line(attempt: Attempt) -> str:
    """One attempt of the timeline: number, start, duration, result, reason, exit code, message."""
    result = attempt.result.value if attempt.result else "Running"
    style = phase_style(result)
    parts = [
        f"#{attempt.number}",
        _clock(attempt.started_at),
        between(attempt.started_at, attempt.finished_at),
        f"[{style}]{result}[/]" if style else result,
    ]
    if attempt.reason:
        parts.append(escape(attempt.reason))
    if attempt.exit_code is not None:
        parts.append(f"exit {attempt.exit_code}")
    line = "  ".join(parts)
    if attempt.message and attempt.result not in (None,) and attempt.result.value != "Succeeded":
        line += f"  {escape(attempt.message.splitlines()[0][:200])}"
    return line


def step_lines(step: StepStatus, number: int) -> list[str]:
    """A step of the timeline and each of its attempts, with the backoff before the next."""
    style = phase_style(step.phase.value)
    phase = f"[{style}]{step.phase.value}[/]" if style else step.phase.value
    kind = "" if step.type.value == "run" else f" ({step.type.value})"
    took = "reused" if step.reused_from else between(step.started_at, step.finished_at)
    lines = [f"{number}. [bold]{escape(step.id)}[/]{kind}  {phase}  {took}"]
    if step.reused_from:
        lines.append(f"     output reused from run {escape(step.reused_from)}: not run in this run")
    if step.attempt_count > len(step.attempts):
        lines.append(f"     ({step.attempt_count - len(step.attempts)} earlier attempts not kept)")
    for attempt in step.attempts:
        lines.append("     " + attempt_line(attempt))
        if attempt.retry_delay_seconds is not None:
            lines.append(
                f"        backoff {short_duration(attempt.retry_delay_seconds)} before the next attempt"
            )
    if step.pending:
        lines.append(f"     pod not started: {escape(step.pending)}")
    if step.next_attempt_at is not None:
        lines.append(f"     next attempt at {step.next_attempt_at.isoformat()}")
    if step.wake_at is not None and step.phase is StepPhase.SLEEPING:
        lines.append(f"     sleeps until {step.wake_at.isoformat()}")
    if step.wait is not None:
        matched = f", matched by Event {step.wait.matched}" if step.wait.matched else ""
        lines.append(f"     waits for event {escape(step.wait.event)}{matched}")
    if step.invoke is not None:
        lines.append(f"     invoked run {step.invoke.run} of workflow {step.invoke.workflow}")
    if step.error is not None:
        lines.append(f"     [red]error[/]: {escape(step.error.type)}: {escape(step.error.message)}")
    return lines


def timeline(run: WorkflowRun, now: datetime, children: list[WorkflowRun] | None = None) -> list[str]:
    """``kubestep describe run``: the run, its event, every step and attempt, its output or error, its
    child runs. Lines carry Rich markup."""
    status = run.status
    event = run.spec.event
    style = phase_style(status.phase.value)
    end = status.finished_at or (now if status.started_at else None)
    lines = [
        f"Name:       {run.metadata.name}",
        f"Namespace:  {run.metadata.namespace or '-'}",
        f"Workflow:   {run.spec.workflow_ref.name}",
    ]
    if status.image:
        # Only cluster runs pin one (their first pod's digest); local runs ignore the image.
        named = run.spec.workflow.image
        pinned = "" if named == status.image else f" (pinned from {named})"
        lines.append(f"Image:      {escape(status.image + pinned)}")
    lines += [
        f"Phase:      [{style}]{status.phase.value}[/]" if style else f"Phase:      {status.phase.value}",
        f"Started:    {status.started_at.isoformat() if status.started_at else '-'}",
        f"Duration:   {between(status.started_at, end)}",
    ]
    source = f"Event {event.source}" if event.source else "no Event object"
    ts = event.ts.isoformat() if event.ts else "-"
    lines.append(f"Event:      {escape(event.name)} ({source}, id {event.id or '-'}, ts {ts})")
    lines.append(f"  data:     {escape(_json_line(event.data))}")
    if event.user:
        lines.append(f"  user:     {escape(_json_line(event.user))}")
    if run.spec.parent is not None:
        lines.append(f"Parent:     run {run.spec.parent.run}, step {run.spec.parent.step}")
    if status.rerun_of:
        frm = run.spec.rerun.from_step if run.spec.rerun else "?"
        lines.append(f"Rerun of:   {status.rerun_of} (from step {frm})")
    if status.reruns:
        lines.append(f"Reruns:     {', '.join(status.reruns)}")
    lines.append("Steps:" if status.steps else "Steps:      none reached yet")
    for number, step in enumerate(status.steps, start=1):
        lines.extend("  " + line for line in step_lines(step, number))
    for execution in status.active:
        if execution.step is None:
            lines.append(
                f"  (next)  execution {execution.name} looks for the next step, "
                f"since {_clock(execution.started_at)}"
            )
    if status.output is not None:
        lines.append(f"Output:     {escape(_json_line(status.output, 1000))}")
    if status.error is not None:
        where = f" (step {status.error.step})" if status.error.step else ""
        lines.append(
            f"Error:      [red]{escape(status.error.type)}[/]: {escape(status.error.message)}{where}"
        )
    if children:
        lines.append("Child runs:")
        for child in children:
            lines.append(
                f"  {child.metadata.name}  {child.spec.workflow_ref.name}  {child.status.phase.value}"
                + (f"  (step {child.spec.parent.step})" if child.spec.parent else "")
            )
    return lines


# Logs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptLog:
    """One attempt whose log ``kubestep logs`` shows, in the order the attempts started."""

    step: str
    """The step's id, or ``(next)`` for an execution that has not reached its step yet."""
    attempt: int
    job: str
    """The execution (Job) that ran the attempt."""
    started_at: datetime | None
    recorded: str
    """The log tail recorded in the run's status (shown when the pod is gone)."""
    finished: bool


def attempt_logs(run: WorkflowRun, step: str | None = None, attempt: int | None = None) -> list[AttemptLog]:
    """Every attempt of the run (recorded ones, then those still running), oldest first, optionally
    only those of one step and one attempt number."""
    found: list[AttemptLog] = []
    recorded = set()
    for s in run.status.steps:
        for a in s.attempts:
            recorded.add(a.job)
            found.append(AttemptLog(s.id, a.number, a.job, a.started_at, a.log_tail, a.result is not None))
    for e in run.status.active:
        if e.name not in recorded:
            found.append(AttemptLog(e.step or "(next)", e.attempt, e.name, e.started_at, "", False))
    found = [
        f for f in found if (step is None or f.step == step) and (attempt is None or f.attempt == attempt)
    ]
    # Attempts not started yet (none, in practice) go last.
    return sorted(
        found, key=lambda f: (f.started_at is None, f.started_at.timestamp() if f.started_at else 0, f.job)
    )


def log_lines(text: str) -> list[str]:
    """The lines a step printed, without the runner's report line (data, not output)."""
    return [line for line in text.splitlines() if not line.startswith(LOG_REPORT_MARKER)]


def prefix(entry: AttemptLog, recorded: bool) -> str:
    """What starts each log line of an attempt: its step and attempt, and whether the line comes from the
    tail recorded in the run's status (the pod is gone)."""
    return f"{entry.step} #{entry.attempt}" + (" (recorded)" if recorded else "")


def run_finished(run: WorkflowRun) -> bool:
    """Whether nothing more will happen to the run."""
    return run.status.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.CANCELLED)
