"""Admission: which queued work of a workflow may start now. Pure: no I/O, the time is given.

A workflow's flow control (`spec.concurrency`, `spec.throttle`, `spec.priority`) is decided here from
what its runs record, never from memory, so that the operator (one pass per workflow at a time) and
`kubestep run` apply the same rules and a restarted operator carries on where the last one stopped.

How slots are held, all read from the runs' statuses:

- scope `Runs`: a run holds a slot from its admission (`status.admission.admittedAt`, or its start for a
  run started before the workflow had the entry) until it finishes;
- scope `Steps`: a run holds one slot per execution in flight (`status.active`) plus one per *ticket*
  (`status.admission.tickets`): a step start granted by a pass of admission and not used yet. The run's
  engine turns a ticket into an execution (`take_ticket`) and gives back the tickets it did not use at the
  end of its pass, so an ended, vanished or never-started execution frees its slot when the engine drops it
  from `status.active`, and a finished or deleted run holds nothing.

Admission only ever *adds* slots, and every other change to a run only frees them: a pass that computed
its grants from a consistent read never grants past a limit, whatever happens meanwhile.

Fairness: the runs are grouped by the values of the keyed entries. Each free slot goes to the group that
holds the fewest slots (ties to the group whose oldest waiting work is oldest), and within a group to its
oldest work. With K groups waiting for N free slots, no group gets more than ⌈N/K⌉ of them.

`spec.throttle` paces run admissions per key (GCRA), replayed from the admission times the runs record;
`spec.priority` moves a run's place in every queue by its own number of seconds.

`spec.paused` is read from the workflow as it is now, not from a run's copy of the spec: admission writes it
into every unfinished run (`status.admission.paused`), and the run's engine starts nothing while it says so
(`take_ticket`, `must_wait`). So a run in flight finishes its running steps and waits before the next.

`spec.singleton` is one more entry of scope `Runs` (limit 1 per its key, see `entries`): a run that
replaced a cancelled one waits until that one has ended (the event side is `engine.gates`).
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubestep.api.base import Condition, set_condition
from kubestep.api.flow import ADMITTED, Concurrency, ConcurrencyScope, QueueReason, RunAdmission
from kubestep.api.run import RunEvent, RunPhase, WorkflowRun, WorkflowRunStatus
from kubestep.api.workflow import MAX_PRIORITY_SECONDS, Priority, Throttle, WorkflowSpec
from kubestep.engine.cel import CelError, evaluate

_EPOCH = datetime.fromtimestamp(0, UTC)
#: The prefix of a run's priority among its kept key values.
_PRIORITY = "priority: "
#: The longest key value shown in a queued run's status.
_KEY_CHARS = 63


# The engine's side: what one run may do on its own -------------------------------------------------------


def scopes(entries: Iterable[Concurrency]) -> tuple[bool, bool]:
    """Whether ``entries`` cap runs, and whether they cap steps."""
    listed = [e.scope for e in entries]
    return ConcurrencyScope.RUNS in listed, ConcurrencyScope.STEPS in listed


class SingletonSlot(Concurrency):
    """The cap `spec.singleton` implies: one run at a time per key (scope `Runs`), so that a run started in
    place of a cancelled one waits in phase `Queued` until that one has ended."""


def entries(spec: WorkflowSpec) -> list[Concurrency]:
    """The caps admission enforces for ``spec``: `spec.concurrency`, and the slot of `spec.singleton`."""
    if spec.singleton is None:
        return list(spec.concurrency)
    slot = SingletonSlot(limit=1, key=spec.singleton.key, scope=ConcurrencyScope.RUNS)
    return [*spec.concurrency, slot]


def must_wait(run: WorkflowRun) -> bool:
    """Whether a run not started yet waits for admission before anything of it starts."""
    runs_capped, steps_capped = scopes(entries(run.spec.workflow))
    # Created while its workflow was paused: admitted once it is resumed, not before.
    runs_capped = runs_capped or run.spec.workflow.throttle is not None or run.spec.workflow.paused
    admission = run.status.admission or RunAdmission()
    if admission.paused:
        return True
    if runs_capped and admission.admitted_at is None:
        return True
    # Holding events (`spec.debounce`, `spec.batch`): released, then admitted by a pass of admission.
    if run.spec.gather is not None and (run.spec.gather.open or admission.admitted_at is None):
        return True
    return steps_capped and admission.tickets == 0


def take_ticket(run: WorkflowRun, status: WorkflowRunStatus) -> bool:
    """Spend a ticket of ``status`` to start one execution; False when the run must wait for one (or for
    its paused workflow to be resumed)."""
    admission = status.admission
    if admission is not None and admission.paused:
        return False
    if not scopes(run.spec.workflow.concurrency)[1]:
        return True
    if admission is None or admission.tickets == 0:
        return False
    admission.tickets -= 1
    return True


def settle(run: WorkflowRun, status: WorkflowRunStatus, held: int) -> None:
    """End a pass of the run's engine: ``held`` starts wait for a ticket, unused tickets are given back."""
    if not run.spec.workflow.concurrency and status.admission is None:
        return
    admission = status.admission or RunAdmission()
    admission.wants = 0 if status.phase.finished else held
    admission.tickets = 0
    status.admission = admission


