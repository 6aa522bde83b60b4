"""The reconcilers against an in-memory API (no cluster): the order of their writes, what a conflict, an
object that already exists, a refused or failed write does, and the result each pass gives the queue.

The order that matters most, in a run's pass: actions that need no record (stopping a Job, publishing
events) come before the status save; the Kubernetes Events telling of a transition and the Jobs of the
executions the status records come only after it, so that a pass that loses its save tells nothing and
starts nothing, and a Job name is never used twice.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fake_kube import JOBS, NOTES, SECRETS, Call, FakeKube

from kubestep.api.base import API_VERSION
from kubestep.api.event import Event
from kubestep.api.report import Report, ReportError, ReportKind, StepRef, encode_report
from kubestep.api.run import RunPhase, StepType, WorkflowRun
from kubestep.api.workflow import Workflow
from kubestep.controller import builders, cache, runs
from kubestep.controller.context import Controller, Key
from kubestep.controller.kube import (
    EVENTS,
    RUNS,
    WORKFLOWS,
    Conflict,
    Kube,
    KubeError,
    NotFound,
    NotLeading,
    Obj,
    Rejected,
    TooLarge,
    Unavailable,
)
from kubestep.controller.queue import Result
from kubestep.controller.reconcile import reconcile
from kubestep.engine import admission

NS = "team-a"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUN = Key("run", NS, "contacts-run")


# The world a reconciler sees ------------------------------------------------------------------------------


@dataclass
class FakeIndices:
    """The watch indices, read from the fake's store."""

    kube: FakeKube
    resumed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def waiting_runs(self, namespace: str, event: str) -> list[str]:
        return []

    def events_named(self, namespace: str, event: str, event_id: str | None = None) -> list[Event]:
        return [
            Event.model_validate(obj)
            for obj in self.kube.objects(EVENTS, namespace)
            if obj["spec"]["name"] == event and event_id in (None, obj["spec"].get("id"))
        ]

    def run_phases(self, namespace: str, workflow: str) -> list[str]:
        return [
            admission.counted_phase(obj.get("status") or {})
            for obj in self.kube.objects(RUNS, namespace)
            if obj["spec"]["workflowRef"]["name"] == workflow
        ]

    def resumed_by(self, namespace: str, event: str) -> list[tuple[str, str]]:
        return self.resumed.get(event, [])

    def cancellable_runs(self, namespace: str, event: str) -> list[str]:
        return []

    def listening_workflows(self, namespace: str, event: str) -> list[str]:
        return [
            wf["metadata"]["name"]
            for wf in self.kube.objects(WORKFLOWS, namespace)
            if any(t.get("event") == event for t in wf["spec"].get("triggers") or [])
            or (event == "kubestep/run.failed" and wf["spec"].get("onFailure"))
        ]

    def run_jobs(self, namespace: str, run: str) -> list[str]:
        return [
            job["metadata"]["name"]
            for job in self.kube.objects(JOBS, namespace)
            if (job["metadata"].get("labels") or {}).get("kubestep.dev/run") == run
        ]

    # An empty watch cache: every read is a miss, answered by the API (`test_controller_cache` fills it).
    def run(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return []

    def workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


class World:
    """A fake API server, the operator's memory (a :class:`Controller`) and a clock one can move."""

    def __init__(self, may_write: Callable[[], bool] | None = None) -> None:
        self.kube = FakeKube(may_write)
        self.now = T0
        self.ctl = self.operator()
        self.watching = True
        """Whether the run watch brings every change before each pass (its cache stays empty here)."""

    def operator(self) -> Controller:
        """A fresh operator process (nothing remembered) on the same cluster."""
        return Controller(self.kube, FakeIndices(self.kube), clock=lambda: self.now)  # type: ignore[arg-type]

    def restart(self) -> None:
        self.ctl = self.operator()

    def reconcile(self, key: Key = RUN) -> Result:
        """One pass, as a worker runs it; the calls it made are the fake's ``calls`` from here."""
        if self.watching:
            for obj in self.kube.objects(RUNS, NS):
                cache.watched_run(self.ctl, NS, obj["metadata"]["name"], obj["metadata"]["resourceVersion"])
        self.kube.calls.clear()
        return asyncio.run(reconcile(self.ctl, key))

    def run(self, name: str = RUN.name) -> WorkflowRun:
        obj = self.kube.peek(RUNS, NS, name)
        assert obj is not None
        return WorkflowRun.model_validate(obj)

    def active(self) -> list[str]:
        return [e.name for e in self.run().status.active]

    def jobs(self) -> list[str]:
        return [job["metadata"]["name"] for job in self.kube.objects(JOBS, NS)]

    def notes(self) -> list[str]:
        return [note["reason"] for note in self.kube.objects(NOTES, NS)]

    def running(self) -> Result:
        """The result of a pass that leaves executions running: look again when their pods are due to
        have started (``spec.timeouts.podStart``, 5 minutes by default), unless an earlier timer is set."""
        due = [e.started_at + timedelta(minutes=5) for e in self.run().status.active]
        return Result.requeue_at(min(due)) if due else Result.done()


def workflow_obj(name: str = "contacts", event: str = "api/uploaded") -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {
            "triggers": [{"event": event}],
            "image": "registry.example/contacts:1",
            "function": "contacts.workflows:process",
        },
    }


