"""A run's pass reads the watch cache, and the API only where the cache may be behind.

The cache here is a snapshot of the fake API server taken when the test says the watches caught up
(``sync``); between two syncs it lags, as a real watch may.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fake_kube import JOBS, PODS, SECRETS, Call
from test_controller_reconcilers import (
    NS,
    RUN,
    FakeIndices,
    World,
    a_run,
    a_running_run,
    report,
    workflow_obj,
)

from kubestep.api.report import Report, ReportKind
from kubestep.api.run import RunPhase
from kubestep.controller import builders
from kubestep.controller import cache as cache_reads
from kubestep.controller.context import Controller, Key
from kubestep.controller.kube import RUNS, WORKFLOWS
from kubestep.controller.queue import Result

READS = ("get", "get_job", "job_pods")
COMPLETED = Report(kind=ReportKind.COMPLETED, output=3)


@dataclass
class CachedIndices(FakeIndices):
    """The fake's indices plus a watch cache of runs, Jobs and pods as of the last :meth:`sync`."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    workflows: dict[str, dict[str, Any]] = field(default_factory=dict)
    watched: Callable[[str, str], None] = lambda name, version: None
    """Told of each run version the run watch brings (`cache.watched_run`)."""

    def sync(self, *kinds: str) -> None:
        """The watches of ``kinds`` (default: all) caught up with the API server."""
        kinds = kinds or (RUNS, JOBS, PODS, WORKFLOWS)
        if WORKFLOWS in kinds:
            self.workflows = {o["metadata"]["name"]: o for o in self.kube.objects(WORKFLOWS, NS)}
        if RUNS in kinds:
            self.runs = {o["metadata"]["name"]: o for o in self.kube.objects(RUNS, NS)}
            for name, obj in self.runs.items():
                self.watched(name, obj["metadata"]["resourceVersion"])
        if JOBS in kinds:
            self.jobs = {o["metadata"]["name"]: o for o in self.kube.objects(JOBS, NS)}
        if PODS in kinds:
            self.pods = {}
            for pod in self.kube.objects(PODS, NS):
                self.pods.setdefault(pod["metadata"]["labels"]["batch.kubernetes.io/job-name"], []).append(
                    pod
                )

    def run(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.runs.get(name))

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get(name))

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods.get(job, []))

    def workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.workflows.get(name))


def cached_world() -> tuple[World, CachedIndices]:
    world = World()
    world.watching = False  # the watches bring what `sync` says, when it says so
    cache = CachedIndices(world.kube)

    def watched(name: str, version: str) -> None:
        cache_reads.watched_run(world.ctl, NS, name, version)

    cache.watched = watched
    world.ctl = Controller(world.kube, cache, clock=lambda: world.now)  # type: ignore[arg-type]
    return world, cache


def test_a_pass_over_a_step_that_ended_reads_the_run_its_job_and_pod_from_the_cache() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output={"rows": 3}))
    cache.sync()
    world.reconcile()
    assert world.run().status.phase is RunPhase.SUCCEEDED
    assert world.kube.methods(*READS) == []


def test_a_job_the_cache_has_not_seen_yet_is_read_from_the_api_not_taken_for_deleted() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.run_job(NS, job)
    cache.sync(RUNS)  # the Job watch is behind: the cache has no Job of that name yet
    world.reconcile()
    assert world.active() == [job]
    assert world.run().status.phase is RunPhase.RUNNING
    assert world.kube.methods("get_job", "job_pods") == ["get_job", "job_pods"]


def test_a_finished_job_whose_cached_pod_has_not_ended_yet_has_its_pods_read_from_the_api() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.run_job(NS, job)
    cache.sync()  # the pod seen running
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output={"rows": 3}))
    cache.sync(RUNS, JOBS)  # the Job watch saw it finish, the pod watch not yet the pod's end
    world.reconcile()
    # Not a pod the cluster took away (PodLost): its report, read from the API, is what counts.
    assert world.run().status.phase is RunPhase.SUCCEEDED
    assert world.kube.methods(*READS) == ["job_pods"]


def test_a_run_this_process_wrote_is_read_as_written_while_its_watch_is_behind() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output={"rows": 3}))
    cache.sync(JOBS, PODS)  # the run watch has not brought the save back yet
    world.reconcile()
    assert world.kube.methods(*READS) == []
    assert world.run().status.phase is RunPhase.SUCCEEDED


