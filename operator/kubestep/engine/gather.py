"""Debounce and batch: which run an event joins, and when a run holding events is released. Pure.

Under `spec.debounce` or `spec.batch` an event does not start a run of its own: it joins the open run of
its key (the run's `spec.gather`), or opens the next one. Every decision is read from the runs, so the
operator decides the same after a restart, and with several workers the API server's resourceVersion
lets only one writer through:

- debounce: the run keeps the newest event in `spec.event`; an event that arrives while the run is open
  replaces it (the replaced one is *superseded*); the run is released once no event arrived for `period`,
  or `timeout` after its first event;
- batch: the run keeps every event in `spec.gather.events`, oldest first (the first is also
  `spec.event`); it is released when it has `maxSize` of them (by the write that adds the last), or
  `timeout` after its first.

A released run (`open: false`) waits for admission like any other run: `spec.concurrency` and
`spec.throttle` still apply. Times are when the operator took each event in (normally within moments of
its creation): a backlog found after an outage is taken in as one burst.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from kubestep.api.durations import parse_duration
from kubestep.api.flow import QueueReason
from kubestep.api.run import GatherKind, RunEvent, RunGather
from kubestep.api.workflow import Batch, Debounce, WorkflowSpec
from kubestep.engine.admission import Verdict, key_value

_EPOCH = datetime.fromtimestamp(0, UTC)
#: The longest key value shown in a waiting run's status.
_KEY_CHARS = 63

Policy = Debounce | Batch


def policy_of(spec: WorkflowSpec) -> Policy | None:
    """The workflow's way of holding events, if any."""
    return spec.debounce if spec.debounce is not None else spec.batch


def kind_of(policy: Policy) -> GatherKind:
    """The kind of run ``policy`` gathers."""
    return GatherKind.DEBOUNCE if isinstance(policy, Debounce) else GatherKind.BATCH


def key_of(policy: Policy, event: dict[str, Any]) -> str:
    """The value of the policy's key for ``event`` ('' without a key, or when it fails to evaluate)."""
    return key_value(policy.key, event)


def key_label(key: str) -> str:
    """A label value naming ``key`` (keys may hold any characters): its runs are listed by it."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def run_seed(key: str, generation: int) -> str:
    """What the name of the ``generation``-th run of ``key`` derives from: every event of the key maps to
    the same name, so whichever is handled first creates the run and the API server refuses the others."""
    return f"gather:{key}:{generation}"


@dataclass(frozen=True)
class Held:
    """A run of the workflow that holds (or held) events, as the gatherer reads it."""

    name: str
    gather: RunGather
    event: RunEvent
    """Its `spec.event`."""
    finished: bool = False


class JoinAction(StrEnum):
    """What an event does."""

    CREATE = "Create"
    """Open a new run (generation `generation`) with the event."""
    ADD = "Add"
    """Batch: append the event to the open run `run`."""
    REPLACE = "Replace"
    """Debounce: the event replaces the one the open run `run` holds (`replaced` names it)."""
    SUPERSEDED = "Superseded"
    """Debounce: a newer event already holds run `run`; this one starts nothing."""
    ALREADY = "Already"
    """The event is already in run `run` (it was handled before a crash or a conflict)."""


@dataclass(frozen=True)
class Join:
    """Where an event goes, and the run's `spec.gather` (and `spec.event`) after it."""

    action: JoinAction
    run: str = ""
    generation: int = 0
    gather: RunGather | None = None
    event: RunEvent | None = None
    """The run's new `spec.event` (CREATE, REPLACE, and ADD when the event sorts first in its batch)."""
    replaced: str | None = None
    """REPLACE (and ALREADY, for the newest event of a debounced run): the Event (its name) that the event
    supersedes; SUPERSEDED: the newer one."""


def _contains(run: Held, source: str | None) -> bool:
    return source is not None and (
        run.event.source == source or any(e.source == source for e in run.gather.events)
    )