# The workflow's side: which waiting work starts now ---------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A run as admission sees it."""

    name: str
    queued_at: datetime
    """When its work joined the queue: the run's creation (oldest first)."""
    event: dict[str, Any]
    """The run's trigger as CEL sees it (`event`)."""
    finished: bool = False
    started: bool = False
    """It has started (its engine set `startedAt`)."""
    admitted: bool = False
    """It holds its slots of the `Runs` entries."""
    admitted_at: datetime | None = None
    """When it was admitted (or started): the throttle counts these."""
    active: int = 0
    """Executions in flight."""
    tickets: int = 0
    """Step starts granted and not used."""
    wants: int = 0
    """Step starts waiting for a ticket, as its engine last said."""
    keys: dict[str, str] = field(default_factory=dict)
    """Key values already computed, by expression."""
    paused: bool = False
    """It was told its workflow is paused (and has not been told it was resumed)."""


def candidate(run: WorkflowRun) -> Candidate:
    """What admission reads of a run."""
    status = run.status
    admission = status.admission or RunAdmission()
    return Candidate(
        name=run.metadata.name,
        queued_at=run.metadata.creation_timestamp or status.started_at or _EPOCH,
        event=run.spec.event.as_payload(),
        finished=status.phase.finished,
        started=status.started_at is not None,
        admitted=admission.admitted_at is not None or status.started_at is not None,
        admitted_at=admission.admitted_at or status.started_at,
        active=len(status.active),
        tickets=admission.tickets,
        wants=admission.wants,
        keys=admission.keys,
        paused=admission.paused,
    )


def candidate_of(obj: Mapping[str, Any]) -> Candidate:
    """What admission reads of a run, from the run as the API returns it: a pass reads every run of the
    workflow, and validating whole statuses would cost more than all of admission."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    admission = status.get("admission") or {}
    started = status.get("startedAt") is not None
    created = meta.get("creationTimestamp")
    return Candidate(
        name=str(meta.get("name", "")),
        queued_at=_time(created) or _EPOCH,
        event=RunEvent.model_validate((obj.get("spec") or {}).get("event") or {}).as_payload(),
        finished=RunPhase(status.get("phase") or RunPhase.PENDING).finished,
        started=started,
        admitted=admission.get("admittedAt") is not None or started,
        admitted_at=_time(admission.get("admittedAt") or status.get("startedAt")),
        active=len(status.get("active") or []),
        tickets=int(admission.get("tickets") or 0),
        wants=int(admission.get("wants") or 0),
        keys=dict(admission.get("keys") or {}),
        paused=bool(admission.get("paused")),
    )


def counted_phase(status: Mapping[str, Any]) -> str:
    """The phase a run (its status as the API returns it) counts in for admission: a run told its workflow
    is paused and not finished counts as `Queued`, since admission must tell it of the resume as it tells a
    queued run (the operator keeps these in an index, so that a workflow with nothing queued costs no list).
    """
    phase = str(status.get("phase") or RunPhase.PENDING.value)
    finished = phase in {p.value for p in RunPhase if p.finished}
    if (status.get("admission") or {}).get("paused") and not finished:
        return RunPhase.QUEUED.value
    return phase


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class Verdict:
    """What admission says of one run that wanted something."""

    admit: bool = False
    """Grant its slots of the `Runs` entries."""
    tickets: int = 0
    """Step starts granted now."""
    reason: str = ""
    """Why it still waits (a `QueueReason`); empty when it got all it wanted."""
    waiting_for: str = ""
    """The limit and its key value, short (the printer column)."""
    message: str = ""
    """The limit, its key value and the slots in use, in a sentence."""
    keys: dict[str, str] = field(default_factory=dict)
    """The run's key values, by expression, to keep."""
    paused: bool = False
    """Its workflow is paused: no new step of it starts, even one granted."""


