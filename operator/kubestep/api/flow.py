"""Flow control across the runs of a workflow: how much of it may run at once, and what a queued run shows.

The spec side (`Concurrency`) is declared on the Workflow; the status side (`RunAdmission`) is written into
each run by the operator, so that a queued run, the slots it holds and why it waits live in the objects and
survive operator restarts.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from kubestep.api.base import Model, SpecModel

#: The most entries `spec.concurrency` may have.
MAX_CONCURRENCY_ENTRIES = 2
#: The highest `limit` of a concurrency entry.
MAX_CONCURRENCY_LIMIT = 10000


class ConcurrencyScope(StrEnum):
    """What a concurrency entry counts."""

    STEPS = "Steps"
    RUNS = "Runs"


class Concurrency(SpecModel):
    """A cap on how much of the workflow runs at once, overall or per key."""

    limit: int = Field(ge=1, le=MAX_CONCURRENCY_LIMIT)
    """How many may run at once (per value of `key`, when set). Work over the limit waits in phase `Queued`,
    oldest first, and while several keys wait, freed slots go to them in turn."""
    key: str | None = Field(default=None, min_length=1, max_length=1024)
    """Optional CEL expression over `event` (the run's trigger) whose value gives each its own limit, for
    example `event.data.tenant` or `event.user.id`. A run whose key fails to evaluate counts under the
    empty key."""
    scope: ConcurrencyScope = ConcurrencyScope.STEPS
    """`Steps` (default): caps step attempts executing at once (their pods alive); a sleeping or waiting run
    holds no slot. `Runs`: caps runs that have started and not finished, sleeping and waiting included, so
    that "one run per customer at a time" can be said."""


#: CEL rule on the list: each (scope, key) pair once.
UNIQUE_CONCURRENCY: dict[str, Any] = {
    "rule": "self.all(c, self.exists_one(d, d.scope == c.scope "
    "&& (has(d.key) ? d.key : '') == (has(c.key) ? c.key : '')))",
    "message": "concurrency lists the same scope and key twice; keep one entry per scope and key "
    "(the smaller limit is the one that holds)",
}


class QueueReason(StrEnum):
    """Why a run waits in phase `Queued` (the reason of its `Admitted` condition)."""

    CONCURRENCY_LIMITED = "ConcurrencyLimited"
    THROTTLED = "Throttled"
    WORKFLOW_PAUSED = "WorkflowPaused"
    DEBOUNCING = "Debouncing"
    BATCHING = "Batching"
    SINGLETON_ACTIVE = "SingletonActive"


#: The condition a queued run carries: False while it waits, True once admitted.
ADMITTED = "Admitted"


class RunAdmission(Model):
    """The run's place under the workflow's flow control (`spec.concurrency`), written by the operator."""

    admitted_at: datetime | None = None
    """When the run was admitted under the entries of scope `Runs`; from then until it ends, it holds a
    slot of each."""
    tickets: int = Field(default=0, ge=0)
    """Step attempts granted under the entries of scope `Steps` and not started yet."""
    wants: int = Field(default=0, ge=0)
    """Step attempts due to start that wait for a slot."""
    keys: dict[str, str] = Field(default_factory=dict)
    """The run's value of each concurrency `key` expression, by expression: computed once, as the event
    never changes."""
    waiting_for: str = ""
    """While the run waits: the limit and its key value, e.g. `ConcurrencyLimited tenant=acme`; empty once
    admitted."""
    paused: bool = False
    """The run's workflow is paused (`spec.paused`): no new step of the run starts until it is resumed."""