def join(policy: Policy, key: str, runs: Iterable[Held], event: RunEvent, arrived: datetime) -> Join:
    """Where ``event`` (of key ``key``, taken in at ``arrived``) goes, given the runs of that key."""
    mine = [r for r in runs if r.gather.key == key]
    for run in mine:
        if _contains(run, event.source):
            # Still the newest: the one it replaced may not have been told yet (a crash in between).
            newest_held = run.event.source == event.source and run.gather.kind is GatherKind.DEBOUNCE
            return Join(
                JoinAction.ALREADY, run=run.name, replaced=run.gather.replaced if newest_held else None
            )
    newest = max(mine, key=lambda r: r.gather.generation, default=None)
    if newest is None:
        return _create(policy, key, 0, event, arrived)
    gather = newest.gather
    # A run held the other way (the workflow switched between debounce and batch) takes nothing more.
    is_open = gather.open and not newest.finished and gather.kind is kind_of(policy)
    if isinstance(policy, Debounce):
        # Out of order (processed after a newer one): the newer event already stands for it.
        if arrived < gather.last_at and gather.kind is GatherKind.DEBOUNCE:
            return Join(JoinAction.SUPERSEDED, run=newest.name, replaced=newest.event.source)
        if not is_open:
            return _create(policy, key, gather.generation + 1, event, arrived)
        updated = gather.model_copy(
            update={"last_at": arrived, "count": gather.count + 1, "replaced": newest.event.source}
        )
        return Join(JoinAction.REPLACE, newest.name, gather.generation, updated, event, newest.event.source)
    if not is_open or len(gather.events) >= policy.max_size:
        return _create(policy, key, gather.generation + 1, event, arrived)
    events = sorted([*gather.events, event], key=_order)
    updated = gather.model_copy(
        update={
            "events": events,
            "count": gather.count + 1,
            "last_at": max(gather.last_at, arrived),
            "open": len(events) < policy.max_size,
        }
    )
    first = events[0] if not gather.events or events[0] is not gather.events[0] else None
    return Join(JoinAction.ADD, newest.name, gather.generation, updated, first)


def _order(event: RunEvent) -> datetime:
    """A batch's order: by the events' time (`ts`: their Event's creation, in whole seconds, unless they
    set one); events of the same time in the order they were taken in (the sort is stable)."""
    return event.ts or _EPOCH


def _create(policy: Policy, key: str, generation: int, event: RunEvent, arrived: datetime) -> Join:
    batch = isinstance(policy, Batch)
    gather = RunGather(
        kind=kind_of(policy),
        key=key,
        generation=generation,
        open=not (isinstance(policy, Batch) and policy.max_size == 1),
        first_at=arrived,
        last_at=arrived,
        events=[event] if batch else [],
    )
    return Join(JoinAction.CREATE, generation=generation, gather=gather, event=event)


def release_at(policy: Policy, gather: RunGather) -> datetime:
    """When a run holding events is released, unless (batch) it fills up first."""
    if isinstance(policy, Batch):
        return gather.first_at + timedelta(seconds=parse_duration(policy.timeout))
    at = gather.last_at + timedelta(seconds=parse_duration(policy.period))
    if policy.timeout is not None:
        at = min(at, gather.first_at + timedelta(seconds=parse_duration(policy.timeout)))
    return at


def due(policy: Policy, gather: RunGather, now: datetime) -> bool:
    """Whether an open run is released now."""
    full = isinstance(policy, Batch) and len(gather.events) >= policy.max_size
    return full or now >= release_at(policy, gather)


def _shown(value: str) -> str:
    return value if len(value) <= _KEY_CHARS else value[: _KEY_CHARS - 3] + "..."


def waiting(policy: Policy, gather: RunGather) -> Verdict:
    """What an open run says while it waits (its `Admitted` condition and `waitingFor`)."""
    reason = QueueReason.DEBOUNCING if isinstance(policy, Debounce) else QueueReason.BATCHING
    short = reason.value
    where = ""
    if policy.key is not None:
        short += f" {policy.key}={_shown(gather.key)}"
        where = f" for key {policy.key} = {_shown(gather.key)!r}"
    at = release_at(policy, gather).isoformat().replace("+00:00", "Z")
    if isinstance(policy, Debounce):
        bound = f", or {policy.timeout} after its first event" if policy.timeout else ""
        message = (
            f"holding the newest of {gather.count} event(s){where} under spec.debounce: the run starts once "
            f"no event arrived for {policy.period}{bound} (at {at} unless another arrives)"
        )
    else:
        message = (
            f"holding {len(gather.events)} of up to {policy.max_size} event(s){where} under spec.batch: the "
            f"run starts when it has {policy.max_size}, or at {at} ({policy.timeout} after its first event)"
        )
    return Verdict(reason=reason, waiting_for=short, message=message)


def next_release(policies_and_gathers: Iterable[tuple[Policy, RunGather]]) -> datetime | None:
    """The earliest time one of these open runs is released."""
    return min((release_at(p, g) for p, g in policies_and_gathers), default=None)