def test_a_run_changed_by_someone_else_since_this_process_wrote_it_is_read_from_the_api() -> None:
    world, cache = cached_world()
    a_running_run(world)
    # The watch brings this process's write back, then a user's change of the run.
    assert cache_reads.watched_run(world.ctl, NS, RUN.name, world.ctl.run_versions[(NS, RUN.name)])
    world.kube.touch(
        RUNS, NS, RUN.name, spec={**world.kube.store[(RUNS, NS, RUN.name)]["spec"], "cancel": True}
    )
    cache.sync()
    cache.runs[RUN.name]["metadata"]["resourceVersion"] = "1"  # as if the watch were behind again
    world.reconcile()
    assert world.kube.methods(*READS)[:1] == ["get"]
    assert world.run().status.phase is RunPhase.CANCELLED


def test_an_older_version_of_its_own_the_watch_brings_late_needs_no_pass_and_no_read() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    first = copy.deepcopy(world.kube.store[(RUNS, NS, RUN.name)])  # the first pass's save
    world.kube.end_job(NS, job, report(ReportKind.STEP_SUCCEEDED, "fetch", output=1))
    cache.sync(JOBS, PODS)  # the step's end arrives before the run watch brings the first save back
    world.reconcile()
    (nxt,) = world.active()
    second = world.ctl.run_versions[(NS, RUN.name)]
    assert second != first["metadata"]["resourceVersion"]
    # Now the watch brings the first save: older than the second, which it brings next. No pass for it,
    # and the run as written stays the copy to read.
    cache.runs[RUN.name] = first
    assert cache_reads.watched_run(world.ctl, NS, RUN.name, first["metadata"]["resourceVersion"])
    world.kube.end_job(NS, nxt, report(ReportKind.STEP_SUCCEEDED, "store", output=2, next=COMPLETED))
    cache.sync(JOBS, PODS)
    world.reconcile()
    assert world.kube.methods(*READS) == []
    assert world.run().status.phase is RunPhase.SUCCEEDED


def test_a_version_of_someone_elses_the_watch_brings_needs_a_pass_that_reads_the_api() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    first = world.ctl.run_versions[(NS, RUN.name)]
    world.kube.end_job(NS, job, report(ReportKind.STEP_SUCCEEDED, "fetch", output=1))
    cache.sync(JOBS, PODS)
    world.reconcile()
    assert cache_reads.watched_run(world.ctl, NS, RUN.name, first)  # older, of its own
    # A version this process never saw: maybe a user's change after its last write. A pass, from the API.
    assert not cache_reads.watched_run(world.ctl, NS, RUN.name, "999")
    assert (NS, RUN.name) not in world.ctl.runs_written
    world.reconcile()
    assert world.kube.methods("get") == ["get"]


def test_answers_noted_out_of_order_never_hide_a_change_from_its_watch() -> None:
    # Two reconcilers of this process touch the run at once: a cancel patched in (no precondition) is
    # answered with version 5 and noted first; a read served version 4 earlier is noted after it.
    world, _ = cached_world()
    a_running_run(world)
    obj = world.kube.store[(RUNS, NS, RUN.name)]
    newer = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "5"}}
    older = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "4"}}
    cache_reads.saw_run(world.ctl, newer, written=True)
    cache_reads.saw_run(world.ctl, older, decided=True)
    # The pass that read version 4 may have found nothing to write: version 5's watch event needs a pass.
    assert not cache_reads.watched_run(world.ctl, NS, RUN.name, "5")


def test_a_pass_of_a_run_the_watch_told_was_deleted_reads_nothing_until_the_name_is_used_again() -> None:
    world, cache = cached_world()
    a_running_run(world)
    world.kube.store.pop((RUNS, NS, RUN.name))
    cache.sync()
    cache_reads.run_presence(world.ctl, NS, RUN.name, gone=True)
    # Its Jobs and pods go with it, each told by a watch: none needs a pass, and a pass reads nothing.
    assert not cache_reads.execution_gone_needs_pass(world.ctl, NS, RUN.name)
    assert world.reconcile() == Result.done()
    assert world.kube.methods("get") == []
    # A run created again under the name is told of by its watch before any pass of it.
    a_run(world)
    cache_reads.run_presence(world.ctl, NS, RUN.name, gone=False)
    assert cache_reads.execution_gone_needs_pass(world.ctl, NS, RUN.name)
    world.reconcile()
    assert world.kube.methods("get") == ["get"]
    assert world.active() != []


def test_deleted_runs_are_remembered_for_a_while_only() -> None:
    world, _ = cached_world()
    cache_reads.run_presence(world.ctl, NS, "old", gone=True)
    world.now += cache_reads.GONE_FOR / 2
    cache_reads.run_presence(world.ctl, NS, "newer", gone=True)
    world.now += cache_reads.GONE_FOR / 2 + timedelta(seconds=1)
    cache_reads.run_presence(world.ctl, NS, "newest", gone=True)
    assert list(world.ctl.runs_gone) == [(NS, "newer"), (NS, "newest")]


