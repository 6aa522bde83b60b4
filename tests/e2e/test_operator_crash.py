"""The operator killed with SIGKILL mid-run and started again.

Each test runs ``crash_flows:crash_flow`` (``prepare`` → ``flaky``, failing once and retried after a 12 s
backoff → ``step.sleep("nap", "12s")`` → ``finish``) and kills its operator at one kind of moment: while
a step's Job runs, between a Job's end and the recording of that end, during the backoff wait, during
the sleep. Whatever the moment, the run must complete, no succeeded step may run again (every step
execution appends to a trace file in the test's data directory), and no attempt may ever have two Jobs
(the run's Jobs are never deleted, so their final list is their whole history).

Steps can be *gated*: a gated step, once started, waits until the test opens its gate (a file), so the
test decides when a step's Job ends instead of racing it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, Operator, assert_clean_log, step
from kubecp.testing import wait_for
from kubestep.api import names

WORKFLOW = "crash-flow"
RUN_STEPS = ("prepare", "flaky", "finish")
#: Every execution of each step, as its trace file tells: the flaky step fails its first attempt only.
EXPECTED_TRACES = {
    "prepare": ["1 start", "1 ok"],
    "flaky": ["1 start", "1 fail", "2 start", "2 ok"],
    "finish": ["1 start", "1 ok"],
}
#: (number, result) of every attempt of each run step.
EXPECTED_ATTEMPTS = {
    "prepare": [(1, "Succeeded")],
    "flaky": [(1, "Error"), (2, "Succeeded")],
    "finish": [(1, "Succeeded")],
}
#: Jobs that record no step attempt: none. The sleep and the function's end are reported with the output of
#: the step before them, so every Job executes a step.
DISCOVERY_ONLY_JOBS = 0
#: Long enough that a restart on a busy machine still lands before the retry or the wake-up is due.
BACKOFF_SECONDS = 12.0
NAP = "12s"
ANNOTATION_STEP = "kubestep.dev/step"
ANNOTATION_ATTEMPT = "kubestep.dev/attempt"


# Manifests -------------------------------------------------------------------------------------------


def crash_workflow(data_dir: Path, gates: tuple[str, ...] = ()) -> dict[str, Any]:
    """The crash flow's Workflow, tracing into ``data_dir``; steps in ``gates`` wait for their gate."""
    env = [
        {"name": "CRASH_DATA_DIR", "value": str(data_dir)},
        {"name": "CRASH_GATES", "value": ",".join(gates)},
        {"name": "CRASH_STEP_SECONDS", "value": "1"},
        {"name": "CRASH_NAP", "value": NAP},
    ]
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": WORKFLOW},
        "spec": {
            "triggers": [{"event": "test/crash"}],
            "image": "example.invalid/crash-flows:1.0",
            "function": "crash_flows:crash_flow",
            "retries": {
                "limit": 2,
                "backoff": {"initial": "12s", "factor": 1, "max": "12s", "jitter": "0s"},
            },
            "timeouts": {"step": "3m", "run": "10m"},
            "podTemplate": {"env": env},
        },
    }


def kubestep_event(name: str, event: str) -> dict[str, Any]:
    """A kubestep Event named ``name`` carrying the event ``event``."""
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": event, "data": {}},
    }


# Observing the run, its Jobs and the traces ----------------------------------------------------------


def traces(data_dir: Path, step_id: str) -> list[str]:
    """What the executions of ``step_id`` wrote so far: ``<attempt> start|ok|fail`` lines."""
    path = data_dir / f"{step_id}.log"
    return path.read_text().splitlines() if path.exists() else []


def open_gate(data_dir: Path, step_id: str, attempt: int) -> None:
    """Let attempt ``attempt`` of the gated step ``step_id`` finish (before or after it started)."""
    (data_dir / f"{step_id}-{attempt}.go").touch()


def the_run(cluster: Cluster) -> dict[str, Any]:
    """The namespace's only WorkflowRun, once it exists."""

    def probe() -> dict[str, Any] | None:
        runs = cluster.runs()
        assert len(runs) <= 1, [r["metadata"]["name"] for r in runs]
        return runs[0] if runs else None

    return wait_for(probe, timeout=30, interval=0.2, what="the WorkflowRun")


def run_name(cluster: Cluster) -> str:
    """The name of the namespace's only WorkflowRun."""
    return str(the_run(cluster)["metadata"]["name"])


def jobs_of(cluster: Cluster, run: str) -> list[dict[str, Any]]:
    """Every Job of ``run``."""
    return cluster.items("jobs", f"kubestep.dev/run={run}")


