"""Start gates: whether an event that matches a workflow's trigger starts a run at all. Pure: no I/O.

`spec.rateLimit` and `spec.singleton` are decided when an event arrives, from the workflow's runs as they
are (the objects, never memory), so that a restarted operator and `kubestep run` decide alike:

- `rateLimit {limit, period, key?}`: the runs of the workflow started by events and created within the
  last `period` (a sliding window) with the event's key value are counted; at `limit`, the event starts
  nothing. Creation times are whole seconds, so a run counts until a second after its stamp plus the
  period: the gate errs on the side of starting less, never more.
- `singleton {key?, mode}`: a run not finished (and not being cancelled) with the event's key value is
  active. `Skip`: the event starts nothing. `Cancel`: every active run of the key is cancelled and the
  event's run is started; admission (`engine.admission`, through the slot `spec.singleton` implies) keeps
  it `Queued` until the cancelled runs have ended.

An event whose run exists already (a pass cut short by a crash) or that repeats the `spec.id` of a run
passes through untouched, so that what starts it says so: it is not counted against itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from kubestep.api.durations import parse_duration
from kubestep.api.run import RunEvent, RunPhase, WorkflowRun
from kubestep.api.workflow import SingletonMode, WorkflowSpec
from kubestep.engine.admission import key_value

#: A creation time is kept to the second: a run may be this much younger than its stamp says.
STAMP_RESOLUTION = timedelta(seconds=1)
_EPOCH = datetime.fromtimestamp(0, UTC)
#: The longest key value quoted in a message.
_KEY_CHARS = 63


class Outcome(StrEnum):
    """What a gate says of an event (the `Processed` reason when it starts nothing)."""

    START = "Start"
    RATE_LIMITED = "RateLimited"
    SINGLETON_SKIPPED = "SingletonSkipped"


@dataclass(frozen=True)
class Seen:
    """A run of the workflow as the gates see it."""

    name: str
    created: datetime
    """Its creation time (whole seconds in a cluster)."""
    event: dict[str, Any]
    """Its trigger as CEL sees it (`event`)."""
    finished: bool = False
    cancelling: bool = False
    """Its cancellation was asked for (`spec.cancel`) and it has not ended yet."""
    by_event: bool = True
    """Started by an event: not a rerun, an invoked child, or a failure handler. Only these are counted
    by `rateLimit` (the others are not events arriving)."""
    keys: Mapping[str, str] | None = None
    """Key values computed already, by expression (the run's `status.admission.keys`)."""


@dataclass(frozen=True)
class Gate:
    """The verdict on one event for one workflow."""

    outcome: Outcome = Outcome.START
    message: str = ""
    """Why it starts nothing, or why runs are cancelled for it, in a sentence."""
    cancel: tuple[str, ...] = ()
    """Runs to cancel before its run is created (`singleton` mode `Cancel`)."""
    cancel_reason: str = ""
    """What those runs' `spec.cancelReason` (and so their `status.error`) says."""

    @property
    def starts(self) -> bool:
        """Whether the event goes on to start its run."""
        return self.outcome is Outcome.START


def seen(run: WorkflowRun, workflow_function: str | None = None) -> Seen:
    """What the gates read of a run. ``workflow_function``: the workflow's function, which tells a failure
    handler's run (another function, same workflow) from the workflow's own."""
    spec = run.spec
    admission = run.status.admission
    return Seen(
        name=run.metadata.name,
        created=run.metadata.creation_timestamp or run.status.started_at or _EPOCH,
        event=spec.event.as_payload(),
        finished=run.status.phase.finished,
        cancelling=spec.cancel,
        by_event=spec.parent is None
        and spec.rerun is None
        and (workflow_function is None or spec.workflow.function == workflow_function),
        keys=admission.keys if admission is not None else None,
    )


def seen_of(obj: Mapping[str, Any], workflow_function: str | None = None) -> Seen:
    """What the gates read of a run as the API returns it (not validated whole: only these fields)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    created = meta.get("creationTimestamp")
    function = (spec.get("workflow") or {}).get("function")
    return Seen(
        name=str(meta.get("name", "")),
        created=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else _EPOCH,
        event=RunEvent.model_validate(spec.get("event") or {}).as_payload(),
        finished=RunPhase(status.get("phase") or RunPhase.PENDING).finished,
        cancelling=bool(spec.get("cancel")),
        by_event=spec.get("parent") is None
        and spec.get("rerun") is None
        and (workflow_function is None or function == workflow_function),
        keys=(status.get("admission") or {}).get("keys"),
    )


def gated(spec: WorkflowSpec) -> bool:
    """Whether events of ``spec`` pass a gate before they start a run."""
    return spec.rate_limit is not None or spec.singleton is not None


def gate(
    workflow: str, spec: WorkflowSpec, event: dict[str, Any], source: str, runs: Iterable[Seen], now: datetime
) -> Gate:
    """Whether ``event`` (the Event object ``source``, as CEL sees it) starts a run of ``workflow`` now,
    given every run of the workflow.

    The rate limit is checked first: an event it drops cancels nothing.
    """
    runs = list(runs)
    if any(_same_event(r.event, event) for r in runs):
        return Gate()  # its own run (a pass cut short) or a duplicate `spec.id`: the start says which
    limit = spec.rate_limit
    if limit is not None:
        key = key_value(limit.key, event)
        period = timedelta(seconds=parse_duration(limit.period))
        since = now - period - STAMP_RESOLUTION
        recent = sorted(
            (r for r in runs if r.by_event and r.created > since and _key(limit.key, r) == key),
            key=lambda r: (r.created, r.name),
        )
        if len(recent) >= limit.limit:
            message = (
                f"rate limited: spec.rateLimit of workflow {workflow} allows {limit.limit} run(s) per "
                f"{limit.period}{_for_key(limit.key, key)}, and {len(recent)} started in the last "
                f"{limit.period} (the latest: {recent[-1].name}); the event started nothing"
            )
            return Gate(Outcome.RATE_LIMITED, message)
    single = spec.singleton
    if single is None:
        return Gate()
    key = key_value(single.key, event)
    active = sorted(
        (r for r in runs if not r.finished and not r.cancelling and _key(single.key, r) == key),
        key=lambda r: (r.created, r.name),
    )
    if not active:
        return Gate()
    active_names = [r.name for r in active]
    names = ", ".join(active_names)
    names = f"run {names} is" if len(active) == 1 else f"runs {names} are"
    if single.mode is SingletonMode.SKIP:
        message = (
            f"skipped: spec.singleton of workflow {workflow} allows one active run"
            f"{_for_key(single.key, key)}, and {names} active; the event started nothing"
        )
        return Gate(Outcome.SINGLETON_SKIPPED, message)
    reason = (
        f"cancelled by Event {source} ({event.get('name')!r}), which replaced the run under spec.singleton "
        f"(mode Cancel){_for_key(single.key, key)}"
    )
    return Gate(
        message=f"replaced: spec.singleton of workflow {workflow} (mode Cancel) cancelled the active "
        + ", ".join(active_names),
        cancel=tuple(r.name for r in active),
        cancel_reason=reason,
    )


def _same_event(run_event: dict[str, Any], event: dict[str, Any]) -> bool:
    # Both carry an id: the Event's `spec.id`, else its uid, so only the same Event or a repeated
    # `spec.id` matches.
    return bool(event.get("id")) and (run_event.get("name"), run_event.get("id")) == (
        event.get("name"),
        event.get("id"),
    )


def _key(expression: str | None, run: Seen) -> str:
    if expression is not None and run.keys and expression in run.keys:
        return run.keys[expression]
    return key_value(expression, run.event)


def _for_key(expression: str | None, value: str) -> str:
    if expression is None:
        return ""
    shown = value if len(value) <= _KEY_CHARS else value[: _KEY_CHARS - 3] + "..."
    return f" for key {expression} = {shown!r}"
