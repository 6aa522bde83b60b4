"""Reruns: a new run of a finished run's event that reuses the recorded outputs of its first steps.

People ask for a rerun by appending to the finished run's ``spec.rerunRequests`` (``kubestep rerun``);
``requested`` turns the new requests into runs to start, each with what ``plan`` chose to reuse (its
``spec.rerun``); ``seed`` turns that into the new run's first steps, already succeeded, so the runner
replays them from their outputs and the first step that runs is ``fromStep``. All are pure. The operator
creates the rerun from its own records, so no one but the operator writes a run's spec.
"""

from __future__ import annotations

from datetime import datetime

from kubestep.api import names
from kubestep.api.run import RerunSpec, ReusedStep, StepPhase, StepStatus, WorkflowRun
from kubestep.engine.actions import Note, StartRerun


class RerunError(ValueError):
    """The run cannot be rerun as asked; the message says why and what to do instead. ``usage`` is True
    when a different choice of ``from_step`` would do."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def plan(original: WorkflowRun, from_step: str | None) -> RerunSpec:
    """What a rerun of ``original`` from ``from_step`` reuses (default: from its first failed step)."""
    name = original.metadata.name
    status = original.status
    if not status.phase.finished:
        raise RerunError(
            f"run {name} is still {status.phase.value}: wait for it to end, or cancel it, before rerunning it"
        )
    ids = [s.id for s in status.steps]
    if from_step is None:
        failed = next((s for s in status.steps if s.phase is StepPhase.FAILED), None)
        if failed is None:
            raise RerunError(
                f"run {name} has no failed step: name the step to rerun from with --from "
                f"(one of: {', '.join(ids) or 'no steps recorded'})",
                usage=True,
            )
        from_step = failed.id
    if from_step not in ids:
        raise RerunError(
            f"run {name} has no step {from_step!r}; --from takes one of: {', '.join(ids) or 'no steps'}"
        )
    reused: list[ReusedStep] = []
    for step in status.steps:
        if step.id == from_step:
            break
        if step.phase is not StepPhase.SUCCEEDED:
            raise RerunError(
                f"step {step.id!r} of run {name} comes before {from_step!r} but ended {step.phase.value}, "
                f"so it has no output to reuse: rerun with --from {step.id}",
                usage=True,
            )
        reused.append(ReusedStep(id=step.id, name=step.name, type=step.type, output=step.output))
    return RerunSpec(of=name, from_step=from_step, steps=reused)


def seed(rerun: RerunSpec, now: datetime) -> list[StepStatus]:
    """The first steps of a rerun: the reused ones, succeeded with their recorded outputs, never run."""
    return [
        StepStatus(
            id=s.id,
            name=s.name,
            type=s.type,
            phase=StepPhase.SUCCEEDED,
            output=s.output,
            started_at=now,
            finished_at=now,
            reused_from=rerun.of,
        )
        for s in rerun.steps
    ]


def requested(run: WorkflowRun) -> tuple[list[StartRerun], list[Note], int]:
    """The reruns to start for the requests not yet acted on, the warnings for those refused, and how
    many requests are acted on then. Requests wait while the run has not ended."""
    handled = run.status.rerun_requests_handled
    requests = run.spec.rerun_requests
    if not run.status.phase.finished or handled >= len(requests):
        return [], [], handled
    starts, notes = [], []
    for index in range(handled, len(requests)):
        try:
            spec = plan(run, requests[index].from_step)
        except RerunError as exc:
            notes.append(Note("RerunRefused", f"spec.rerunRequests[{index}]: {exc}", warning=True))
            continue
        name = names.rerun_name(run.metadata.name, index)
        starts.append(StartRerun(name, spec))
        notes.append(Note("Rerun", f"started run {name}, a rerun from step {spec.from_step!r}"))
    return starts, notes, len(requests)
