"""Debounce and batch in the cluster: put an Event into the run of its key, and release waiting runs.

The decisions are `kubestep.engine.gather`'s; this module reads the runs, writes what it decided under the
resourceVersion it read (a conflict means another worker got there first: read again and decide again),
and keeps the superseded Events' `Processed` condition in step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from kubestep.api import names
from kubestep.api.base import Condition, set_condition
from kubestep.api.event import Event, EventStatus
from kubestep.api.run import RunEvent, RunGather, RunPhase, WorkflowRun, WorkflowRunStatus
from kubestep.api.workflow import Workflow
from kubestep.controller import builders, cache
from kubestep.controller.context import Controller
from kubestep.controller.kube import EVENTS, RUNS, AlreadyExists, Conflict, NotFound, Obj, Rejected
from kubestep.engine import admission
from kubestep.engine import gather as decide
from kubestep.engine.admission import Candidate

log = logging.getLogger(__name__)

#: The label naming the key of a run that holds events (a hash: keys may hold any characters).
LABEL_GATHER = "kubestep.dev/gather"
#: Tries of one event against writers of the same key before the event pass is retried as a whole.
_TRIES = 8

PROCESSED = "Processed"
DEBOUNCED = "Debounced"


@dataclass(frozen=True)
class Gathered:
    """What became of an event under debounce or batch: the run it went to, or why it started none."""

    run: str | None = None
    debounced: str | None = None
    """The event is superseded: a sentence naming the run that got its successor."""
    error: str | None = None


def _held(obj: Obj) -> decide.Held | None:
    spec = obj.get("spec") or {}
    if not spec.get("gather"):
        return None
    try:
        gather = RunGather.model_validate(spec["gather"])
        event = RunEvent.model_validate(spec.get("event") or {})
    except ValidationError:
        return None
    phase = ((obj.get("status") or {}).get("phase")) or RunPhase.PENDING
    return decide.Held(
        obj["metadata"]["name"], gather, event, RunPhase(phase).finished or bool(spec.get("cancel"))
    )


async def gather_event(ctl: Controller, workflow: Workflow, event: Event, created: datetime) -> Gathered:
    """Put ``event`` into the run of its key (opening one when none is open); API errors are raised."""
    policy = decide.policy_of(workflow.spec)
    assert policy is not None
    namespace = event.metadata.namespace or ""
    wf = workflow.metadata.name
    spec = event.spec.completed(event.metadata.uid or event.metadata.name, created)
    run_event = RunEvent.model_validate({**spec.model_dump(), "source": event.metadata.name})
    key = decide.key_of(policy, run_event.as_payload())
    # Held by when the operator takes the event in: a backlog found after an outage is one burst.
    taken = ctl.clock()
    selector = f"{LABEL_GATHER}={decide.key_label(key)}"
    for _ in range(_TRIES):
        objs = {
            o["metadata"]["name"]: o
            for o in await ctl.kube.list_runs(namespace, builders.workflow_label(wf), selector)
            if (o.get("spec") or {}).get("workflowRef", {}).get("name") == wf
        }
        runs = [h for h in map(_held, objs.values()) if h is not None]
        joined = decide.join(policy, key, runs, run_event, taken)
        if joined.action is decide.JoinAction.ALREADY:
            if joined.replaced:
                await supersede(ctl, namespace, joined.replaced, wf, joined.run, event.metadata.name)
            return Gathered(run=joined.run)
        if joined.action is decide.JoinAction.SUPERSEDED:
            return Gathered(debounced=_superseded(wf, joined.run, joined.replaced))
        if joined.action is decide.JoinAction.CREATE:
            assert joined.gather is not None
            name = names.run_name(wf, decide.run_seed(key, joined.generation))
            body = builders.event_run(workflow, event, name, created)
            body["spec"]["gather"] = joined.gather.to_dict()
            body["metadata"]["labels"][LABEL_GATHER] = decide.key_label(key)
            try:
                await ctl.kube.create(RUNS, namespace, body)
            except AlreadyExists:
                continue  # another event of the key opened it meanwhile: join it
            except Rejected as exc:
                return Gathered(error=f"workflow {wf}: the run could not be created: {exc}")
            return Gathered(run=name)
        obj = objs[joined.run]
        assert joined.gather is not None
        obj["spec"]["gather"] = joined.gather.to_dict()
        if joined.event is not None:
            obj["spec"]["event"] = joined.event.to_dict()
        try:
            cache.saw_run(ctl, await ctl.kube.replace(RUNS, obj), written=True, replaced=obj)
        except (Conflict, NotFound):
            continue  # released, or joined by another event meanwhile: decide again
        except Rejected as exc:
            return Gathered(error=f"workflow {wf}: the event could not be added to run {joined.run}: {exc}")
        if joined.action is decide.JoinAction.REPLACE and joined.replaced:
            await supersede(ctl, namespace, joined.replaced, wf, joined.run, event.metadata.name)
        return Gathered(run=joined.run)
    raise Conflict(f"run of workflow {wf} for key {key!r} kept changing; the event is handled again", 409)


def _superseded(workflow: str, run: str, successor: str | None) -> str:
    return (
        f"superseded by event {successor} under spec.debounce of workflow {workflow}: run {run} starts "
        "with the newest event only"
    )


async def supersede(
    ctl: Controller, namespace: str, name: str, workflow: str, run: str, successor: str
) -> None:
    """Say on Event ``name`` that ``successor`` replaced it in ``run``: its `Processed` condition becomes
    `Debounced` (unless it also started runs of other workflows) and it no longer lists ``run``."""
    for _ in range(_TRIES):
        try:
            obj = await ctl.kube.get(EVENTS, namespace, name)
            status = EventStatus.model_validate(obj.get("status") or {})
        except NotFound:
            return
        except ValidationError:
            return
        others = [r for r in status.started if not (r.workflow == workflow and r.run == run)]
        condition = next((c for c in status.conditions if c.type == PROCESSED), None)
        if condition is not None and condition.reason == DEBOUNCED and others == status.started:
            return
        message = _superseded(workflow, run, successor)
        if others:
            started = ", ".join(f"{r.run} ({r.workflow})" for r in others)
            new = Condition(
                type=PROCESSED,
                status="True",
                reason="RunsStarted",
                message=f"started {len(others)} run(s): {started}; {message}",
            )
        else:
            new = Condition(type=PROCESSED, status="True", reason=DEBOUNCED, message=message)
        status.started = others
        status.conditions = set_condition(status.conditions, new, ctl.clock())
        try:
            await ctl.kube.replace_status(EVENTS, obj, status.to_dict())
        except Conflict:
            continue
        except NotFound:
            return
        return


# Release ----------------------------------------------------------------------------------------------


@dataclass
class Hold:
    """What the release step of an admission pass leaves to the rest of it."""

    at: datetime | None = None
    """When the next open run is released."""
    again: bool = False
    """A write conflicted: the pass should run again soon."""


async def release(ctl: Controller, candidates: dict[str, tuple[Obj, Candidate]], now: datetime) -> Hold:
    """Release the open runs whose time has come (they then wait for admission like any run) and show the
    others as waiting; these are taken out of ``candidates``, which keeps the released runs as written."""
    hold = Hold()
    waiting: list[tuple[decide.Policy, RunGather]] = []
    for name, (obj, cand) in list(candidates.items()):
        held = _held(obj)
        if held is None or not held.gather.open or held.finished:
            continue
        try:
            policy = decide.policy_of(WorkflowRun.model_validate(obj).spec.workflow)
        except ValidationError:
            continue
        if policy is None:
            continue
        if decide.due(policy, held.gather, now):
            obj["spec"]["gather"]["open"] = False
            try:
                written = await ctl.kube.replace(RUNS, obj)
                cache.saw_run(ctl, written, written=True, replaced=obj)
            except NotFound:
                del candidates[name]
                continue
            except Conflict:
                hold.again = True  # an event joined meanwhile: decided again
                del candidates[name]
                continue
            candidates[name] = (written, cand)
            continue
        del candidates[name]
        waiting.append((policy, held.gather))
        if not await write_verdict(ctl, obj, decide.waiting(policy, held.gather), now):
            hold.again = True
    hold.at = decide.next_release(waiting)
    return hold


async def write_verdict(ctl: Controller, obj: Obj, verdict: admission.Verdict, now: datetime) -> bool:
    """Write an admission verdict into the run ``obj``'s status, under the version read (also for the
    admission pass, which imports this module); False if the run changed meanwhile."""
    if admission.settled(obj.get("status") or {}, verdict):
        return True
    try:
        current = WorkflowRunStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        return True  # its own reconcile says what is wrong with it
    status = admission.apply(current, verdict, now)
    if status == current:
        return True
    try:
        cache.saw_run(
            ctl, await ctl.kube.replace_status(RUNS, obj, status.to_dict()), written=True, replaced=obj
        )
    except NotFound:
        return True
    except Conflict:
        return False
    return True


def earliest(*times: datetime | None) -> datetime | None:
    """The earliest of the times given, None if none is."""
    return min((t for t in times if t is not None), default=None)