@dataclass(frozen=True)
class Admission:
    """The verdicts of one pass, by run name: only runs that wanted something have one."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    at: datetime | None = None
    """When to decide again although no run changes: the next start a throttle allows."""


@dataclass
class _Work:
    run: Candidate
    keys: tuple[str, ...]
    """The run's key value under each entry ('' for an entry without key)."""
    group: tuple[str, ...]
    """Its fairness group: its key values under the keyed entries."""
    needs_admit: bool
    tickets: int
    granted_admit: bool = False
    granted_tickets: int = 0

    @property
    def waiting(self) -> bool:
        return (self.needs_admit and not self.granted_admit) or self.granted_tickets < self.tickets


def key_value(expression: str | None, event: dict[str, Any]) -> str:
    """The value of a concurrency key for ``event``: '' without a key, or when the key fails to evaluate."""
    if expression is None:
        return ""
    try:
        value = evaluate(expression, {"event": event})
    except CelError:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def priority_seconds(expression: str, event: dict[str, Any]) -> int:
    """How many seconds earlier a run is ordered: the expression's integer, clamped; 0 if it fails."""
    try:
        value = evaluate(expression, {"event": event})
    except CelError:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(-MAX_PRIORITY_SECONDS, min(MAX_PRIORITY_SECONDS, int(value)))


def admit(
    entries: Sequence[Concurrency],
    runs: Iterable[Candidate],
    now: datetime = _EPOCH,
    throttle: Throttle | None = None,
    paused: bool = False,
    priority: Priority | None = None,
) -> Admission:
    """Which waiting work of a workflow with ``entries`` (and ``throttle``) starts now, given all its
    ``runs`` and the time.

    ``paused``: nothing is admitted, every waiting run says the workflow is paused, and so does every run in
    flight (its steps running finish, no new one starts); once resumed, each run told so is told it is not.
    ``priority``: each run is ordered as if queued that many seconds earlier (see :func:`priority_seconds`).
    """
    steps_capped = scopes(entries)[1]
    entries = list(entries)
    pace = _Pace(throttle, now)
    keyed = [i for i, e in enumerate(entries) if e.key is not None]
    held: list[dict[str, int]] = [{} for _ in entries]
    share: dict[tuple[str, ...], int] = {}
    works: list[_Work] = []
    for run in runs:
        if priority is not None and not run.finished:
            # Kept beside the key values, under a name no key expression can clash with.
            shift = run.keys.get(_PRIORITY + priority.run)
            if shift is None or not shift.lstrip("-").isdigit():
                shift = str(priority_seconds(priority.run, run.event))
            run = replace(
                run,
                queued_at=run.queued_at - timedelta(seconds=int(shift)),
                keys={**run.keys, _PRIORITY + priority.run: shift},
            )
        throttle_key = pace.key(run)
        if run.admitted_at is not None:
            pace.started(throttle_key, run.admitted_at)
        if run.finished:
            continue
        keys = tuple(
            "" if e.key is None else run.keys[e.key] if e.key in run.keys else key_value(e.key, run.event)
            for e in entries
        )
        # Every run not started is admitted before it starts, capped or not (its own copy of the spec may
        # cap it where the workflow's no longer does); each of its step starts is granted the same way.
        admitted = run.admitted
        holding = 0
        for index, entry in enumerate(entries):
            if entry.scope is ConcurrencyScope.RUNS:
                count = 1 if admitted else 0
            else:
                count = run.active + run.tickets
            if count:
                held[index][keys[index]] = held[index].get(keys[index], 0) + count
                holding = max(holding, count)
        group = (*(keys[i] for i in keyed), throttle_key)
        share[group] = share.get(group, 0) + holding
        wants = run.wants if run.started or not steps_capped else max(run.wants, 1)
        tickets = max(0, wants - run.tickets)
        if not admitted or tickets or run.paused != paused:
            works.append(_Work(run, keys, group, not admitted, tickets))
    if not paused:
        _grant(entries, held, share, works, pace)
    verdicts = {}
    said: dict[tuple[tuple[str, ...], bool], Verdict] = {}  # why a group waits is the same for all its runs
    for work in works:
        why = (work.group, work.needs_admit and not work.granted_admit)
        if not work.waiting and not paused:
            verdict = Verdict(admit=work.granted_admit, tickets=work.granted_tickets)
        elif not work.waiting:  # in flight while paused: its next step waits
            verdict = Verdict(
                reason=QueueReason.WORKFLOW_PAUSED,
                waiting_for=QueueReason.WORKFLOW_PAUSED,
                message="the workflow is paused; the steps running finish, and the next one starts when it "
                "is resumed",
            )
        else:
            if why not in said:
                said[why] = _verdict(entries, held, work, paused, pace)
            verdict = replace(said[why], admit=work.granted_admit, tickets=work.granted_tickets)
        known = {e.key: k for e, k in zip(entries, work.keys, strict=True) if e.key is not None}
        if throttle is not None and throttle.key is not None:
            known[throttle.key] = work.group[-1]
        if priority is not None:
            known[_PRIORITY + priority.run] = work.run.keys[_PRIORITY + priority.run]
        verdicts[work.run.name] = replace(verdict, keys=known, paused=paused)
    blocked = {w.group[-1] for w in works if w.needs_admit and not w.granted_admit}
    return Admission(verdicts, at=None if paused else pace.next_start(blocked))


