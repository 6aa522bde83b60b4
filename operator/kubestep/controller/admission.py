"""Reconcile the flow control of one workflow: grant the slots its queued runs wait for.

One pass per workflow at a time (its key in the work queue), computed from the runs as the API server has
them (a list, not the watch cache: a grant this process just wrote must be counted). A grant is written
into the run's status under the resourceVersion the list returned, so a run that changed meanwhile is left
for the next pass; since every other change only frees slots, no pass ever grants past a limit, after a
crash or with several workers alike.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from kubestep.api.run import RunPhase, WorkflowRun
from kubestep.api.workflow import Workflow, WorkflowSpec
from kubestep.controller import builders, cache, gather
from kubestep.controller.context import Controller, Key
from kubestep.controller.kube import NotFound, Obj
from kubestep.controller.queue import Result
from kubestep.engine import admission
from kubestep.engine.gather import policy_of

log = logging.getLogger(__name__)


async def reconcile_admission(ctl: Controller, key: Key) -> Result:
    """Grant what the workflow's limits allow to its waiting runs; API errors are raised."""
    spec: WorkflowSpec | None = None
    try:
        spec = Workflow.model_validate(await cache.workflow(ctl, key.namespace, key.name)).spec
    except NotFound:
        pass  # its runs still finish: each under the limits it was started with
    except ValidationError:
        return Result.done()  # its own reconcile says why; nothing is granted meanwhile
    # Only the workflow itself pauses: the runs of a deleted one finish (their copies may say paused).
    paused = spec is not None and spec.paused
    queued = RunPhase.QUEUED.value in ctl.indices.run_phases(key.namespace, key.name)
    flow = spec is not None and (
        spec.concurrency or spec.throttle or spec.paused or spec.singleton or policy_of(spec)
    )
    if not flow and not queued:
        # No flow control and no run waiting (a run told of a pause counts as waiting): no list needed.
        return Result.done()
    objs = [
        obj
        for obj in await ctl.kube.list_runs(key.namespace, builders.workflow_label(key.name))
        # A longer name cut to the same label is another workflow's run.
        if (obj.get("spec") or {}).get("workflowRef", {}).get("name") == key.name
    ]
    candidates: dict[str, tuple[Obj, admission.Candidate]] = {}
    for obj in objs:
        try:
            candidates[obj["metadata"]["name"]] = (obj, admission.candidate_of(obj))
        except (ValidationError, ValueError, TypeError):
            continue  # its own reconcile says what is wrong with it
    if spec is None:
        spec = _spec_of_newest(candidates)
    now = ctl.clock()
    # Runs holding events (debounce, batch) are released first, then admitted like any other.
    hold = await gather.release(ctl, candidates, now)
    decided = admission.admit(
        admission.entries(spec) if spec else [],
        [c for _, c in candidates.values()],
        now,
        spec.throttle if spec else None,
        paused=paused,
        priority=spec.priority if spec else None,
    )
    again = False
    for name, verdict in decided.verdicts.items():
        if not await gather.write_verdict(ctl, candidates[name][0], verdict, now):
            again = True  # changed since the list: decided again from what is there then
    # A throttle's next turn changes nothing the watches see: the pass asks to be run again then.
    return Result(requeue=again or hold.again, at=gather.earliest(decided.at, hold.at))


def _spec_of_newest(candidates: dict[str, tuple[Obj, admission.Candidate]]) -> WorkflowSpec | None:
    """For a deleted workflow, the limits its newest run was started under (its copy of the spec)."""
    if not candidates:
        return None
    obj, _ = max(candidates.values(), key=lambda c: (c[1].queued_at, c[1].name))
    try:
        return WorkflowRun.model_validate(obj).spec.workflow
    except ValidationError:
        return None
