"""Delete a Workflow's finished runs beyond `spec.history` or past `spec.ttlAfterFinished`."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

from pydantic import ValidationError

from kubestep.api.run import WorkflowRun
from kubestep.api.workflow import Workflow, WorkflowStatus
from kubestep.controller.context import Controller
from kubestep.controller.kube import RUNS, NotFound
from kubestep.engine.history import Finished, collect, over_limits

log = logging.getLogger(__name__)


async def collect_runs(ctl: Controller, workflow: Workflow, status: WorkflowStatus) -> datetime | None:
    """Delete the runs to collect; when to look again (the next run's time to live), if ever.

    Runs are listed only when the counts in ``status`` say some may be due, so a workflow within its
    limits costs no API call.
    """
    if not over_limits(workflow.spec, status.succeeded, status.failed):
        return None
    namespace = workflow.metadata.namespace or ""
    finished: list[Finished] = []
    for obj in await ctl.kube.list_objects(RUNS, namespace):
        if (obj.get("spec") or {}).get("workflowRef", {}).get("name") != workflow.metadata.name:
            continue
        try:
            run = WorkflowRun.model_validate(obj)
        except ValidationError:
            continue
        if (
            run.status.phase.finished
            and run.status.finished_at is not None
            and run.status.announced is not False
        ):
            # A run still owing its end's announcement is kept until it has made it.
            finished.append(
                Finished(
                    run.metadata.name,
                    run.status.phase,
                    run.status.finished_at,
                    run.metadata.creation_timestamp,
                )
            )
    plan = collect(workflow.spec, finished, ctl.clock())
    for name in plan.delete:
        with contextlib.suppress(NotFound):
            await ctl.kube.delete_object(RUNS, namespace, name)
            log.info(
                "%s/%s: deleted finished run %s (spec.history, spec.ttlAfterFinished)",
                namespace,
                workflow.metadata.name,
                name,
            )
    return plan.next