class _Pace:
    """A throttle's state per key, replayed from the admission times the runs record (GCRA: one start
    every `period / limit`, up to `burst` more at once after a quiet time)."""

    def __init__(self, throttle: Throttle | None, now: datetime) -> None:
        self.throttle = throttle
        self.now = now
        self.interval = timedelta(seconds=throttle.interval()) if throttle else timedelta(0)
        self.tolerance = self.interval * (throttle.burst if throttle else 0)
        self._starts: dict[str, list[datetime]] = {}
        self._due: dict[str, datetime] | None = None

    def key(self, run: Candidate) -> str:
        if self.throttle is None or self.throttle.key is None:
            return ""
        expression = self.throttle.key
        return run.keys[expression] if expression in run.keys else key_value(expression, run.event)

    def started(self, key: str, when: datetime) -> None:
        self._starts.setdefault(key, []).append(when)

    def _theoretical(self, key: str) -> datetime:
        if self._due is None:
            self._due = {}
            for k, starts in self._starts.items():
                due = _EPOCH
                for when in sorted(starts):
                    due = max(due, when) + self.interval
                self._due[k] = due
        return self._due.get(key, _EPOCH)

    def allows(self, key: str) -> bool:
        """Whether a run of ``key`` may start now."""
        return self.throttle is None or self.now >= self._theoretical(key) - self.tolerance

    def take(self, key: str) -> None:
        if self.throttle is not None:
            assert self._due is not None
            self._due[key] = max(self._theoretical(key), self.now) + self.interval

    def next_start(self, keys: Iterable[str]) -> datetime | None:
        if self.throttle is None:
            return None
        times = [self._theoretical(k) - self.tolerance for k in keys]
        return min((t for t in times if t > self.now), default=None)