#: Event data too large for a step pod's annotation: its executions' inputs travel in Secrets.
LARGE_DATA = {"file": "x" * builders.INLINE_STATE_BYTES}


def event_obj(
    name: str, event: str = "api/uploaded", event_id: str | None = None, data: Obj | None = None
) -> Obj:
    spec: Obj = {"name": event, "data": data or {"file": "a.csv"}}
    if event_id:
        spec["id"] = event_id
    return {
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def a_run(world: World, name: str = RUN.name, data: Obj | None = None) -> None:
    """A run as an Event creates it: no status yet."""
    workflow = Workflow.model_validate(world.kube.put(WORKFLOWS, workflow_obj()))
    event = Event.model_validate(world.kube.put(EVENTS, event_obj("upload-1", data=data)))
    world.kube.put(RUNS, builders.event_run(workflow, event, name, T0))


def a_running_run(world: World, data: Obj | None = None) -> str:
    """A run whose first execution's Job exists; its name."""
    a_run(world, data=data)
    assert world.reconcile() is not None
    (job,) = world.jobs()
    return job


def report(kind: ReportKind, step: str | None = None, **fields: Any) -> str:
    ref = StepRef(id=step, name=step, type=fields.pop("type", StepType.RUN)) if step else None
    message, _ = encode_report(Report(kind=kind, step=ref, **fields))
    return message


def index(calls: list[Call], method: str) -> int:
    return [call.method for call in calls].index(method)


# The API module's stand-in is faithful to its interface ----------------------------------------------------


def test_the_fake_has_every_async_method_of_the_api_module_with_the_same_parameters() -> None:
    def api(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(fn).parameters)
            for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction)
            if not name.startswith("_")
        }

    assert api(FakeKube) == api(Kube)


# A run's pass: the order of its writes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "creates"),
    [
        # A small input travels in the pod's own annotation: the Job is all there is to create.
        pytest.param(None, ["create_job"], id="small-input"),
        pytest.param(LARGE_DATA, ["create_secret", "create_job"], id="large-input-in-a-secret"),
    ],
)
def test_a_new_runs_job_is_created_only_after_the_status_recording_it_is_saved(
    data: Obj | None, creates: list[str]
) -> None:
    world = World()
    a_run(world, data=data)
    result = world.reconcile()
    calls = world.kube.writes()
    (execution,) = world.active()
    assert world.jobs() == [execution]
    assert [c.method for c in calls if c.method != "post_event"] == ["replace_status", *creates]
    secrets = [s["metadata"]["name"] for s in world.kube.objects(SECRETS, NS)]
    assert secrets == ([execution] if data else [])
    assert Call("create_job", execution) in calls
    # The Events telling of the transition are posted after the save too, and after the Job: a crash
    # between the save and the Job leaves the execution without its Job (Lost), so nothing waits there.
    assert all(i > index(calls, "create_job") for i, c in enumerate(calls) if c.method == "post_event")
    assert "RunStarted" in world.notes()
    assert result == world.running()
    assert world.ctl.owed[(NS, RUN.name)] == {}


