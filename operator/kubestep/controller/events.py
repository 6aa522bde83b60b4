"""Reconcile one Event: start the runs its triggers ask for, exactly once, and say what it did."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubestep.api import names
from kubestep.api.base import Condition, set_condition, validation_problems
from kubestep.api.event import Event, EventRunRef, EventStatus
from kubestep.api.workflow import Workflow
from kubestep.controller import builders, cache, gates, gc, observe
from kubestep.controller.context import Controller, Key
from kubestep.controller.gather import DEBOUNCED, gather_event
from kubestep.controller.kube import EVENTS, RUNS, WORKFLOWS, AlreadyExists, Conflict, NotFound, Rejected
from kubestep.controller.queue import Result
from kubestep.engine.dedupe import earlier_start
from kubestep.engine.gates import Outcome
from kubestep.engine.gather import policy_of
from kubestep.engine.lifecycle import on_failure_function
from kubestep.engine.triggers import ID_GENERATIONS, duplicate, id_run_seed, match

log = logging.getLogger(__name__)

PROCESSED = "Processed"


@dataclass
class _Verdict:
    started: list[EventRunRef] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    debounced: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Why a run was not started: an unusable workflow, a refused run."""
    failed_ifs: list[str] = field(default_factory=list)
    """Triggers whose `if` could not be evaluated on this event."""
    gated: list[tuple[str, str]] = field(default_factory=list)
    """What the start gates (`spec.rateLimit`, `spec.singleton`) said: outcome and message."""


async def reconcile_event(ctl: Controller, key: Key) -> Result:
    """Start the event's runs once; keep its list of resumed runs current. API errors are raised.

    A run is created under a name derived from the event (or its ``spec.id``), so a pass cut short
    before its status save starts nothing twice: the next pass finds the run (``AlreadyExists``) and
    recognises it as its own.
    """
    try:
        obj = await ctl.kube.get(EVENTS, key.namespace, key.name)
    except NotFound:
        return Result.done()
    now = ctl.clock()
    try:
        event = Event.model_validate(obj)
    except ValidationError as exc:
        return await _refuse(ctl, obj, exc, now)
    status = event.status.model_copy(deep=True)
    if not any(c.type == PROCESSED for c in status.conditions):
        verdict = await _start_runs(ctl, event)
        status.started = verdict.started
        status.conditions = set_condition(status.conditions, _condition(event, verdict), now)
    status.resumed = [
        EventRunRef(workflow=wf, run=run)
        for wf, run in sorted(ctl.indices.resumed_by(key.namespace, key.name))
    ] or status.resumed
    if status == event.status:
        # Handled and saved: deleted once past its dedupe window.
        return await gc.collect_handled_event(ctl, event)
    return await _save(ctl, obj, status, event)


async def _save(
    ctl: Controller, obj: dict[str, Any], status: EventStatus, event: Event | None = None
) -> Result:
    try:
        saved = await ctl.kube.replace_status(EVENTS, obj, status.to_dict())
    except (Conflict, NotFound):
        return Result.again()  # changed meanwhile: decide again from what is there now
    if event is None:
        return Result.done()
    # The watch brings this very version back without a pass (`cache.watched_event`): the pass it would
    # have queued, collection's, is made here.
    cache.wrote_event(ctl, saved)
    return await gc.collect_handled_event(ctl, event.model_copy(update={"status": status}))


async def _start_runs(ctl: Controller, event: Event) -> _Verdict:
    namespace = event.metadata.namespace or ""
    created = event.metadata.creation_timestamp or ctl.clock()
    payload = observe.event_payload(event)
    verdict = _Verdict()
    for wf_obj in sorted(
        await ctl.kube.list_objects(WORKFLOWS, namespace), key=lambda o: o["metadata"]["name"]
    ):
        try:
            workflow = Workflow.model_validate(wf_obj)
        except ValidationError as exc:
            verdict.errors.append(
                f"workflow {wf_obj['metadata']['name']}: unusable spec: {validation_problems(exc)[0]}"
            )
            continue
        handler = on_failure_function(workflow.metadata.name, workflow.spec, payload)
        if handler is not None:
            # `spec.onFailure`: the same workflow, running its handler, under names of their own.
            spec = workflow.spec.model_copy(update={"function": handler})
            await _start_run(
                ctl, workflow.model_copy(update={"spec": spec}), event, created, verdict, "onFailure"
            )
        found = match(workflow.spec, payload)
        if found.error:
            verdict.failed_ifs.append(f"workflow {workflow.metadata.name}: {found.error}")
        if not found.matched:
            continue
        async with gates.gated(ctl, workflow, event, payload) as gate:
            if gate.message:
                verdict.gated.append((gate.outcome.value, gate.message))
            if not gate.starts:
                continue
            await _start_run(ctl, workflow, event, created, verdict)
    return verdict


