"""Drive runs to their end on one machine: the engine decides, this module carries the actions out."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubestep.api import names
from kubestep.api.base import ObjectMeta
from kubestep.api.event import completed_payload
from kubestep.api.run import (
    ErrorInfo,
    ParentRef,
    RunEvent,
    RunGather,
    RunPhase,
    WorkflowRef,
    WorkflowRun,
    WorkflowRunSpec,
)
from kubestep.api.workflow import Workflow
from kubestep.engine import admission, gates, gather
from kubestep.engine.actions import (
    AnnounceEnd,
    CancelChild,
    Note,
    PublishEvents,
    RequeueAt,
    StartChild,
    StartExecution,
    StopExecution,
)
from kubestep.engine.decide import decide
from kubestep.engine.gather import policy_of
from kubestep.engine.observations import ArrivedEvent, ChildResult, Observed, Outcome
from kubestep.engine.triggers import DEFAULT_DEDUPE_WINDOW, ID_GENERATIONS, duplicate, id_run_seed, match
from kubestep.local.clock import Clock
from kubestep.local.executors import Executor
from kubestep.local.store import Store
from kubestep.local.timeline import Timeline

#: How often a real-clock driver looks for events dropped in a run's inbox by another process.
INBOX_POLL_SECONDS = 0.5


class NoTriggerMatchError(LookupError):
    """The event starts none of the given workflows."""


@dataclass
class LocalRuns:
    """Runs driven by this process, in memory (mirrored to the store when there is one)."""

    runs: dict[str, WorkflowRun] = field(default_factory=dict)
    published: list[dict[str, Any]] = field(default_factory=list)


class Driver:
    """Runs the engine's decisions for a set of local runs until the ones asked for have finished."""

    def __init__(
        self,
        workflows: dict[str, Workflow],
        executor: Executor,
        clock: Clock,
        wake: threading.Event,
        store: Store | None = None,
        timeline: Timeline | None = None,
        source: dict[str, Any] | None = None,
        max_decisions: int | None = None,
    ) -> None:
        self.workflows = workflows
        self.executor = executor
        self.clock = clock
        self.wake = wake
        self.store = store
        self.timeline = timeline
        self.source = source
        """Where the workflows came from; saved with every run so ``--resume`` can reload them."""
        self.max_decisions = max_decisions
        """Give up after this many decisions (``kubestep.testing``: a workflow that never ends)."""
        self.state = LocalRuns()
        self._requeue: dict[str, datetime] = {}
        self._admission_due: dict[str, datetime] = {}
        """When a throttle next lets a run of each workflow start."""
        self._outcomes: dict[str, list[Outcome]] = defaultdict(list)
        self._inbox: dict[str, list[ArrivedEvent]] = defaultdict(list)
        self._unstartable: dict[str, ErrorInfo] = {}
        self.gated: list[tuple[str, gates.Gate]] = []
        """What the start gates said of each event they decided, by workflow."""
        self.standing_events: list[dict[str, Any]] = []
        """Events offered to every wait as if just published (``kubestep.testing``)."""

    # Starting runs ---------------------------------------------------------------------------------

    def start(self, event: RunEvent, workflow: str | None = None) -> list[str]:
        """Start a run of every workflow whose trigger matches ``event`` (or of ``workflow`` only)."""
        started = []
        errors = []
        for name, wf in self.workflows.items():
            if workflow is not None and name != workflow:
                continue
            verdict = match(wf.spec, event.as_payload())
            if verdict.matched:
                if not self._passes_gate(name, event):
                    continue
                if policy_of(wf.spec) is not None:
                    started.append(self._gather(name, event))
                else:
                    started.append(self.create_run(name, event, self._run_name(name, event)))
            elif verdict.error:
                errors.append(f"{name}: {verdict.error}")
        if not started and workflow is not None:
            detail = "; ".join(errors) or f"no trigger of workflow {workflow!r} matches event {event.name!r}"
            raise NoTriggerMatchError(detail)
        return started

    def _passes_gate(self, workflow: str, event: RunEvent) -> bool:
        """`spec.rateLimit` and `spec.singleton`, decided as the operator decides them, over the runs this
        process drives; a run an event replaces is cancelled here."""
        spec = self.workflows[workflow].spec
        if not gates.gated(spec):
            return True
        runs = [
            gates.seen(r, spec.function)
            for r in self.state.runs.values()
            if r.spec.workflow_ref.name == workflow
        ]
        now = self.clock.now()
        verdict = gates.gate(workflow, spec, event.as_payload(), event.source or "", runs, now)
        for name in verdict.cancel:
            run = self.state.runs[name]
            cancelled = run.spec.model_copy(update={"cancel": True, "cancel_reason": verdict.cancel_reason})
            self.state.runs[name] = run.model_copy(update={"spec": cancelled})
        if verdict.message and self.timeline is not None:
            reason = "RunsReplaced" if verdict.starts else verdict.outcome.value
            self.timeline.note(now, workflow, Note(reason, verdict.message, warning=not verdict.starts))
        self.gated.append((workflow, verdict))
        return verdict.starts

    def _run_name(self, workflow: str, event: RunEvent) -> str:
        """A new run's name; for an event with ``spec.id``, named as the operator names it, so that an event
        repeating an id within the dedupe window finds the run the first one started instead of a new one."""
        if not event.id:
            return names.run_name(workflow, uuid.uuid4().hex)
        now = self.clock.now()
        name = ""
        for generation in range(ID_GENERATIONS):
            name = names.run_name(workflow, id_run_seed(event.name, event.id, generation))
            existing = self.state.runs.get(name)
            if (
                existing is None
                and self.store is not None
                and (self.store.run_dir(name) / "run.json").exists()
            ):
                existing = self.store.load(name)
            if existing is None or duplicate(
                existing.metadata.creation_timestamp, now, DEFAULT_DEDUPE_WINDOW
            ):
                return name
        return name

    def _gather(self, workflow: str, event: RunEvent) -> str:
        """Put ``event`` into the open run of its key under `spec.debounce` or `spec.batch` (opening one),
        as the operator does; the run it went to (or, superseded, the run holding its successor)."""
        policy = policy_of(self.workflows[workflow].spec)
        assert policy is not None
        now = self.clock.now()
        event = event.completed(uuid.uuid4().hex, now)
        event = event.model_copy(update={"source": event.source or event.id})
        key = gather.key_of(policy, event.as_payload())
        held = [
            gather.Held(
                r.metadata.name, r.spec.gather, r.spec.event, r.status.phase.finished or r.spec.cancel
            )
            for r in self.state.runs.values()
            if r.spec.workflow_ref.name == workflow and r.spec.gather is not None
        ]
        joined = gather.join(policy, key, held, event, now)
        if joined.action is gather.JoinAction.CREATE:
            # Named afresh (not by key and generation): the state directory keeps runs of earlier commands.
            return self.create_run(
                workflow, event, names.run_name(workflow, uuid.uuid4().hex), gather=joined.gather
            )
        run = self.state.runs[joined.run]
        if joined.action in (gather.JoinAction.ADD, gather.JoinAction.REPLACE):
            update: dict[str, Any] = {"gather": joined.gather}
            if joined.event is not None:
                update["event"] = joined.event
            run = run.model_copy(update={"spec": run.spec.model_copy(update=update)})
            self.state.runs[joined.run] = run
            self._save(run)
        if self.timeline is not None and joined.replaced and joined.action is not gather.JoinAction.ADD:
            superseded = joined.replaced if joined.action is gather.JoinAction.REPLACE else event.source
            note = Note("Debounced", f"event {superseded} superseded by a newer event of its key")
            self.timeline.note(now, joined.run, note)
        return joined.run

    def create_run(
        self,
        workflow: str,
        event: RunEvent,
        name: str,
        parent: ParentRef | None = None,
        gather: RunGather | None = None,
    ) -> str:
        """Create a run of ``workflow`` (idempotent by ``name``, also across drivers)."""
        if name in self.state.runs:
            return name
        if self.store is not None and (self.store.run_dir(name) / "run.json").exists():
            self.adopt(self.store.load(name), recover=True)
            return name
        spec = self.workflows[workflow].spec
        # Every event has an id and a time, as in the cluster (where the Event's uid and creation time).
        event = event.completed(uuid.uuid4().hex, self.clock.now())
        run = WorkflowRun(
            # Its creation orders it in the queues of the workflow's flow control, as in the cluster.
            metadata=ObjectMeta(name=name, uid=uuid.uuid4().hex, creation_timestamp=self.clock.now()),
            spec=WorkflowRunSpec(
                workflow_ref=WorkflowRef(name=workflow),
                workflow=spec,
                event=event,
                parent=parent,
                gather=gather,
            ),
        )
        self.adopt(run)
        return name

    def adopt(self, run: WorkflowRun, recover: bool = False) -> None:
        """Drive an existing run; with ``recover``, follow the executions a previous driver left running."""
        self.state.runs[run.metadata.name] = run
        self._save(run)
        if self.store is not None and self.source is not None:
            self.store.save_source(run.metadata.name, self.source)
        if recover and run.status.active:
            self.executor.recover(run.metadata.name, [e.name for e in run.status.active])

    def deliver(self, payload: dict[str, Any], source: str = "", sent_by_step: bool = False) -> None:
        """An event arrived: offer it to every run, and start the workflows it triggers."""
        now = self.clock.now()
        payload = completed_payload(payload, uuid.uuid4().hex, now)
        if sent_by_step:
            # Sent by a step that has ended, so before anything this decision starts: a wait that begins
            # in the same instant (a virtual clock does not move) must not hear it.
            now -= timedelta(microseconds=1)
        for name in self.state.runs:
            if self.store is not None:
                self.store.deliver(name, payload, now, source)
            else:
                self._inbox[name].append(ArrivedEvent(payload, now, source))
        self.start(_run_event(payload, source))

    # The loop ------------------------------------------------------------------------------------------

    def drive(self, targets: list[str]) -> list[WorkflowRun]:
        """Advance all runs until every run in ``targets`` has finished, or waits only for its paused
        workflow (which no one resumes while this process runs: see :func:`held_by_pause`); return them."""
        decisions = 0
        while True:
            decisions += 1
            if self.max_decisions is not None and decisions > self.max_decisions:
                raise RuntimeError(
                    f"the run did not finish after {self.max_decisions} decisions; does the workflow loop "
                    "forever, or wait for something that never comes?"
                )
            for run, outcome in self.executor.finished():
                self._outcomes[run].append(outcome)
                if self.timeline is not None:
                    self.timeline.output(outcome.name, self.executor.log(run, outcome.name))
            changed = self._admit()
            for name in list(self.state.runs):
                changed |= self._step(name)
            # Finished, and its end published (`kubestep/run.failed`, ...) when it owes that.
            if all(_over(self.state.runs[t]) for t in targets):
                return [self.state.runs[t] for t in targets]
            if changed:
                continue
            ended = [self.state.runs[t] for t in targets]
            if any(held_by_pause(r) for r in ended) and all(_over(r) or held_by_pause(r) for r in ended):
                return ended
            self._sleep()

    def _admit(self) -> bool:
        """Grant the slots of the workflows' flow control, as the operator does; True if any was."""
        by_workflow: dict[str, list[WorkflowRun]] = defaultdict(list)
        now = self.clock.now()
        self._admission_due.clear()
        changed = self._release(now)
        for run in self.state.runs.values():
            held = run.spec.gather
            if held is not None and held.open and not run.status.phase.finished:
                continue  # holding events: released first (above), then admitted like any run
            wf_spec = run.spec.workflow
            flow = wf_spec.concurrency or wf_spec.throttle or wf_spec.paused or wf_spec.singleton
            loaded = self.workflows.get(run.spec.workflow_ref.name)
            paused = loaded is not None and loaded.spec.paused
            if flow or run.status.admission is not None or held is not None or paused:
                by_workflow[run.spec.workflow_ref.name].append(run)
        for workflow, runs in by_workflow.items():
            loaded = self.workflows.get(workflow)
            spec = loaded.spec if loaded is not None else runs[-1].spec.workflow
            candidates = [admission.candidate(r) for r in runs]
            decided = admission.admit(
                admission.entries(spec),
                candidates,
                now,
                spec.throttle,
                paused=loaded is not None and loaded.spec.paused,
                priority=spec.priority,
            )
            if decided.at is not None:
                self._admission_due[workflow] = decided.at
            for run in runs:
                verdict = decided.verdicts.get(run.metadata.name)
                if verdict is None:
                    continue
                status = admission.apply(run.status, verdict, now)
                if status != run.status:
                    run = run.model_copy(update={"status": status})
                    self.state.runs[run.metadata.name] = run
                    self._save(run)
                    changed = changed or bool(verdict.admit or verdict.tickets)
        return changed

    def _release(self, now: datetime) -> bool:
        """Release the runs holding events whose time has come; the others say what they wait for."""
        changed = False
        for name, run in list(self.state.runs.items()):
            held = run.spec.gather
            policy = policy_of(run.spec.workflow)
            if held is None or policy is None or not held.open or run.status.phase.finished:
                continue
            if gather.due(policy, held, now):
                spec = run.spec.model_copy(update={"gather": held.model_copy(update={"open": False})})
                run = run.model_copy(update={"spec": spec})
                changed = True
            else:
                self._admission_due[f"gather:{name}"] = gather.release_at(policy, held)
                status = admission.apply(run.status, gather.waiting(policy, held), now)
                if status == run.status:
                    continue
                run = run.model_copy(update={"status": status})
            self.state.runs[name] = run
            self._save(run)
        return changed

    def _step(self, name: str) -> bool:
        run = self.state.runs[name]
        if _over(run) and not self._outcomes.get(name):
            return False
        now = self.clock.now()
        due = self._requeue.get(name)
        outcomes = self._outcomes.pop(name, [])
        events = self.store.inbox(name) if self.store is not None else list(self._inbox[name])
        events += [ArrivedEvent(payload, now, "test") for payload in self.standing_events]
        children = self._children(run)
        before = run.status.model_dump_json()
        decision = decide(run, Observed(outcomes, events, children), now)
        run = run.model_copy(update={"status": decision.status})
        self.state.runs[name] = run
        self._requeue.pop(name, None)
        changed = bool(outcomes) or (due is not None and due <= now)
        for action in decision.actions:
            changed |= self._apply(run, action)
        if run.status.model_dump_json() != before:
            self._save(run)
            changed = changed or run.status.phase.finished
        return changed

    def _apply(self, run: WorkflowRun, action: object) -> bool:
        name = run.metadata.name
        if isinstance(action, StartExecution):
            self.executor.start(name, action)
        elif isinstance(action, StopExecution):
            self.executor.stop(name, action.name)
        elif isinstance(action, RequeueAt):
            self._requeue[name] = action.when
            return False
        elif isinstance(action, Note):
            if self.timeline is not None:
                self.timeline.note(self.clock.now(), name, action)
            return False
        elif isinstance(action, CancelChild):
            child = self.state.runs.get(action.name)
            if child is not None and not child.spec.cancel and not child.status.phase.finished:
                spec = child.spec.model_copy(update={"cancel": True})
                self.state.runs[action.name] = child.model_copy(update={"spec": spec})
        elif isinstance(action, StartChild):
            if action.workflow not in self.workflows:
                return self._child_missing(action)
            event = RunEvent(name="kubestep/function.invoked", data=action.data, id=action.name, source=name)
            self.create_run(action.workflow, event, action.name, ParentRef(run=name, step=action.step))
        elif isinstance(action, AnnounceEnd):
            # Told on the timeline; what triggers on it (onFailure handlers too) runs in a cluster only.
            if self.timeline is not None:
                note = Note("EventPublished", f"{action.payload['name']} ({action.name})")
                self.timeline.note(self.clock.now(), name, note)
            return False
        elif isinstance(action, PublishEvents):
            for event_id, sent in zip(action.ids, action.events, strict=True):
                payload = {**sent, "id": sent.get("id") or event_id}
                self.state.published.append(payload)
                self.deliver(payload, source=event_id, sent_by_step=True)
        return True

    def _child_missing(self, action: StartChild) -> bool:
        # An unknown workflow cannot be started: the engine sees a child that failed at once.
        self._unstartable[action.name] = _not_found(action.workflow, list(self.workflows))
        return True

    def _children(self, run: WorkflowRun) -> list[ChildResult]:
        results = []
        for step in run.status.steps:
            if step.invoke is None:
                continue
            child = self.state.runs.get(step.invoke.run)
            failure = self._unstartable.get(step.invoke.run)
            if failure is not None:
                results.append(ChildResult(step.id, RunPhase.FAILED, None, failure))
            elif child is not None:
                results.append(
                    ChildResult(step.id, child.status.phase, child.status.output, child.status.error)
                )
        return results

    def _sleep(self) -> None:
        now = self.clock.now()
        deadlines = [
            when for name, when in self._requeue.items() if not self.state.runs[name].status.phase.finished
        ] + list(self._admission_due.values())
        seconds = min(((d - now).total_seconds() for d in deadlines), default=INBOX_POLL_SECONDS)
        if self.store is not None:
            seconds = min(seconds, INBOX_POLL_SECONDS)
        self.clock.wait(max(0.0, seconds), self.wake)

    def _save(self, run: WorkflowRun) -> None:
        if self.store is not None:
            self.store.save(run)


def _run_event(payload: dict[str, Any], source: str) -> RunEvent:
    return RunEvent(
        name=payload["name"],
        data=payload.get("data") or {},
        user=payload.get("user") or {},
        id=payload.get("id") or None,
        ts=payload.get("ts") or None,
        source=source or None,
    )


def _not_found(workflow: str, known: list[str]) -> ErrorInfo:
    return ErrorInfo(
        type="WorkflowNotFound",
        message=f"no workflow named {workflow!r} is loaded; known: {', '.join(sorted(known)) or 'none'}",
    )


def held_by_pause(run: WorkflowRun) -> bool:
    """Whether the run waits, before a step, for its paused workflow (`spec.paused`) to be resumed."""
    admission = run.status.admission
    return run.status.phase is RunPhase.QUEUED and admission is not None and admission.paused


def _over(run: WorkflowRun) -> bool:
    return run.status.phase.finished and run.status.announced is not False