@dataclass(frozen=True)
class SaveFault:
    error: KubeError
    result: Callable[[Result], bool]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            SaveFault(Conflict("the object has been modified", 409), lambda r: r.requeue), id="conflict"
        ),
        pytest.param(SaveFault(NotFound("gone", 404), lambda r: r.requeue), id="deleted-meanwhile"),
        pytest.param(
            SaveFault(Unavailable("connection refused"), lambda r: r.error is not None and r.transient),
            id="api-server-down",
        ),
        pytest.param(
            SaveFault(NotLeading("not the leader"), lambda r: r.requeue and r.error is None),
            id="lost-the-lease",
        ),
    ],
)
def test_a_pass_whose_status_save_fails_creates_no_job_posts_nothing_and_is_tried_again(
    fault: SaveFault,
) -> None:
    world = World()
    a_run(world)
    world.kube.fail("replace_status", fault.error)
    result = world.reconcile()
    assert fault.result(result), result
    assert world.kube.methods("create_job", "create_secret", "post_event") == []
    assert world.run().status.active == []
    # The retry decides again from what is there, and starts the execution once.
    assert world.reconcile() == world.running()
    (execution,) = world.active()
    assert world.jobs() == [execution]


def test_a_conflict_requeues_through_the_queue_not_by_itself() -> None:
    world = World()
    a_run(world)
    world.kube.fail("replace_status", Conflict("the object has been modified", 409))
    assert world.reconcile() == Result.again()


def test_actions_that_need_no_record_come_before_the_save() -> None:
    world = World()
    job = a_running_run(world)
    world.kube.touch(
        RUNS, NS, RUN.name, spec={**world.kube.store[(RUNS, NS, RUN.name)]["spec"], "cancel": True}
    )
    result = world.reconcile()
    calls = world.kube.writes()
    assert index(calls, "delete_job") < index(calls, "replace_status")
    assert Call("delete_job", job) in calls
    assert world.run().status.phase is RunPhase.CANCELLED
    assert world.jobs() == []
    assert result == Result.done()  # its Jobs are gone, and nothing listens for its end


def test_a_stop_carried_out_before_a_lost_save_is_harmless_when_decided_again() -> None:
    world = World()
    job = a_running_run(world)
    world.kube.touch(
        RUNS, NS, RUN.name, spec={**world.kube.store[(RUNS, NS, RUN.name)]["spec"], "cancel": True}
    )
    world.kube.fail("replace_status", Conflict("the object has been modified", 409))
    assert world.reconcile() == Result.again()
    assert world.jobs() == []  # stopped: idempotent by name, so the next pass may ask again
    assert "Cancelled" not in world.notes()
    assert world.reconcile().error is None
    assert world.run().status.phase is RunPhase.CANCELLED
    assert Call("delete_job", job) in world.kube.calls  # asked again; already gone, which is fine


def test_events_a_step_sends_are_published_before_the_save_and_an_existing_one_counts_as_published() -> None:
    world = World()
    job = a_running_run(world)
    sent = [{"name": "app/imported", "data": {"rows": 3}}]
    world.kube.end_job(NS, job, report(ReportKind.SEND_EVENT, "tell", type=StepType.SEND_EVENT, events=sent))
    # A previous pass published it and then lost its save (the name is deterministic).
    world.kube.fail("replace_status", Conflict("the object has been modified", 409))
    assert world.reconcile() == Result.again()
    (published,) = [e for e in world.kube.objects(EVENTS, NS) if e["spec"]["name"] == "app/imported"]
    world.reconcile()
    calls = world.kube.writes()
    assert Call("create", f"events/{published['metadata']['name']}") in calls
    assert index(calls, "create") < index(calls, "replace_status")
    assert [
        e["metadata"]["name"] for e in world.kube.objects(EVENTS, NS) if e["spec"]["name"] == "app/imported"
    ] == [published["metadata"]["name"]]
    step = world.run().status.steps[0]
    assert step.id == "tell" and step.phase.value == "Succeeded"


