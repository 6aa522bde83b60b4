"""Reconcile one Workflow: is it usable (Ready), and how many of its runs are active, succeeded, failed."""

from __future__ import annotations

from pydantic import ValidationError

from kubestep.api.base import Condition, set_condition, validation_problems
from kubestep.api.run import RunPhase
from kubestep.api.workflow import Workflow, WorkflowStatus
from kubestep.controller import cache, history, schedules
from kubestep.controller.context import Controller, Key
from kubestep.controller.kube import WORKFLOWS, Conflict, NotFound, Obj
from kubestep.controller.queue import Result
from kubestep.engine.cel import check

READY = "Ready"


def readiness(workflow: Workflow) -> Condition:
    """``Ready`` True, or False naming the first expression that does not compile."""
    generation = workflow.metadata.generation
    keys = [(f"spec.triggers[{i}].if", t.if_) for i, t in enumerate(workflow.spec.triggers)]
    keys += [(f"spec.concurrency[{i}].key", e.key) for i, e in enumerate(workflow.spec.concurrency)]
    if workflow.spec.throttle is not None:
        keys.append(("spec.throttle.key", workflow.spec.throttle.key))
    if workflow.spec.priority is not None:
        keys.append(("spec.priority.run", workflow.spec.priority.run))
    for field, held in (("debounce", workflow.spec.debounce), ("batch", workflow.spec.batch)):
        if held is not None:
            keys.append((f"spec.{field}.key", held.key))
    if workflow.spec.rate_limit is not None:
        keys.append(("spec.rateLimit.key", workflow.spec.rate_limit.key))
    if workflow.spec.singleton is not None:
        keys.append(("spec.singleton.key", workflow.spec.singleton.key))
    expressions = [(field, key, "CEL over `event`") for field, key in keys]
    expressions += [
        (f"spec.cancelOn[{index}].if", rule.if_, "CEL over `event` and `async`")
        for index, rule in enumerate(workflow.spec.cancel_on)
    ]
    for field, expression, over in expressions:
        problem = None if expression is None else check(expression)
        if problem is not None:
            return Condition(
                type=READY,
                status="False",
                reason="InvalidExpression",
                observed_generation=generation,
                message=f"{field}: {problem}; fix the expression ({over})",
            )
    if workflow.spec.paused:
        # Still Ready: events are taken and runs created, only their steps wait.
        return Condition(
            type=READY,
            status="True",
            reason="Paused",
            observed_generation=generation,
            message="the workflow is paused (spec.paused): matching events start runs that wait in phase "
            "Queued, and runs in flight wait before their next step, until spec.paused is set to false",
        )
    return Condition(
        type=READY,
        status="True",
        reason="Valid",
        observed_generation=generation,
        message="the workflow's triggers are valid; matching events start runs",
    )


async def reconcile_workflow(ctl: Controller, key: Key) -> Result:
    """Write the workflow's status from its spec and from the runs index; API errors are raised."""
    try:
        obj = await cache.workflow(ctl, key.namespace, key.name, to_write=True)
    except NotFound:
        cache.forget_workflow(ctl, key.namespace, key.name)
        return Result.done()
    try:
        workflow = Workflow.model_validate(obj)
    except ValidationError as exc:
        condition = Condition(
            type=READY,
            status="False",
            reason="InvalidSpec",
            message=validation_problems(exc)[0],
            observed_generation=obj["metadata"].get("generation"),
        )
        current = WorkflowStatus.model_validate(obj.get("status") or {})
        status = current.model_copy(update={"observed_generation": obj["metadata"].get("generation")})
        status.conditions = set_condition(current.conditions, condition, ctl.clock())
        return await _save(ctl, obj, status) if status != current else Result.done()
    phases = [
        RunPhase(p)
        for p in ctl.indices.run_phases(key.namespace, key.name)
        if p in RunPhase.__members__.values()
    ]
    status = workflow.status.model_copy(
        update={
            "observed_generation": workflow.metadata.generation,
            "active": sum(1 for p in phases if not p.finished),
            "succeeded": sum(1 for p in phases if p is RunPhase.SUCCEEDED),
            "failed": sum(1 for p in phases if p.finished and p is not RunPhase.SUCCEEDED),
        }
    )
    status.conditions = set_condition(workflow.status.conditions, readiness(workflow), ctl.clock())
    status = await schedules.tick(ctl, workflow, status)
    expiry = await history.collect_runs(ctl, workflow, status)
    result = await _save(ctl, obj, status) if status != workflow.status else Result.done()
    # The next tick of a `cron` trigger, or the end of a run's time to live, is the pass's timer.
    timers = [t for t in (status.next_tick, expiry) if t is not None]
    return result if result.requeue else Result.requeue_at(min(timers, default=None))


async def _save(ctl: Controller, obj: Obj, status: WorkflowStatus) -> Result:
    try:
        cache.saw_workflow(ctl, await ctl.kube.replace_status(WORKFLOWS, obj, status.to_dict()))
    except (Conflict, NotFound):
        meta = obj["metadata"]
        cache.forget_workflow(ctl, meta["namespace"], meta["name"])
        return Result.again()  # changed meanwhile: count again from what is there now, read from the API
    return Result.done()