def _grant(
    entries: list[Concurrency],
    held: list[dict[str, int]],
    share: dict[tuple[str, ...], int],
    works: list[_Work],
    pace: _Pace,
) -> None:
    """Hand out free slots one at a time: to the group holding fewest, within it to the oldest work."""
    runs_capped, steps_capped = scopes(entries)
    runs_capped = runs_capped or pace.throttle is not None
    groups: dict[tuple[str, ...], _Group] = {}
    for work in sorted(works, key=lambda w: (w.run.queued_at, w.run.name)):
        if work.needs_admit and not runs_capped:
            work.granted_admit = True  # no run limit: admitting holds nothing, so it needs no turn
        groups.setdefault(work.group, _Group(work.keys)).add(work)
    # Groups by rank; a group's rank changes only when it is granted a slot, and a limit that fills only
    # blocks groups, so each is checked again when it comes up and dropped once it cannot take a slot.
    ranked = [
        (share.get(key, 0), *_order(group.oldest()), key) for key, group in groups.items() if not group.empty
    ]
    heapq.heapify(ranked)
    while ranked:
        *_, key = heapq.heappop(ranked)
        group = groups[key]
        found = group.head(
            _room(entries, held, group.keys, ConcurrencyScope.RUNS) and pace.allows(key[-1]),
            _room(entries, held, group.keys, ConcurrencyScope.STEPS),
        )
        if found is None:
            continue  # grants only fill slots: it stays blocked for the rest of this pass
        work, scope = found
        for index, entry in enumerate(entries):
            if entry.scope is scope:
                held[index][work.keys[index]] = held[index].get(work.keys[index], 0) + 1
        group.grant(work, scope)
        if scope is ConcurrencyScope.RUNS:
            pace.take(key[-1])
        if scope is ConcurrencyScope.STEPS or not steps_capped:
            share[key] = share.get(key, 0) + 1
        if not group.empty:
            heapq.heappush(ranked, (share.get(key, 0), *_order(group.oldest()), key))


def _order(work: _Work) -> tuple[datetime, str]:
    return work.run.queued_at, work.run.name