def test_a_finished_runs_jobs_are_deleted_in_one_request_a_minute_after_it_finished() -> None:
    world = World()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output=7))
    world.reconcile()
    assert world.run().status.phase is RunPhase.SUCCEEDED and world.jobs() == [job]
    # `spec.history.jobsAfterFinished` (1 minute by default): `kubectl logs` works meanwhile.
    assert world.reconcile() == Result.requeue_at(world.now + timedelta(minutes=1))
    world.now += timedelta(minutes=1)
    world.reconcile()
    assert world.kube.writes() == [
        Call("delete_jobs", f"app.kubernetes.io/managed-by=kubestep,kubestep.dev/run={RUN.name}")
    ]
    assert world.jobs() == []
    # Nothing left: a later pass costs no request.
    assert world.reconcile() == Result.done() and world.kube.writes() == []


def test_a_finished_runs_jobs_are_not_asked_for_again_while_the_watch_catches_up() -> None:
    world = World()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output=7))
    world.reconcile()
    world.now += timedelta(minutes=1)
    stale = world.kube.peek(JOBS, NS, job)
    world.reconcile()
    assert world.kube.methods("delete_jobs") == ["delete_jobs"]
    # The Job watch still lists it (behind the deletion): a pass then asks nothing ...
    assert stale is not None
    world.kube.put(JOBS, stale)
    assert world.reconcile() == Result.done() and world.kube.writes() == []
    # ... unless it is still listed long after.
    world.now += timedelta(seconds=31)
    world.reconcile()
    assert world.kube.methods("delete_jobs") == ["delete_jobs"] and world.jobs() == []


# Creating an execution: AlreadyExists, refusals, failures ------------------------------------------------


def owned_by_run(world: World, kind: str, name: str) -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "ownerReferences": [{"kind": "WorkflowRun", "name": RUN.name, "uid": world.run().metadata.uid}],
        }
    }


def left_by_earlier_run(world: World, kind: str, name: str) -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "ownerReferences": [{"kind": "WorkflowRun", "name": RUN.name, "uid": "uid-of-an-earlier-run"}],
        }
    }


@dataclass(frozen=True)
class Existing:
    kind: str
    body: Callable[[World, str, str], Obj]
    started: bool


@pytest.mark.parametrize(
    "existing",
    [
        # A pass created it and was cut short (a crash, a lost connection): it is this execution's.
        pytest.param(Existing(SECRETS, owned_by_run, True), id="own-secret"),
        pytest.param(Existing(JOBS, owned_by_run, True), id="own-job"),
        # Left over from an earlier run of the same name, still being garbage-collected: wait for it.
        pytest.param(Existing(SECRETS, left_by_earlier_run, False), id="earlier-runs-secret"),
        pytest.param(Existing(JOBS, left_by_earlier_run, False), id="earlier-runs-job"),
    ],
)
def test_an_execution_whose_secret_or_job_already_exists(existing: Existing) -> None:
    world = World()
    a_run(world, data=LARGE_DATA)
    world.kube.fail("create_secret", Unavailable("connection reset"))
    world.reconcile()  # recorded, not created
    (execution,) = world.active()
    world.kube.put(existing.kind, existing.body(world, existing.kind, execution))
    result = world.reconcile()
    if existing.started:
        assert result == world.running()
        assert world.ctl.owed[(NS, RUN.name)] == {}
        assert world.jobs() == [execution]
        return
    assert result.error is not None and "still being deleted" in result.error and result.transient
    assert world.ctl.owed[(NS, RUN.name)].keys() == {execution}  # still owed: created once the old is gone
    world.kube.store.pop((existing.kind, NS, execution))
    assert world.reconcile() == world.running()
    assert world.jobs() == [execution]
    assert world.active() == [execution]


def test_a_job_that_could_not_be_created_stays_owed_and_is_created_by_the_retry_not_counted_lost() -> None:
    world = World()
    a_run(world)
    world.kube.fail("create_job", Unavailable("connection refused"))
    result = world.reconcile()
    assert result.error is not None and result.transient
    (execution,) = world.active()
    assert world.jobs() == []
    assert world.reconcile() == world.running()
    assert world.jobs() == [execution]
    assert world.active() == [execution]
    assert world.run().status.steps == []  # no attempt recorded as lost


def test_the_events_of_a_saved_transition_are_posted_even_when_its_job_could_not_be_created() -> None:
    world = World()
    a_run(world)
    world.kube.fail("create_job", Unavailable("connection refused"))
    world.reconcile()
    assert "RunStarted" in world.notes()
    world.reconcile()
    assert world.notes().count("RunStarted") == 1


