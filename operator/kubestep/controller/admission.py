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

from kubestep.api.flow import Concurrency
from kubestep.api.run import RunPhase, WorkflowRun
from kubestep.api.workflow import Workflow
from kubestep.controller import builders
from kubestep.controller.context import Controller, Key
from kubestep.controller.kube import RUNS, WORKFLOWS, Conflict, NotFound, Obj
from kubestep.controller.queue import Result
from kubestep.engine import admission

log = logging.getLogger(__name__)


async def reconcile_admission(ctl: Controller, key: Key) -> Result:
    """Grant what the workflow's limits allow to its waiting runs; API errors are raised."""
    entries: list[Concurrency] | None = None
    try:
        entries = Workflow.model_validate(
            await ctl.kube.get(WORKFLOWS, key.namespace, key.name)
        ).spec.concurrency
    except NotFound:
        pass  # its runs still finish: each under the limits it was started with
    except ValidationError:
        return Result.done()  # its own reconcile says why; nothing is granted meanwhile
    queued = RunPhase.QUEUED.value in ctl.indices.run_phases(key.namespace, key.name)
    if not entries and not queued:
        return Result.done()  # no flow control and no run waiting: no list needed
    runs: list[tuple[Obj, WorkflowRun]] = []
    for obj in await ctl.kube.list_runs(key.namespace, builders.workflow_label(key.name)):
        if (obj.get("spec") or {}).get("workflowRef", {}).get("name") != key.name:
            continue  # a longer name cut to the same label
        try:
            runs.append((obj, WorkflowRun.model_validate(obj)))
        except ValidationError:
            continue  # its own reconcile says why
    if entries is None:
        # Deleted workflow: the newest run's copy of its spec says what its runs were started under.
        newest = max(runs, key=lambda r: admission.candidate(r[1]).queued_at, default=None)
        entries = newest[1].spec.workflow.concurrency if newest is not None else []
    decided = admission.admit(entries, [admission.candidate(run) for _, run in runs])
    now = ctl.clock()
    again = False
    for obj, run in runs:
        verdict = decided.verdicts.get(run.metadata.name)
        if verdict is None:
            continue
        status = admission.apply(run.status, verdict, now)
        if status == run.status:
            continue
        try:
            await ctl.kube.replace_status(RUNS, obj, status.to_dict())
        except NotFound:
            continue
        except Conflict:
            again = True  # changed since the list: decided again from what is there then
    return Result.again() if again else Result.done()