def ended_jobs(cluster: Cluster, run: str) -> list[dict[str, Any]] | None:
    """The run's Jobs once the Job controller marked every one of them finished, else None."""
    jobs = jobs_of(cluster, run)
    return jobs if all(job_end(job) is not None for job in jobs) else None


def job_end(job: dict[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` once the Job controller decided, else None."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def pods_by_job(cluster: Cluster, run: str) -> dict[str, list[dict[str, Any]]]:
    """The pods of ``run``'s Jobs, by Job name."""
    pods: dict[str, list[dict[str, Any]]] = {}
    for pod in cluster.items("pods", f"kubestep.dev/run={run}"):
        for owner in pod["metadata"].get("ownerReferences") or []:
            if owner.get("kind") == "Job":
                pods.setdefault(owner["name"], []).append(pod)
    return pods


def running_job(cluster: Cluster, run: str) -> dict[str, Any]:
    """The one unfinished Job of ``run``, whose one pod is Running."""

    def probe() -> dict[str, Any] | None:
        unfinished = [j for j in jobs_of(cluster, run) if job_end(j) is None]
        assert len(unfinished) <= 1, [j["metadata"]["name"] for j in unfinished]
        if not unfinished:
            return None
        pods = pods_by_job(cluster, run).get(unfinished[0]["metadata"]["name"], [])
        if len(pods) == 1 and pods[0].get("status", {}).get("phase") == "Running":
            return unfinished[0]
        return None

    return wait_for(probe, timeout=30, interval=0.2, what="a running Job of the run")


def job_named(cluster: Cluster, name: str) -> dict[str, Any]:
    """One Job."""
    return cluster.get("jobs", name)


def wait_job_end(cluster: Cluster, name: str) -> str:
    """Wait until the Job ``name`` is Complete or Failed; return which."""
    return wait_for(
        lambda: job_end(job_named(cluster, name)), timeout=30, interval=0.2, what=f"Job {name} to end"
    )


def wait_started(data_dir: Path, step_id: str, attempt: int) -> None:
    """Wait until attempt ``attempt`` of ``step_id`` runs its code."""
    wait_for(
        lambda: f"{attempt} start" in traces(data_dir, step_id),
        timeout=40,
        interval=0.1,
        what=f"attempt {attempt} of step {step_id!r} to start",
    )


def wait_recorded(cluster: Cluster, job: str) -> None:
    """Wait until the run's status no longer has the Job ``job`` in flight (its end is recorded)."""
    wait_for(
        lambda: job not in active_jobs(the_run(cluster)),
        timeout=30,
        interval=0.2,
        what=f"the end of Job {job} to be recorded",
    )


def active_jobs(run: dict[str, Any]) -> list[str]:
    """Names of the executions the run's status has in flight."""
    return [e["name"] for e in run.get("status", {}).get("active") or []]


def timestamp(value: str) -> datetime:
    """An RFC 3339 time of the API."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def whole_second(value: datetime) -> datetime:
    """``value`` cut to the second, as the API server stamps ``creationTimestamp``."""
    return value.replace(microsecond=0)


# The operator ----------------------------------------------------------------------------------------


def restart(operator: Operator, cluster: Cluster) -> None:
    """Start the killed operator again and wait until it handles objects (an Event no trigger matches)."""
    assert not operator.alive
    operator.start()
    name = f"ping-{operator.starts}"
    cluster.apply(kubestep_event(name, "test/ping"))

    def processed() -> bool:
        conditions = cluster.get("events.kubestep.dev", name).get("status", {}).get("conditions") or []
        return any(c["type"] == "Processed" for c in conditions)

    wait_for(processed, timeout=30, interval=0.2, what=f"the restarted operator to process Event {name}")


def kill(operator: Operator) -> None:
    """SIGKILL the operator."""
    assert operator.alive, operator.log()[-4000:]
    operator.kill()


def start_run(cluster: Cluster, data_dir: Path, gates: tuple[str, ...] = ()) -> str:
    """Apply the Workflow and its Event; the name of the run it starts."""
    cluster.apply(crash_workflow(data_dir, gates))
    cluster.apply(kubestep_event("crash-1", "test/crash"))
    return run_name(cluster)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Where the step pods write their traces and the test opens gates."""
    path = tmp_path / "data"
    path.mkdir()
    return path


# What every test ends with -----------------------------------------------------------------------------


def assert_each_step_once(cluster: Cluster, operator: Operator, data_dir: Path) -> dict[str, Any]:
    """The run succeeded; each succeeded step ran once; each attempt had exactly one Job with one pod."""
    run = cluster.wait_run(timeout=60)
    status = run["status"]
    name = run["metadata"]["name"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {
        "prepare": {"step": "prepare", "attempt": 1},
        "flaky": {"step": "flaky", "attempt": 2},
        "finish": {"step": "finish", "attempt": 1},
    }
    assert not active_jobs(run), status
    assert [s["id"] for s in status["steps"]] == ["prepare", "flaky", "nap", "finish"]
    assert all(s["phase"] == "Succeeded" for s in status["steps"]), status["steps"]
    assert status["progress"] == "4 done"

    # No succeeded step ran again: the step code itself says how often it ran.
    assert {s: traces(data_dir, s) for s in RUN_STEPS} == EXPECTED_TRACES

    # The status has exactly the attempts that ran, and each names a distinct Job.
    attempt_of_job: dict[str, tuple[str, int]] = {}
    for step_id, expected in EXPECTED_ATTEMPTS.items():
        recorded = step(run, step_id)
        attempts = recorded["attempts"]
        assert [(a["number"], a.get("result")) for a in attempts] == expected, recorded
        assert recorded["attemptCount"] == len(expected), recorded
        for attempt in attempts:
            assert attempt["job"] not in attempt_of_job, (attempt, attempt_of_job)
            attempt_of_job[attempt["job"]] = (step_id, attempt["number"])
    nap = step(run, "nap")
    assert nap["type"] == "sleep" and not nap.get("attempts"), nap

    # Every Job of the run, ever (none is deleted): exactly one per (step, attempt), one pod each. The last
    # one's end may be recorded (from its pod's report) a moment before the Job controller marks it finished.
    jobs = wait_for(
        lambda: ended_jobs(cluster, name), timeout=60, interval=0.5, what="every Job to be finished"
    )
    pods = pods_by_job(cluster, name)
    per_attempt: Counter[tuple[str, int]] = Counter()
    discovery_only: list[str] = []
    for job in jobs:
        job_name = job["metadata"]["name"]
        annotations = job["metadata"].get("annotations") or {}
        assert job_end(job) is not None, f"Job {job_name} never ended: {job.get('status')}"
        assert len(pods.get(job_name, [])) == 1, f"Job {job_name} has pods {pods.get(job_name)}"
        recorded_as = attempt_of_job.get(job_name)
        if ANNOTATION_STEP in annotations:
            key = (annotations[ANNOTATION_STEP], int(annotations[ANNOTATION_ATTEMPT]))
            assert recorded_as == key, f"Job {job_name} is {key} but the status records {recorded_as}"
            per_attempt[key] += 1
        elif recorded_as is not None:
            # A discovery execution: it ran the first attempt of whichever new step it reached.
            assert annotations.get(ANNOTATION_ATTEMPT) == "1" and recorded_as[1] == 1, (job_name, recorded_as)
            per_attempt[recorded_as] += 1
        else:
            discovery_only.append(job_name)
    twice = {key: n for key, n in per_attempt.items() if n != 1}
    assert not twice, (
        f"attempts with more than one Job: {twice}; Jobs: {sorted(j['metadata']['name'] for j in jobs)}"
    )
    assert set(per_attempt) == set(attempt_of_job.values()), (per_attempt, attempt_of_job)
    assert len(discovery_only) == DISCOVERY_ONLY_JOBS, discovery_only
    assert len(jobs) == len(attempt_of_job) + DISCOVERY_ONLY_JOBS
    # The retry's Job has the deterministic name of attempt 2 of `flaky`.
    assert step(run, "flaky")["attempts"][1]["job"] == names.step_execution_name(name, "flaky", 2)
    assert_clean_log(operator)
    return run


# The tests ---------------------------------------------------------------------------------------------


def test_killed_while_a_job_runs_the_job_is_adopted_not_repeated(
    operator: Operator, cluster: Cluster, data_dir: Path
) -> None:
    """Killed while the Jobs of `prepare` (a discovery), the retry of `flaky` and `finish` run."""
    open_gate(data_dir, "flaky", 1)
    run = start_run(cluster, data_dir, gates=RUN_STEPS)
    for step_id, attempt in (("prepare", 1), ("flaky", 2), ("finish", 1)):
        wait_started(data_dir, step_id, attempt)
        job = running_job(cluster, run)["metadata"]["name"]
        kill(operator)
        restart(operator, cluster)
        # The step is still held by its gate: its Job runs on, and the new operator knows it.
        assert job_end(job_named(cluster, job)) is None
        assert job in active_jobs(the_run(cluster))
        open_gate(data_dir, step_id, attempt)
        wait_recorded(cluster, job)
    assert_each_step_once(cluster, operator, data_dir)
    assert operator.starts == 4


def test_killed_between_a_jobs_end_and_its_recording_the_end_is_recorded_once(
    operator: Operator, cluster: Cluster, data_dir: Path
) -> None:
    """Each Job (succeeding, failing, the retry) ends while the operator is down, before it is recorded."""
    run = start_run(cluster, data_dir, gates=RUN_STEPS)
    for step_id, attempt, last_trace in (
        ("prepare", 1, "1 ok"),
        ("flaky", 1, "1 fail"),
        ("flaky", 2, "2 ok"),
        ("finish", 1, "1 ok"),
    ):
        wait_started(data_dir, step_id, attempt)
        job = running_job(cluster, run)["metadata"]["name"]
        kill(operator)
        open_gate(data_dir, step_id, attempt)
        wait_job_end(cluster, job)
        assert traces(data_dir, step_id)[-1] == last_trace
        # The end happened while nobody watched: the status still has the Job in flight.
        current = the_run(cluster)
        assert job in active_jobs(current), current["status"]
        restart(operator, cluster)
    assert_each_step_once(cluster, operator, data_dir)
    assert operator.starts == 5


@pytest.mark.parametrize("restart_when", ["before-due", "after-due"])
def test_killed_during_a_backoff_wait_the_retry_runs_once_when_due(
    operator: Operator, cluster: Cluster, data_dir: Path, restart_when: str
) -> None:
    """Killed while `flaky` waits for its retry; started again before the retry is due, or after."""
    run = start_run(cluster, data_dir)

    def retrying() -> dict[str, Any] | None:
        flaky = next((s for s in the_run(cluster)["status"].get("steps") or [] if s["id"] == "flaky"), None)
        return flaky if flaky is not None and flaky["phase"] == "Retrying" else None

    flaky = wait_for(retrying, timeout=40, interval=0.1, what="step flaky to wait for its retry")
    assert [(a["number"], a["result"]) for a in flaky["attempts"]] == [(1, "Error")]
    assert flaky["attempts"][0]["retryDelaySeconds"] == BACKOFF_SECONDS
    due = timestamp(flaky["nextAttemptAt"])
    kill(operator)
    retry_job = names.step_execution_name(run, "flaky", 2)
    if restart_when == "after-due":
        wait_for(
            lambda: datetime.now(UTC) > due + timedelta(seconds=1.5),
            timeout=BACKOFF_SECONDS + 5,
            what="the retry to be overdue",
        )
    # Nobody started the retry while the operator was down.
    assert retry_job not in {j["metadata"]["name"] for j in jobs_of(cluster, run)}
    assert traces(data_dir, "flaky") == ["1 start", "1 fail"]
    restart(operator, cluster)
    if restart_when == "before-due":
        left = (due - datetime.now(UTC)).total_seconds()
        assert left > 0, f"the operator took too long to restart: the retry was due {-left:.1f}s ago"

    done = assert_each_step_once(cluster, operator, data_dir)
    retry = step(done, "flaky")["attempts"][1]
    assert retry["job"] == retry_job
    assert timestamp(retry["startedAt"]) >= due
    assert timestamp(job_named(cluster, retry_job)["metadata"]["creationTimestamp"]) >= whole_second(due)
    assert operator.starts == 2


@pytest.mark.parametrize("restart_when", ["before-wake", "after-wake"])
def test_killed_during_a_sleep_the_run_wakes_once(
    operator: Operator, cluster: Cluster, data_dir: Path, restart_when: str
) -> None:
    """Killed while the run sleeps in `nap`; started again before the sleep ends, or after."""
    run = start_run(cluster, data_dir)
    sleeping = cluster.wait_run(timeout=40, phases=("Sleeping", "Succeeded", "Failed", "Cancelled"))
    assert sleeping["status"]["phase"] == "Sleeping", sleeping["status"]
    wake = timestamp(step(sleeping, "nap")["wakeAt"])
    assert not active_jobs(sleeping), sleeping["status"]
    jobs_before = {j["metadata"]["name"] for j in jobs_of(cluster, run)}
    kill(operator)
    if restart_when == "after-wake":
        wait_for(
            lambda: datetime.now(UTC) > wake + timedelta(seconds=1.5),
            timeout=30,
            what="the sleep to be over",
        )
    # Nothing ran while the operator was down.
    assert {j["metadata"]["name"] for j in jobs_of(cluster, run)} == jobs_before
    assert traces(data_dir, "finish") == []
    restart(operator, cluster)
    if restart_when == "before-wake":
        left = (wake - datetime.now(UTC)).total_seconds()
        assert left > 0, f"the operator took too long to restart: the sleep ended {-left:.1f}s ago"

    done = assert_each_step_once(cluster, operator, data_dir)
    finish = step(done, "finish")["attempts"][0]
    assert timestamp(finish["startedAt"]) >= wake
    created = timestamp(job_named(cluster, finish["job"])["metadata"]["creationTimestamp"])
    assert created >= whole_second(wake)
    assert operator.starts == 2
