"""Carry out the collection verdicts of :mod:`kubestep.engine.gc`: a finished run's step Jobs, and Events
past their dedupe window that nothing refers to any more.

What is there comes from the watch indices, so a run or an Event with nothing to collect costs no API call;
a run's Jobs go in one request.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

from pydantic import ValidationError

from kubestep.api.event import Event
from kubestep.api.run import WorkflowRun, WorkflowRunStatus
from kubestep.controller import builders
from kubestep.controller.context import Controller
from kubestep.controller.kube import EVENTS, NotFound
from kubestep.controller.queue import Result
from kubestep.engine.gc import collect_event, collect_jobs

log = logging.getLogger(__name__)

#: How long the Job watch may lag a deletion of a run's Jobs before they are asked for again.
JOBS_WATCH_LAG = timedelta(seconds=30)


async def collect_run_jobs(ctl: Controller, run: WorkflowRun, status: WorkflowRunStatus) -> list[datetime]:
    """Delete the step Jobs of ``run`` (its status now ``status``) if they are due; when to look again."""
    if not status.phase.finished:
        return []
    namespace = run.metadata.namespace or ""
    key = (namespace, run.metadata.name)
    label = builders.execution_labels(run)[builders.LABEL_RUN]
    left = bool(ctl.indices.run_jobs(namespace, label))
    now = ctl.clock()
    if not left:
        ctl.jobs_deleted.pop(key, None)
        return []
    asked = ctl.jobs_deleted.get(key)
    if asked is not None and now < asked + JOBS_WATCH_LAG:
        return []  # deleted: the watch has not told of every Job yet (each one it tells of brings a pass)
    verdict = collect_jobs(run.model_copy(update={"status": status}), left, now)
    if not verdict.delete:
        return [verdict.at] if verdict.at is not None else []
    selector = f"{builders.LABEL_MANAGED}={builders.MANAGER},{builders.LABEL_RUN}={label}"
    await ctl.kube.delete_jobs(namespace, selector)
    log.info("%s/%s: deleted its step Jobs: %s", namespace, run.metadata.name, verdict.why)
    # A run deleted meanwhile never comes back to clear its entry: old ones go here.
    for stale in [k for k, when in ctl.jobs_deleted.items() if when + JOBS_WATCH_LAG < now]:
        del ctl.jobs_deleted[stale]
    ctl.jobs_deleted[key] = now
    return []


async def collect_handled_event(ctl: Controller, event: Event) -> Result:
    """Delete ``event`` if it is past its dedupe window and no unfinished run refers to it; else the time
    to look again."""
    namespace = event.metadata.namespace or ""
    names = {ref.run for ref in event.status.started}
    names.update(ctl.indices.waiting_runs(namespace, event.spec.name))
    names.update(ctl.indices.cancellable_runs(namespace, event.spec.name))
    names.update(run for _, run in ctl.indices.resumed_by(namespace, event.metadata.name))
    referrers: list[WorkflowRun] = []
    for name in sorted(names):
        # The watch cache keeps unfinished runs only: a run missing from it is finished or gone.
        obj = ctl.indices.run(namespace, name)
        if obj is None:
            continue
        with contextlib.suppress(ValidationError):
            referrers.append(WorkflowRun.model_validate(obj))
    # Only Events sharing its id can hold it back (none without an id).
    same_name = ctl.indices.events_named(namespace, event.spec.name, event.spec.id) if event.spec.id else []
    verdict = collect_event(event, same_name, referrers, ctl.dedupe_window, ctl.clock())
    if not verdict.delete:
        return Result.requeue_at(verdict.at)
    with contextlib.suppress(NotFound):
        await ctl.kube.delete_object(EVENTS, namespace, event.metadata.name)
        log.debug("%s/%s: deleted the Event: %s", namespace, event.metadata.name, verdict.why)
    return Result.done()