def test_after_a_restart_a_recorded_execution_without_a_job_is_lost_and_its_name_never_used_again() -> None:
    world = World()
    a_run(world)
    world.kube.fail("create_job", Unavailable("connection refused"))
    world.reconcile()
    (execution,) = world.active()
    world.restart()  # the debt was in memory only: who knows whether the Job was created and deleted
    # First the pod watch gets time to hand over a last state of its pod: nothing is decided meanwhile.
    assert world.reconcile() == Result.requeue_at(world.now + runs.MISSING_GRACE)
    assert world.active() == [execution]
    world.now += runs.MISSING_GRACE
    world.reconcile()
    assert Call("create_job", execution) not in world.kube.calls
    (retry,) = world.active()
    assert retry != execution
    assert world.jobs() == [retry]
    status = world.run().status
    assert status.discovery_failures + sum(s.disruptions for s in status.steps) == 1  # recorded, not silent


def test_a_vanished_execution_whose_pod_ending_arrives_late_is_recorded_on_the_step_it_had_started() -> None:
    # The Job watch can be ahead of the pod watch: Job and pod are gone from the API before the pod's
    # last state (its report: the step it had started) is handed over. Deciding then would blame the
    # runner for a step attempt the user can see in the step's log.
    world = World()
    a_run(world)
    world.reconcile()
    (execution,) = world.active()
    del world.kube.store[(JOBS, NS, execution)]  # deleted with its pod; the pod watch has said nothing yet
    result = world.reconcile()
    assert world.active() == [execution] and world.run().status.steps == []
    assert result == Result.requeue_at(world.now + runs.MISSING_GRACE)
    world.now += timedelta(seconds=1)
    started = Report(kind=ReportKind.STARTED, step=StepRef(id="enrich", name="enrich"))
    pod = pod_state(True)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = encode_report(started)[0]
    runs.remember_pod_ending(world.ctl, NS, RUN.name, execution, pod)
    world.reconcile()
    (step,) = world.run().status.steps
    assert [(a.job, a.result.value if a.result else None) for a in step.attempts] == [(execution, "Lost")]
    assert world.run().status.discovery_failures == 0
    assert world.ctl.missing[(NS, RUN.name)] == {}


def test_a_job_refused_as_invalid_is_told_and_recorded_by_a_pass_at_once() -> None:
    world = World()
    a_run(world)
    world.kube.fail("create_job", Rejected("Job.batch is invalid: spec.template...: Invalid value", 422))
    result = world.reconcile()
    assert result.at == T0 and not result.requeue and result.error is None
    assert "JobRejected" in world.notes()
    assert world.jobs() == []
    world.reconcile()
    assert "JobRejected" in world.run().model_dump_json()


def test_a_job_forbidden_for_now_is_retried_with_backoff() -> None:
    world = World()
    a_run(world)
    world.kube.fail("create_job", Rejected('jobs "x" is forbidden: exceeded quota', 403))
    result = world.reconcile()
    assert result.error is not None and "was rejected" in result.error and not result.transient
    assert "JobRejected" in world.notes()
    (execution,) = world.active()
    assert world.reconcile() == world.running()
    assert world.jobs() == [execution]


def test_a_status_too_large_is_decided_again_and_saved_smaller_without_starting_anything() -> None:
    world = World()
    a_run(world)
    world.kube.fail("replace_status", TooLarge("etcdserver: request is too large", 500))
    result = world.reconcile()
    calls = world.kube.writes()
    assert [c.method for c in calls if c.method != "post_event"] == ["replace_status", "replace_status"]
    run = world.run()
    assert run.status.phase is RunPhase.FAILED
    assert run.status.error is not None and run.status.error.type == "StatusTooLarge"
    assert world.jobs() == [] and world.kube.objects(SECRETS, NS) == []
    assert all(i > 1 for i, c in enumerate(calls) if c.method == "post_event")
    assert result == Result.done()  # nothing listens for its end: nothing to publish


