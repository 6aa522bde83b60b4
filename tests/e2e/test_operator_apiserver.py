"""The operator through an API-server outage: kube-apiserver SIGKILLed mid-load and started again.

Ten concurrent runs of ``outage_flows:outage_flow`` (four traced steps; some fail a step once and wait out
a backoff, some sleep) are in flight when kube-apiserver is killed; it stays down while step bodies end
and timers fall due, then comes back on the same etcd, port and certificates. The operator process, never
restarted for it, must carry on by itself: every run succeeds, every body ran once per recorded attempt, no
attempt name ever has two Jobs (a watch records every Job by uid, across the outage), every attempt's times
are in order, and the operator neither exited nor printed a traceback. The process node must reconnect its
watches too: pods created after the outage run.

The operator is also SIGKILLed and started again a few times (before and after the outage, and once every
run has ended): every Kubernetes Event about a run must have been posted once, not again by each restart.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from conftest import Cluster, Operator, assert_clean_log
from kubecp.cluster import ControlPlane
from kubecp.testing import wait_for

RUNS = 10
#: How long kube-apiserver stays down before it is started again (its start takes some seconds more).
DOWN_SECONDS = 10.0
#: Each step body's duration; the backoff and the sleep are shorter than the outage, so they fall due in it.
STEP_SECONDS = 1.5
BACKOFF = "6s"
NAP = "6s"
FINISHED = ("Succeeded", "Failed", "Cancelled")
DURATION = re.compile(r"\b\d+(\.\d+)?(ms|s)\b")
#: How long a restarted operator is given to go over every finished run again.
SETTLE_SECONDS = 10.0


def outage_workflow() -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "outage-flow"},
        "spec": {
            "triggers": [{"event": "test/outage"}],
            "image": "example.invalid/outage-flows:1.0",
            "function": "outage_flows:outage_flow",
            "retries": {
                "limit": 2,
                "backoff": {"initial": BACKOFF, "factor": 1, "max": BACKOFF, "jitter": "0s"},
            },
            "timeouts": {"step": "5m", "run": "30m"},
        },
    }


def outage_event(index: int, data_dir: Path) -> dict[str, Any]:
    """Run ``index``: every third fails ``check`` once, every third (another) sleeps after it."""
    data: dict[str, Any] = {"dir": str(data_dir), "seconds": STEP_SECONDS}
    if index % 3 == 0:
        data["flaky"] = True
    if index % 3 == 1:
        data["nap"] = NAP
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": f"outage-{index}"},
        "spec": {"name": "test/outage", "data": data},
    }


@dataclass
class JobRecorder:
    """Records every Job of a namespace ever seen, by uid, through API outages (it lists again after one).

    The runs' Jobs are never deleted during the test, so a Job created while the watch was down is still
    there for the next list to see.
    """

    batch: client.BatchV1Api
    namespace: str
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    reconnects: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._record, daemon=True)
        self._thread.start()

    def _keep(self, job: Any) -> str:
        plain: dict[str, Any] = self.batch.api_client.sanitize_for_serialization(job)
        self.jobs.setdefault(plain["metadata"]["uid"], plain)
        return str(plain["metadata"]["resourceVersion"])

    def _record(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.batch.list_namespaced_job(self.namespace, _request_timeout=(3, 10))
                for job in listed.items:
                    self._keep(job)
                version = listed.metadata.resource_version
                for change in watch.Watch().stream(
                    self.batch.list_namespaced_job,
                    self.namespace,
                    resource_version=version,
                    timeout_seconds=5,
                    _request_timeout=(3, 15),
                ):
                    self._keep(change["object"])
                    if self._stop.is_set():
                        return
            except Exception:  # the API server is down: list again once it answers
                self.reconnects += 1
                self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@pytest.fixture
def jobs(kubestep_crds: ControlPlane, restricted: str) -> Iterator[JobRecorder]:
    with kubestep_crds.api_client() as api:
        recorder = JobRecorder(client.BatchV1Api(api), restricted)
        recorder.start()
        yield recorder
        recorder.stop()


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def finished_runs(cluster: Cluster) -> list[dict[str, Any]] | None:
    runs = cluster.runs()
    if len(runs) == RUNS and all(r.get("status", {}).get("phase") in FINISHED for r in runs):
        return runs
    return None


def timers_pending(cluster: Cluster) -> tuple[int, int]:
    """How many steps wait for a retry (backoff) and how many sleep, right now."""
    steps = [s for r in cluster.runs() for s in (r.get("status") or {}).get("steps") or []]
    backoffs = sum(1 for s in steps if s.get("nextAttemptAt") and s.get("phase") != "Succeeded")
    sleeps = sum(1 for s in steps if s.get("phase") == "Sleeping")
    return backoffs, sleeps


def timer_lateness(runs: list[dict[str, Any]], restored_at: datetime) -> list[float]:
    """For each retry or wake-up that fell due before the API server was back: how long after that it came."""
    late = []
    for run in runs:
        for recorded in run["status"]["steps"]:
            attempts = recorded.get("attempts") or []
            if recorded["id"] == "nap":
                due, came = stamp(recorded["wakeAt"]), stamp(recorded["finishedAt"])
            elif len(attempts) > 1:
                delay = timedelta(seconds=attempts[0]["retryDelaySeconds"])
                due, came = stamp(attempts[0]["finishedAt"]) + delay, stamp(attempts[1]["startedAt"])
            else:
                continue
            if due < restored_at:
                late.append(round((came - restored_at).total_seconds(), 1))
    return sorted(late)


def traces(data_dir: Path, run: str) -> list[str]:
    path = data_dir / f"{run}.log"
    return path.read_text().splitlines() if path.exists() else []


def run_events(cluster: Cluster) -> list[dict[str, Any]]:
    """The Kubernetes Events about WorkflowRuns in the namespace."""
    args = ["get", "events", "--field-selector", "involvedObject.kind=WorkflowRun", "-o", "json"]
    return list(json.loads(cluster.kubectl(*args).stdout)["items"])


def test_runs_converge_after_the_api_server_is_killed_and_restarted(
    operator: Operator, cluster: Cluster, jobs: JobRecorder, tmp_path: Path
) -> None:
    control_plane = cluster.cp
    data_dir = tmp_path / "traces"
    data_dir.mkdir()
    cluster.apply(outage_workflow())
    cluster.apply(*(outage_event(i, data_dir) for i in range(RUNS)))

    # The load is under way, and the operator has been restarted once already.
    wait_for(lambda: len(jobs.jobs) >= RUNS, timeout=180, interval=0.2, what="every run's first Job")
    operator.kill()
    operator.start()

    # Kill the API server while runs wait out a backoff or sleep: their timers fall due while it is down.
    wait_for(lambda: any(timers_pending(cluster)), timeout=180, interval=0.2, what="a backoff or a sleep")
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: all(timers_pending(cluster)), timeout=10, interval=0.2, what="both")
    pending = timers_pending(cluster)
    node_log_before = control_plane.node_log().stat().st_size
    unfinished_before = RUNS - len([r for r in cluster.runs() if r["status"].get("phase") in FINISHED])
    # Its history is compacted meanwhile, so every watch resuming after it is told 410 Gone and lists again.
    outage = control_plane.restart_apiserver(down_seconds=DOWN_SECONDS, while_down=control_plane.compact_etcd)
    restored, restored_at = time.monotonic(), datetime.now(UTC)
    print(f"apiserver down for {outage:.1f}s with {pending} (backoffs, sleeps) pending")
    assert unfinished_before >= RUNS // 2, "the load ended too early for the test"

    # Work goes on without any help: Jobs are created after the outage, and their pods run on the node.
    created = len(jobs.jobs)
    wait_for(
        lambda: len(jobs.jobs) > created, timeout=120, interval=0.2, what="a Job created after the outage"
    )
    operator.kill()
    operator.start()

    runs = wait_for(lambda: finished_runs(cluster), timeout=600, interval=1, what="every run to end")
    converged = time.monotonic() - restored
    print(f"every run ended {converged:.1f}s after the apiserver was back")
    late = timer_lateness(runs, restored_at)
    print(f"timers due during the outage fired {max(late, default=0):.1f}s after it at the latest: {late}")

    # Restarts after the end re-reconcile every run: nothing may be posted again.
    events_at_end = len(run_events(cluster))
    for _ in range(2):
        operator.kill()
        operator.start()
        # Long enough for a started operator to reconcile ten finished runs; a longer wait is only stricter.
        time.sleep(SETTLE_SECONDS)

    failed = {
        r["metadata"]["name"]: r["status"].get("error") for r in runs if r["status"]["phase"] != "Succeeded"
    }
    assert not failed, failed
    lost: list[str] = []
    never_created: set[str] = set()
    for run in runs:
        name, status, data = run["metadata"]["name"], run["status"], run["spec"]["event"]["data"]
        trace = traces(data_dir, name)
        bodies = Counter(tuple(line.split()[:2]) for line in trace if line.endswith(" start"))
        assert all(n == 1 for n in bodies.values()), f"run {name}: a body ran twice for one attempt: {trace}"
        for recorded in status["steps"]:
            step_id, attempts = recorded["id"], recorded.get("attempts") or []
            if step_id == "nap":
                assert recorded["phase"] == "Succeeded" and not attempts, (name, recorded)
                continue
            # The step failed on its own only where the flow says so; anything else the cluster or the
            # operator's own crash took away spent no budget.
            fails = 1 if step_id == "check" and data.get("flaky") else 0
            assert recorded["failures"] == fails, (name, recorded)
            assert [a["result"] for a in attempts][-1] == "Succeeded", (name, recorded)
            assert status["output"][step_id] == {"step": step_id, "attempt": attempts[-1]["number"]}
            for attempt in attempts:
                ran = (step_id, str(attempt["number"])) in bodies
                if attempt["result"] == "Lost":
                    # Recorded, then its Job never ran (the operator was killed before creating it).
                    assert not ran, (name, attempt, trace)
                    lost.append(f"{name}/{step_id}#{attempt['number']}: {attempt.get('reason')}")
                    never_created.add(attempt["job"])
                else:
                    assert attempt["result"] in ("Succeeded", "Error") and ran, (name, attempt, trace)
                started, ended = stamp(attempt["startedAt"]), stamp(attempt["finishedAt"])
                assert started <= ended, f"run {name} step {step_id}: attempt times out of order: {attempt}"
            # Every body that ran has its attempt recorded.
            numbers = {str(a["number"]) for a in attempts}
            assert {n for s, n in bodies if s == step_id} <= numbers, (name, recorded, trace)
    print(f"attempts recorded but never run (Lost): {lost}")

    # No attempt has two Jobs: every Job the watch ever saw is one attempt's, each name once.
    jobs.stop()
    listed = {j["metadata"]["uid"] for j in cluster.items("jobs")}
    assert listed <= set(jobs.jobs), "the watch missed Jobs"
    names = Counter(j["metadata"]["name"] for j in jobs.jobs.values())
    assert all(n == 1 for n in names.values()), f"a Job name was created twice: {names}"
    recorded_jobs = {a["job"] for r in runs for s in r["status"]["steps"] for a in s.get("attempts") or []}
    assert set(names) == recorded_jobs - never_created, set(names) ^ (recorded_jobs - never_created)

    # Every transition was told once, and the restarts after the end told nothing new.
    # Durations are left out: the same note posted again later would differ only in them.
    told = Counter(
        (e["involvedObject"]["name"], e["reason"], DURATION.sub("", e["message"]))
        for e in run_events(cluster)
    )
    repeated = {k: n for k, n in told.items() if n > 1}
    assert not repeated, f"Events posted more than once: {repeated}"
    assert sum(told.values()) == events_at_end

    # The process node lived through it and reconnected its pod watch.
    with control_plane.node_log().open() as node_log:
        node_log.seek(node_log_before)
        since_outage = node_log.read()
    assert "pod watch:" in since_outage and "scheduler:" in since_outage, since_outage[-3000:]
    assert operator.starts == 5
    assert_clean_log(operator)
