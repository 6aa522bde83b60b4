"""Which reconciler handles a key, and what an API error becomes: a failed result the queue retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable

from kubestep.controller.admission import reconcile_admission
from kubestep.controller.context import Controller, Key
from kubestep.controller.events import reconcile_event
from kubestep.controller.kube import KubeError, NotLeading, Rejected, Unavailable
from kubestep.controller.metrics import METRICS
from kubestep.controller.queue import Result
from kubestep.controller.runs import reconcile_run
from kubestep.controller.workflows import reconcile_workflow

log = logging.getLogger(__name__)

Reconciler = Callable[[Controller, Key], Awaitable[Result]]

#: The reconciler of each kind of key.
RECONCILERS: dict[str, Reconciler] = {
    "run": reconcile_run,
    "event": reconcile_event,
    "workflow": reconcile_workflow,
    "admission": reconcile_admission,
}


async def reconcile(ctl: Controller, key: Hashable) -> Result:
    """One pass over ``key``; an API error ends it early as a failed :class:`Result`.

    Anything else raised is a bug: the queue logs it with its traceback and retries with backoff too.
    """
    assert isinstance(key, Key)
    began = time.monotonic()
    result: Result | None = None
    try:
        result = await _reconcile(ctl, key)
        return result
    finally:
        # An exception (a bug) counts as an error too; the queue logs it and retries.
        METRICS.reconciled(key.kind, time.monotonic() - began, result is None or result.error is not None)


async def _reconcile(ctl: Controller, key: Key) -> Result:
    try:
        return await RECONCILERS[key.kind](ctl, key)
    except NotLeading:
        # Leadership just lapsed and the workers are being stopped: nothing more is written. Queued again
        # in case this process keeps leading after all; a new leader queues every key anyway.
        log.info("%s: left unfinished, this operator stopped leading", key)
        return Result.again()
    except KubeError as exc:
        verb = "was rejected" if isinstance(exc, Rejected) else "failed"
        return Result.failed(f"an API call {verb} ({exc})", transient=isinstance(exc, Unavailable))