def test_a_run_ended_for_a_status_too_large_still_deletes_the_state_secrets_its_steps_had() -> None:
    world = World()
    job = a_running_run(world)
    # The first step's output makes the next step's input too large for its pod: it gets a Secret.
    big = "x" * builders.INLINE_STATE_BYTES
    world.kube.end_job(NS, job, report(ReportKind.STEP_SUCCEEDED, "fetch", output=big))
    world.reconcile()
    (nxt,) = world.active()
    assert [s["metadata"]["name"] for s in world.kube.objects(SECRETS, NS)] == [nxt]
    # The run's status cannot be stored with the next output: it ends without its outputs ...
    done = Report(kind=ReportKind.COMPLETED, output=3)
    world.kube.end_job(NS, nxt, report(ReportKind.STEP_SUCCEEDED, "store", output=2, next=done))
    world.kube.fail("replace_status", TooLarge("etcdserver: request is too large", 500))
    world.reconcile()
    run = world.run()
    assert run.status.error is not None and run.status.error.type == "StatusTooLarge"
    assert all(step.output is None for step in run.status.steps)
    # ... and still deletes the Secret its last step was given.
    assert "delete_secrets" in world.kube.methods()
    assert world.kube.objects(SECRETS, NS) == []


def test_a_status_refused_as_too_large_twice_is_a_failure_retried_with_backoff() -> None:
    world = World()
    a_run(world)
    world.kube.fail("replace_status", TooLarge("request entity too large", 413), times=2)
    result = world.reconcile()
    assert result.error is not None
    assert world.jobs() == []


def test_an_operator_that_stopped_leading_writes_nothing() -> None:
    leading = [True]
    world = World(may_write=lambda: leading[0])
    a_run(world)
    leading[0] = False
    result = world.reconcile()
    assert result.requeue and result.error is None
    assert world.run().status.active == [] and world.jobs() == []
    leading[0] = True
    assert world.reconcile() == world.running()
    assert len(world.jobs()) == 1


# A run's pass: what it asks of the queue -------------------------------------------------------------------


def test_a_retry_backoff_decided_by_the_engine_is_the_passs_requeue_time() -> None:
    world = World()
    job = a_running_run(world)
    error = ReportError(type="ConnectionError", message="crm down")
    world.kube.end_job(NS, job, report(ReportKind.STEP_FAILED, "enrich", error=error), exit_code=1)
    world.now = T0 + timedelta(seconds=5)
    result = world.reconcile()
    assert result.at is not None and result.at > world.now and not result.requeue
    assert world.active() == [] and world.jobs() == [job]
    world.now = result.at
    assert world.reconcile().error is None
    (retry,) = world.active()
    assert retry != job and retry in world.jobs()


@pytest.mark.parametrize("data", [None, LARGE_DATA], ids=["small-input", "large-input-in-a-secret"])
def test_a_finished_run_cleans_up_and_asks_for_nothing_more(data: Obj | None) -> None:
    world = World()
    job = a_running_run(world, data=data)
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output={"rows": 3}))
    result = world.reconcile()
    assert world.run().status.phase is RunPhase.SUCCEEDED
    calls = world.kube.writes()
    if data:
        # Its state Secrets go in one request, once the end is saved.
        assert index(calls, "replace_status") < index(calls, "delete_secrets")
    else:
        # It had none: nothing to delete, and no request asking to.
        assert "delete_secrets" not in world.kube.methods()
    assert "delete_secret" not in world.kube.methods()
    assert world.kube.objects(SECRETS, NS) == []
    assert (NS, RUN.name) not in world.ctl.owed
    # Nothing listens for its end (kubestep/run.finished): nothing is published, nothing is left to do but
    # deleting its Jobs (spec.history.jobsAfterFinished).
    assert result == Result.requeue_at(world.now + timedelta(minutes=1))
    assert ends(world) == [] and world.run().status.announced is None
    assert world.reconcile() == Result.requeue_at(world.now + timedelta(minutes=1))
    assert ends(world) == []


