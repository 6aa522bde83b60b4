"""The cron triggers of one Workflow: start the runs of due ticks, once each, and record the schedule."""

from __future__ import annotations

import contextlib
import logging

from kubestep.api.run import RunEvent
from kubestep.api.workflow import Workflow, WorkflowStatus
from kubestep.controller import builders
from kubestep.controller.context import Controller
from kubestep.controller.kube import RUNS, AlreadyExists
from kubestep.engine.schedule import plan

log = logging.getLogger(__name__)


async def tick(ctl: Controller, workflow: Workflow, status: WorkflowStatus) -> WorkflowStatus:
    """``status`` with the schedule advanced, after starting the runs of the ticks due now.

    The runs come first, the status save after: a pass cut short in between is repeated, and the API
    server refuses the same tick's run name a second time.
    """
    if not any(t.cron for t in workflow.spec.triggers):
        return status.model_copy(update={"next_tick": None})
    now = ctl.clock()
    since = workflow.metadata.creation_timestamp or now
    due = plan(workflow.spec, status.last_tick, since, now)
    namespace = workflow.metadata.namespace or ""
    for scheduled in due.start:
        name = scheduled.run_name(workflow.metadata.name)
        event = RunEvent.model_validate(scheduled.event(workflow.spec))
        with contextlib.suppress(AlreadyExists):
            await ctl.kube.create(RUNS, namespace, builders.tick_run(workflow, event, name))
            log.info("%s/%s: tick %s started run %s", namespace, workflow.metadata.name, scheduled.at, name)
    if due.skipped:
        log.warning("%s/%s: %d missed tick(s) skipped", namespace, workflow.metadata.name, due.skipped)
    return status.model_copy(
        update={
            "last_tick": due.last,
            "next_tick": due.next,
            "skipped_ticks": status.skipped_ticks + due.skipped,
        }
    )