async def _start_run(
    ctl: Controller,
    workflow: Workflow,
    event: Event,
    created: datetime,
    verdict: _Verdict,
    variant: str = "",
) -> None:
    namespace = event.metadata.namespace or ""
    wf = workflow.metadata.name
    # A variant (the onFailure handler) of the workflow gets run names of its own for the same event.
    if event.spec.id and not variant:
        others = ctl.indices.events_named(namespace, event.spec.name, event.spec.id)
        earlier = earlier_start(event, wf, others, ctl.dedupe_window)
        if earlier is not None:
            runs = ", ".join(r.run for r in earlier.status.started if r.workflow == wf)
            verdict.duplicates.append(
                f"event {earlier.metadata.name} with the same id {event.spec.id!r} started run {runs} of "
                f"workflow {wf}"
            )
            return
    if not variant and policy_of(workflow.spec) is not None:
        gathered = await gather_event(ctl, workflow, event, created)
        if gathered.run is not None:
            verdict.started.append(EventRunRef(workflow=wf, run=gathered.run))
        if gathered.debounced is not None:
            verdict.debounced.append(gathered.debounced)
        if gathered.error is not None:
            verdict.errors.append(gathered.error)
        return
    if not event.spec.id:
        names_ = [names.run_name(wf, f"{variant}{event.metadata.uid or event.metadata.name}")]
    else:
        # Every event with this name and id maps to the same run name: whichever is handled first creates
        # the run and the API server refuses the others. Once that run is older than the dedupe window, the
        # next generation of the name is used.
        names_ = [
            names.run_name(wf, variant + id_run_seed(event.spec.name, event.spec.id, n))
            for n in range(ID_GENERATIONS)
        ]
    for name in names_:
        try:
            await ctl.kube.create(RUNS, namespace, builders.event_run(workflow, event, name, created))
        except AlreadyExists:
            existing_obj = await ctl.kube.get(RUNS, namespace, name)
            source = ((existing_obj.get("spec") or {}).get("event") or {}).get("source")
            if source == event.metadata.name:
                break  # started by this event before a crash or a conflict
            first = _created(existing_obj)
            if event.spec.id and duplicate(first, created, ctl.dedupe_window):
                verdict.duplicates.append(
                    f"event {source} with the same id {event.spec.id!r} started run {name} of workflow {wf}"
                    + (f" at {first.isoformat()}" if first else "")
                )
                return
            continue
        except Rejected as exc:
            verdict.errors.append(f"workflow {wf}: the run could not be created: {exc}")
            return
        break
    else:
        verdict.errors.append(f"workflow {wf}: every run name for this event is taken")
        return
    verdict.started.append(EventRunRef(workflow=wf, run=name))


def _created(obj: dict[str, Any]) -> datetime | None:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


async def _refuse(ctl: Controller, obj: dict[str, Any], exc: ValidationError, now: datetime) -> Result:
    """An Event the models cannot read (the schema let it through): say why, once."""
    status = EventStatus.model_validate(obj.get("status") or {})
    if any(c.type == PROCESSED for c in status.conditions):
        return Result.done()
    condition = Condition(
        type=PROCESSED,
        status="False",
        reason="InvalidEvent",
        message=f"{validation_problems(exc)[0]}; fix the field and publish a new Event",
    )
    status.conditions = set_condition(status.conditions, condition, now)
    return await _save(ctl, obj, status)


def _condition(event: Event, verdict: _Verdict) -> Condition:
    errors = "; ".join(verdict.failed_ifs + verdict.errors)
    if verdict.started:
        runs = ", ".join(f"{r.run} ({r.workflow})" for r in verdict.started)
        message = f"started {len(verdict.started)} run(s): {runs}" + (f"; errors: {errors}" if errors else "")
        message += "".join(f"; {m}" for _, m in verdict.gated)
        return Condition(type=PROCESSED, status="True", reason="RunsStarted", message=message)
    if verdict.debounced:
        return Condition(
            type=PROCESSED, status="True", reason=DEBOUNCED, message="; ".join(verdict.debounced)
        )
    if verdict.duplicates:
        message = (
            f"duplicate: {'; '.join(verdict.duplicates)}. Events with the same spec.id within the dedupe "
            "window start nothing; give the event a new spec.id to start another run"
        )
        return Condition(type=PROCESSED, status="True", reason="Duplicate", message=message)
    stopped = [(r, m) for r, m in verdict.gated if r != Outcome.START]
    if stopped:
        message = "; ".join(m for _, m in stopped) + (f"; errors: {errors}" if errors else "")
        return Condition(type=PROCESSED, status="True", reason=stopped[0][0], message=message)
    if verdict.errors:
        return Condition(
            type=PROCESSED,
            status="True",
            reason="RunNotStarted",
            message=f"no run started: {errors}; fix what is named and publish a new Event",
        )
    if verdict.failed_ifs:
        return Condition(
            type=PROCESSED,
            status="True",
            reason="ExpressionFailed",
            message=f"no run started: a trigger's `if` failed: {errors}; "
            "fix the expression or the event's data",
        )
    return Condition(
        type=PROCESSED,
        status="True",
        reason="NoTriggerMatched",
        message=(
            f"no Workflow in namespace {event.metadata.namespace} has a trigger on event {event.spec.name!r} "
            "whose `if` holds; check spec.name against the Workflows' spec.triggers[].event"
        ),
    )