@pytest.mark.parametrize("listener", ["trigger", "onFailure"])
def test_a_run_end_something_listens_for_is_published_once_after_the_end_is_saved(listener: str) -> None:
    world = World()
    if listener == "trigger":
        world.kube.put(WORKFLOWS, workflow_obj("on-ends", event="kubestep/run.failed"))
    else:
        handled = workflow_obj("handled", event="api/other")
        handled["spec"]["onFailure"] = {"function": "m:on_failure"}
        world.kube.put(WORKFLOWS, handled)
    job = a_running_run(world)
    error = ReportError(type="NonRetriableError", message="gone", retriable=False)
    world.kube.end_job(NS, job, report(ReportKind.FAILED, error=error), exit_code=1)
    result = world.reconcile()
    assert world.run().status.phase is RunPhase.FAILED and world.run().status.announced is False
    assert ends(world) == []
    # Once the end is saved, the next pass publishes it; then nothing more but deleting its Jobs.
    assert result == Result.requeue_at(world.now)
    assert world.reconcile() == Result.requeue_at(world.now + timedelta(minutes=1))
    (ended,) = ends(world)
    assert ended["spec"]["name"] == "kubestep/run.failed"
    assert ended["metadata"]["name"] == f"kubestep.run.{RUN.name}"
    assert world.run().status.announced is True
    assert world.reconcile() == Result.requeue_at(world.now + timedelta(minutes=1))
    assert len(ends(world)) == 1


def ends(world: World) -> list[Obj]:
    """The Events announcing runs' ends."""
    return [e for e in world.kube.objects(EVENTS, NS) if e["spec"]["name"].startswith("kubestep/run.")]


@pytest.mark.parametrize("how", ["deleted", "being-deleted"])
def test_a_run_that_is_gone_is_forgotten(how: str) -> None:
    world = World()
    a_run(world)
    world.ctl.owed[(NS, RUN.name)] = {}
    world.ctl.pod_endings[(NS, RUN.name)] = {}
    if how == "deleted":
        world.kube.store.pop((RUNS, NS, RUN.name))
    else:
        meta = world.kube.store[(RUNS, NS, RUN.name)]["metadata"]
        world.kube.touch(RUNS, NS, RUN.name, metadata={**meta, "deletionTimestamp": "2026-03-01T12:00:01Z"})
    assert world.reconcile() == Result.done()
    assert world.kube.writes() == []
    assert (NS, RUN.name) not in world.ctl.owed and (NS, RUN.name) not in world.ctl.pod_endings


def pod_state(terminated: bool) -> Obj:
    state = {"terminated": {"exitCode": 0, "message": "m"}} if terminated else {"running": {}}
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "step", "state": state}]}}


@pytest.mark.parametrize(
    ("seen", "kept"),
    [
        ([False], False),
        ([False, True], True),
        # Once it was seen terminated, a later, emptier view (the pod being torn down) does not replace it.
        ([True, False], True),
        ([True, False, False], True),
    ],
)
def test_the_last_state_of_a_step_pod_going_away_is_remembered_until_its_attempt_is_recorded(
    seen: list[bool], kept: bool
) -> None:
    world = World()
    for terminated in seen:
        runs.remember_pod_ending(world.ctl, NS, RUN.name, "job-1", pod_state(terminated))
    pod = world.ctl.pod_endings[(NS, RUN.name)]["job-1"]
    assert bool(pod["status"]["containerStatuses"][0]["state"].get("terminated")) is kept


# Events -----------------------------------------------------------------------------------------------------


def an_event(world: World, name: str = "upload-1", event_id: str | None = None) -> Key:
    world.kube.put(EVENTS, event_obj(name, event_id=event_id))
    return Key("event", NS, name)


def started_runs(world: World) -> list[str]:
    return [obj["metadata"]["name"] for obj in world.kube.objects(RUNS, NS)]


def processed(world: World, name: str) -> Obj:
    obj = world.kube.peek(EVENTS, NS, name)
    assert obj is not None
    (condition,) = [c for c in obj["status"]["conditions"] if c["type"] == "Processed"]
    return dict(condition)


def handled(result: Result) -> None:
    """The result of a pass that handled an Event and saved so: look again when it may be collected."""
    assert result.error is None and not result.requeue and result.at is not None and result.at > T0, result


def test_an_event_creates_its_run_before_saying_so() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    key = an_event(world)
    handled(world.reconcile(key))
    calls = world.kube.writes()
    assert [c.method for c in calls] == ["create", "replace_status"]
    (run,) = started_runs(world)
    assert (
        processed(world, "upload-1")["reason"] == "RunsStarted"
        and run in processed(world, "upload-1")["message"]
    )


