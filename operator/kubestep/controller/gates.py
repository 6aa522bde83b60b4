"""Carry out the start gates (`spec.rateLimit`, `spec.singleton`) of one event for one workflow.

The decision is `kubestep.engine.gates.gate`, from the workflow's runs as the API server has them (a list,
not the watch cache: a run this process just created must be counted). Workers handle events at the same
time, so the decision and the start it allows are made under a lock per workflow: with one operator,
no two events of a workflow are decided from the same list, and a limit is never exceeded. The state is
the runs themselves, so a restarted operator decides from where the last one stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kubestep.api.event import Event
from kubestep.api.workflow import Workflow
from kubestep.controller import builders, cache
from kubestep.controller.context import Controller
from kubestep.controller.kube import RUNS, NotFound
from kubestep.engine import gates
from kubestep.engine.dedupe import earlier_start

log = logging.getLogger(__name__)


@asynccontextmanager
async def gated(
    ctl: Controller, workflow: Workflow, event: Event, payload: dict[str, Any]
) -> AsyncIterator[gates.Gate]:
    """The gate's verdict on ``event`` (``payload`` as CEL sees it) for ``workflow``; runs it replaces are
    cancelled before it is yielded. The run it allows must be created inside the block."""
    namespace = workflow.metadata.namespace or ""
    wf = workflow.metadata.name
    if not gates.gated(workflow.spec) or _repeats_an_id(ctl, event, wf):
        yield gates.Gate()  # a duplicate is told so by the start, whether its run still exists or not
        return
    lock = ctl.gate_locks.setdefault((namespace, wf), asyncio.Lock())
    async with lock:
        runs = [
            gates.seen_of(obj, workflow.spec.function)
            for obj in await ctl.kube.list_runs(namespace, builders.workflow_label(wf))
            # A longer name cut to the same label is another workflow's run.
            if (obj.get("spec") or {}).get("workflowRef", {}).get("name") == wf
        ]
        verdict = gates.gate(wf, workflow.spec, payload, event.metadata.name, runs, ctl.clock())
        for name in verdict.cancel:
            patch = {"spec": {"cancel": True, "cancelReason": verdict.cancel_reason}}
            try:
                cache.saw_run(ctl, await ctl.kube.merge_patch(RUNS, namespace, name, patch), written=True)
            except NotFound:
                continue  # gone meanwhile: nothing left to replace
            log.info("run %s/%s cancelled: %s", namespace, name, verdict.cancel_reason)
        yield verdict


def _repeats_an_id(ctl: Controller, event: Event, workflow: str) -> bool:
    if not event.spec.id:
        return False
    others = ctl.indices.events_named(event.metadata.namespace or "", event.spec.name, event.spec.id)
    return earlier_start(event, workflow, others, ctl.dedupe_window) is not None