def test_the_jobs_of_a_finished_run_deleted_by_this_process_going_away_need_no_pass() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output=1))
    cache.sync()
    world.reconcile()
    assert world.run().status.phase is RunPhase.SUCCEEDED
    world.now += timedelta(minutes=2)  # past spec.history.jobsAfterFinished
    world.reconcile()
    assert world.kube.methods("delete_jobs") == ["delete_jobs"]
    assert (NS, RUN.name) in world.ctl.jobs_deleted
    # While the Job watch has not told of every Job gone, another going needs no pass either ...
    world.kube.put(
        JOBS, {"metadata": {"name": "left", "namespace": NS, "labels": {"kubestep.dev/run": RUN.name}}}
    )
    assert not cache_reads.execution_gone_needs_pass(world.ctl, NS, RUN.name)
    assert (NS, RUN.name) in world.ctl.jobs_deleted
    # ... and once none is left, what this process remembers of the deletion goes.
    world.kube.store.pop((JOBS, NS, "left"))
    assert not cache_reads.execution_gone_needs_pass(world.ctl, NS, RUN.name)
    assert (NS, RUN.name) not in world.ctl.jobs_deleted
    # A Job of a live run going away (deleted by someone) needs its pass.
    assert cache_reads.execution_gone_needs_pass(world.ctl, NS, "another-run")


def test_a_run_never_read_by_this_process_is_read_from_the_api_once() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    cache.sync()
    world.restart()  # a new process: it knows no version of the run
    world.ctl = Controller(world.kube, cache, clock=lambda: world.now)  # type: ignore[arg-type]
    world.reconcile()
    assert world.kube.methods("get") == ["get"]
    world.reconcile()
    assert world.kube.methods("get") == []
    assert world.active() == [job]


# The handoff: a step's end is acted on when the node records it, not when the Job controller does ----------


def test_a_pod_that_ended_with_its_report_is_recorded_before_its_job_is_marked_finished() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.STEP_SUCCEEDED, "fetch", output=1))
    world.kube.touch(JOBS, NS, job, status={"active": 1})  # the Job controller has not caught up
    cache.sync()
    world.reconcile()
    (step,) = world.run().status.steps
    assert step.id == "fetch" and step.output == 1
    assert world.active() != [job]


def test_a_pod_that_ended_without_a_final_report_waits_for_its_jobs_verdict() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.STARTED, "fetch"), exit_code=137)
    world.kube.touch(JOBS, NS, job, status={"active": 1})
    cache.sync()
    world.reconcile()
    # The Job may yet say why (a deadline, an eviction): nothing is recorded before it does.
    assert world.active() == [job]
    assert world.run().status.phase is RunPhase.RUNNING


def test_a_run_ended_by_a_pod_before_its_job_is_marked_finished_keeps_that_job_and_its_pod() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.COMPLETED, output={"rows": 3}))
    world.kube.touch(JOBS, NS, job, status={"active": 1})
    cache.sync()
    world.reconcile()
    assert world.run().status.phase is RunPhase.SUCCEEDED
    # Not taken for a stray of an unsaved pass: the step's pod (and its log) stays for the user to read.
    assert world.jobs() == [job]
    assert "delete_job" not in world.kube.methods()


# State Secrets: one request per run, not per step attempt -------------------------------------------------


def test_a_recorded_steps_state_secret_stays_until_the_run_ends_then_all_go_at_once() -> None:
    world, cache = cached_world()
    # Too large for the pod's annotation, not large enough to be deleted as soon as its step is recorded.
    job = a_running_run(world, data={"file": "x" * (builders.INLINE_STATE_BYTES + 1000)})
    world.kube.end_job(NS, job, report(ReportKind.STEP_SUCCEEDED, "fetch", output=1))
    cache.sync()
    world.reconcile()
    (nxt,) = world.active()
    assert "delete_secret" not in world.kube.methods()
    assert {s["metadata"]["name"] for s in world.kube.objects(SECRETS, NS)} == {job, nxt}
    world.kube.end_job(NS, nxt, report(ReportKind.STEP_SUCCEEDED, "store", output=2, next=COMPLETED))
    cache.sync()
    world.reconcile()
    assert world.run().status.phase is RunPhase.SUCCEEDED
    assert world.kube.methods("delete_secret", "delete_secrets") == ["delete_secrets"]
    assert world.kube.objects(SECRETS, NS) == []