def test_an_event_whose_status_save_conflicts_starts_its_run_once() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    key = an_event(world)
    world.kube.fail("replace_status", Conflict("the object has been modified", 409))
    assert world.reconcile(key) == Result.again()
    (run,) = started_runs(world)
    # The retry finds the run (AlreadyExists) and knows it as its own.
    handled(world.reconcile(key))
    assert started_runs(world) == [run]
    assert processed(world, "upload-1")["reason"] == "RunsStarted"


def test_an_event_with_an_id_already_used_starts_nothing_and_says_which_run_it_started() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    first = an_event(world, "upload-1", event_id="order-7")
    second = an_event(world, "upload-2", event_id="order-7")
    world.reconcile(first)
    (run,) = started_runs(world)
    handled(world.reconcile(second))
    assert started_runs(world) == [run]
    condition = processed(world, "upload-2")
    assert condition["reason"] == "Duplicate" and run in condition["message"]


def test_an_event_whose_run_could_not_be_created_is_retried_and_starts_it_once() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    key = an_event(world)
    world.kube.fail("create", Unavailable("connection refused"))
    result = world.reconcile(key)
    assert result.error is not None and result.transient
    assert started_runs(world) == [] and world.kube.writes() == [Call("create", world.kube.calls[-1].name)]
    handled(world.reconcile(key))
    assert len(started_runs(world)) == 1


def test_an_event_whose_run_is_refused_says_so_not_that_an_expression_failed() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    key = an_event(world)
    world.kube.fail("create", Rejected('workflowruns "x" is forbidden: exceeded quota', 403))
    world.reconcile(key)
    condition = processed(world, "upload-1")
    assert condition["reason"] == "RunNotStarted", condition
    assert "exceeded quota" in condition["message"] and "`if`" not in condition["message"]


def test_a_handled_event_is_deleted_once_its_dedupe_window_has_passed() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    key = an_event(world)
    world.reconcile(key)  # handled: its run started
    # Its own change brings it back: kept for the window (24 h by default) and a grace, then looked at again.
    assert world.reconcile(key) == Result.requeue_at(T0 + timedelta(hours=24, seconds=30))
    assert world.kube.writes() == []
    world.now = T0 + timedelta(hours=24, seconds=30)
    assert world.reconcile(key) == Result.done()
    assert world.kube.writes() == [Call("delete_object", "events/upload-1")]
    assert world.kube.peek(EVENTS, NS, "upload-1") is None


def test_an_event_that_is_gone_is_done() -> None:
    world = World()
    assert world.reconcile(Key("event", NS, "nope")) == Result.done()
    assert world.kube.writes() == []


# Workflows ---------------------------------------------------------------------------------------------


def test_a_workflows_counts_are_saved_and_a_conflict_is_requeued() -> None:
    world = World()
    world.kube.put(WORKFLOWS, workflow_obj())
    key = Key("workflow", NS, "contacts")
    world.kube.fail("replace_status", Conflict("the object has been modified", 409))
    assert world.reconcile(key) == Result.again()
    assert world.reconcile(key) == Result.done()
    obj = world.kube.peek(WORKFLOWS, NS, "contacts")
    assert obj is not None and obj["status"]["active"] == 0
    assert world.reconcile(key) == Result.done()
    assert world.kube.writes() == []  # nothing changed: nothing written


def test_a_workflow_that_is_gone_is_done() -> None:
    world = World()
    assert world.reconcile(Key("workflow", NS, "nope")) == Result.done()


# What an error raised by a pass becomes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Unavailable("connection refused"), Result.failed("an API call failed (connection refused)", True)),
        (Unavailable("etcd timeout", 500), Result.failed("an API call failed (etcd timeout)", True)),
        (Rejected("forbidden", 403), Result.failed("an API call was rejected (forbidden)")),
        (Conflict("modified", 409), Result.failed("an API call failed (modified)")),
        (NotLeading("not the leader"), Result.again()),
    ],
)
def test_an_api_error_ends_the_pass_as_a_result_for_the_queue(error: KubeError, expected: Result) -> None:
    world = World()
    a_run(world)
    world.kube.fail("get", error)
    assert world.reconcile() == expected