class _Group:
    """The waiting work of one group: runs waiting for admission, and admitted runs waiting for tickets,
    each oldest first. All share the group's key values, so a limit blocks all of a kind at once."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.admits: deque[_Work] = deque()
        self.tickets: list[tuple[datetime, str, _Work]] = []

    def add(self, work: _Work) -> None:
        if work.needs_admit and not work.granted_admit:
            self.admits.append(work)
        elif work.tickets > work.granted_tickets:
            heapq.heappush(self.tickets, (*_order(work), work))

    @property
    def empty(self) -> bool:
        return not self.admits and not self.tickets

    def oldest(self) -> _Work:
        """Its oldest waiting work (the group is not empty)."""
        if self.admits and (not self.tickets or _order(self.admits[0]) < self.tickets[0][:2]):
            return self.admits[0]
        return self.tickets[0][2]

    def head(self, runs_room: bool, steps_room: bool) -> tuple[_Work, ConcurrencyScope] | None:
        """The oldest work that can take a slot now, and the scope of that slot."""
        admit = self.admits[0] if runs_room and self.admits else None
        ticket = self.tickets[0][2] if steps_room and self.tickets else None
        if admit is not None and (ticket is None or _order(admit) < _order(ticket)):
            return admit, ConcurrencyScope.RUNS
        return (ticket, ConcurrencyScope.STEPS) if ticket is not None else None

    def grant(self, work: _Work, scope: ConcurrencyScope) -> None:
        if scope is ConcurrencyScope.RUNS:
            self.admits.popleft()
            work.granted_admit = True
            self.add(work)  # its tickets may now be granted, in its turn
            return
        work.granted_tickets += 1
        if work.granted_tickets >= work.tickets:
            heapq.heappop(self.tickets)


def _room(
    entries: list[Concurrency], held: list[dict[str, int]], keys: tuple[str, ...], scope: ConcurrencyScope
) -> bool:
    return all(held[i].get(keys[i], 0) < e.limit for i, e in enumerate(entries) if e.scope is scope)


def _shown(value: str) -> str:
    return value if len(value) <= _KEY_CHARS else value[: _KEY_CHARS - 3] + "..."


def _verdict(
    entries: list[Concurrency], held: list[dict[str, int]], work: _Work, paused: bool, pace: _Pace
) -> Verdict:
    if not work.waiting:
        return Verdict(admit=work.granted_admit, tickets=work.granted_tickets)
    if paused:
        return Verdict(
            reason=QueueReason.WORKFLOW_PAUSED,
            waiting_for=QueueReason.WORKFLOW_PAUSED,
            message="the workflow is paused; the run starts when it is resumed",
        )
    scope = ConcurrencyScope.RUNS if work.needs_admit and not work.granted_admit else ConcurrencyScope.STEPS
    full = [i for i, e in enumerate(entries) if e.scope is scope and held[i].get(work.keys[i], 0) >= e.limit]
    if not full and pace.throttle is not None and scope is ConcurrencyScope.RUNS:
        throttle = pace.throttle
        short = QueueReason.THROTTLED.value
        where = ""
        if throttle.key is not None:
            short += f" {throttle.key}={_shown(work.group[-1])}"
            where = f" for key {throttle.key} = {_shown(work.group[-1])!r}"
        burst = f" (and {throttle.burst} more at once after a quiet time)" if throttle.burst else ""
        message = (
            f"waiting for its turn: spec.throttle starts {throttle.limit} run(s) per {throttle.period}"
            f"{where}, one every {throttle.interval():g}s{burst}"
        )
        return Verdict(reason=QueueReason.THROTTLED, waiting_for=short, message=message)
    full = full or [i for i, e in enumerate(entries) if e.scope is scope]
    if full and isinstance(entries[full[0]], SingletonSlot):
        return _singleton_verdict(entries[full[0]], work.keys[full[0]])
    if not full:  # waits on nothing this pass knows of: it is granted on a pass that sees the change
        return Verdict(
            reason=QueueReason.CONCURRENCY_LIMITED,
            waiting_for=QueueReason.CONCURRENCY_LIMITED.value,
            message="waiting for the workflow's flow control",
        )
    index = full[0]
    entry = entries[index]
    what = "runs" if scope is ConcurrencyScope.RUNS else "step attempts"
    used = held[index].get(work.keys[index], 0)
    if entry.key is None:
        short = QueueReason.CONCURRENCY_LIMITED.value
        where = ""
    else:
        shown = _shown(work.keys[index])
        short = f"{QueueReason.CONCURRENCY_LIMITED.value} {entry.key}={shown}"
        where = f" for key {entry.key} = {shown!r}"
    message = (
        f"waiting for a slot: spec.concurrency[{index}] allows {entry.limit} {what} at once{where}, "
        f"and {used} are in use"
    )
    return Verdict(
        admit=work.granted_admit,
        tickets=work.granted_tickets,
        reason=QueueReason.CONCURRENCY_LIMITED,
        waiting_for=short,
        message=message,
    )


def _singleton_verdict(entry: Concurrency, key: str) -> Verdict:
    short = QueueReason.SINGLETON_ACTIVE.value
    where = ""
    if entry.key is not None:
        short += f" {entry.key}={_shown(key)}"
        where = f" for key {entry.key} = {_shown(key)!r}"
    message = (
        f"waiting for the active run to end: spec.singleton allows one active run{where} (a run it "
        "replaced is being cancelled)"
    )
    return Verdict(reason=QueueReason.SINGLETON_ACTIVE, waiting_for=short, message=message)


def settled(status: Mapping[str, Any], verdict: Verdict) -> bool:
    """Whether a run's status (as the API returns it) already shows ``verdict``: no grant, the same wait
    and key values. Most waiting runs are so on every pass; they are neither parsed nor written."""
    if verdict.admit or verdict.tickets:
        return False
    admission = status.get("admission") or {}
    if bool(admission.get("paused")) != verdict.paused:
        return False
    if (
        admission.get("waitingFor", "") != verdict.waiting_for
        or (admission.get("keys") or {}) != verdict.keys
    ):
        return False
    condition = next((c for c in status.get("conditions") or [] if c.get("type") == ADMITTED), None)
    if condition is None:
        return False
    if verdict.reason:
        return (condition.get("status"), condition.get("reason"), condition.get("message")) == (
            "False",
            verdict.reason,
            verdict.message,
        )
    return bool(condition.get("status") == "True")


def apply(status: WorkflowRunStatus, verdict: Verdict, now: datetime) -> WorkflowRunStatus:
    """The run's status with ``verdict`` applied: slots granted, and its `Admitted` condition."""
    out = status.model_copy(deep=True)
    admission = out.admission or RunAdmission()
    if verdict.admit and admission.admitted_at is None:
        admission.admitted_at = now
    admission.tickets += verdict.tickets
    admission.waiting_for = verdict.waiting_for
    admission.keys = verdict.keys or admission.keys
    admission.paused = verdict.paused
    out.admission = admission
    if verdict.reason:
        condition = Condition(type=ADMITTED, status="False", reason=verdict.reason, message=verdict.message)
    else:
        condition = Condition(
            type=ADMITTED,
            status="True",
            reason="Admitted",
            message="the workflow's flow control admitted the run",
        )
    out.conditions = set_condition(out.conditions, condition, now)
    return out