def test_a_run_whose_inputs_its_pods_carry_creates_and_deletes_no_secret() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.kube.end_job(NS, job, report(ReportKind.STEP_SUCCEEDED, "fetch", output=1))
    cache.sync()
    world.reconcile()
    (nxt,) = world.active()
    world.kube.end_job(NS, nxt, report(ReportKind.STEP_SUCCEEDED, "store", output=2, next=COMPLETED))
    cache.sync()
    world.reconcile()
    assert world.run().status.phase is RunPhase.SUCCEEDED
    assert world.kube.objects(SECRETS, NS) == []
    assert world.kube.methods("create_secret", "delete_secret", "delete_secrets") == []


def test_a_large_state_secret_is_deleted_as_soon_as_its_attempt_is_recorded() -> None:
    world, cache = cached_world()
    job = a_running_run(world)
    world.ctl.large_states.add((NS, job))  # as its creation noted it
    world.kube.end_job(NS, job, report(ReportKind.STEP_SUCCEEDED, "fetch", output=1))
    cache.sync()
    world.reconcile()
    assert Call("delete_secret", job) in world.kube.calls


# Workflows ------------------------------------------------------------------------------------------------


WORKFLOW = Key("workflow", NS, "contacts")


def test_a_workflows_count_pass_reads_it_from_the_cache_once_the_watch_has_its_own_last_write() -> None:
    world, cache = cached_world()
    world.kube.put(WORKFLOWS, workflow_obj())
    cache.sync()
    # A new process knows no version of it yet: its first pass reads from the API, then writes its counts.
    assert world.reconcile(WORKFLOW) == Result.done()
    assert world.kube.methods("get") == ["get"] and world.kube.methods("replace_status") == ["replace_status"]
    # The watch has not seen that write yet: the cached copy is older, and would conflict. Read again.
    a_running_run(world)
    world.reconcile(WORKFLOW)
    assert world.kube.methods("get") == ["get"]
    cache.sync()
    world.reconcile(WORKFLOW)
    assert world.kube.methods("get") == []
    obj = world.kube.peek(WORKFLOWS, NS, "contacts")
    assert obj is not None and obj["status"]["active"] == 1


def test_a_workflow_changed_by_its_user_is_read_from_the_api_before_its_status_is_written() -> None:
    world, cache = cached_world()
    world.kube.put(WORKFLOWS, workflow_obj())
    cache.sync()
    world.reconcile(WORKFLOW)
    cache.sync()
    world.kube.touch(WORKFLOWS, NS, "contacts", spec={**workflow_obj()["spec"], "function": "other:flow"})
    cache.sync()
    assert world.reconcile(WORKFLOW) == Result.done()
    assert world.kube.methods("get") == ["get"]  # a version this process did not write: read it


def test_an_admission_pass_reads_the_workflows_spec_from_the_cache() -> None:
    world, cache = cached_world()
    world.kube.put(WORKFLOWS, workflow_obj())
    cache.sync()
    world.reconcile(Key("admission", NS, "contacts"))
    assert world.kube.methods("get") == []


def test_only_a_version_a_run_pass_decided_from_needs_no_pass_when_its_watch_brings_it() -> None:
    world, _ = cached_world()
    a_running_run(world)
    decided = world.ctl.run_decided[(NS, RUN.name)]
    assert world.ctl.runs_written[(NS, RUN.name)]["metadata"]["resourceVersion"] == decided
    # The pass's own save comes back: no pass for it; the written copy gives way to the cache.
    assert cache_reads.watched_run(world.ctl, NS, RUN.name, decided)
    assert (NS, RUN.name) not in world.ctl.runs_written
    # Another reconciler of this process writes the run (admission's grant): its version needs a pass.
    world.kube.touch(RUNS, NS, RUN.name)
    obj = world.kube.store[(RUNS, NS, RUN.name)]
    cache_reads.saw_run(world.ctl, obj, written=True)
    assert not cache_reads.watched_run(world.ctl, NS, RUN.name, obj["metadata"]["resourceVersion"])
    # A version of someone else's never read here needs one too.
    assert not cache_reads.watched_run(world.ctl, NS, RUN.name, "999")


def test_an_events_own_status_write_needs_no_pass_when_its_watch_brings_it_back() -> None:
    world, _ = cached_world()
    saved = {"metadata": {"namespace": NS, "name": "upload-1", "resourceVersion": "7"}}
    cache_reads.wrote_event(world.ctl, saved)
    assert not cache_reads.watched_event(world.ctl, NS, "upload-1", "7", gone=False)
    assert cache_reads.watched_event(world.ctl, NS, "upload-1", "8", gone=False)  # someone else's change
    assert cache_reads.watched_event(world.ctl, NS, "upload-2", "7", gone=False)
    assert not cache_reads.watched_event(world.ctl, NS, "upload-1", None, gone=True)
    assert (NS, "upload-1") not in world.ctl.event_versions
