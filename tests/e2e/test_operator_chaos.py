"""Chaos: about 20 concurrent runs (topped up while the chaos lasts) while step pods and Jobs are deleted
at random moments and the operator is SIGKILLed again and again.

Every run must succeed; every deletion must be recorded on the step it interrupted (``Disruption`` or
``Lost``), with the retry budget untouched; every time a step body ran (its trace says so) there must be a
recorded attempt of that number; and no attempt name may ever get a second Job.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from conftest import Cluster, JobRecorder, Operator, assert_clean_log, assert_no_attempt_has_two_jobs
from kubecp.cluster import ControlPlane
from kubecp.testing import wait_for

RUNS = 20
POD_DELETIONS = 5
JOB_DELETIONS = 3
KILLS = 15
STEPS = ("fetch", "parse", "transform", "enrich", "load", "report")
LABEL_STEP = "kubestep.dev/step"
INTERRUPTED = {"Disruption", "Lost"}


def chaos_workflow(data_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "chaos-flow"},
        "spec": {
            "triggers": [{"event": "test/chaos"}],
            "image": "example.invalid/chaos-flows:1.0",
            "function": "chaos_flows:chaos_flow",
            "retries": {"limit": 2, "backoff": {"initial": "1s", "factor": 1, "max": "1s", "jitter": "0s"}},
            "timeouts": {"step": "3m", "run": "30m"},
            "podTemplate": {"env": [{"name": "CHAOS_DATA_DIR", "value": str(data_dir)}]},
            # Every run is inspected at the end: none may be collected by the default history of 50.
            "history": {"succeeded": 10000, "failed": 10000},
        },
    }


def chaos_event(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": f"chaos-{index}"},
        "spec": {"name": "test/chaos", "data": {"index": index}},
    }


class Chaos:
    """Deletes step pods and Jobs the way a user or the cluster would, remembering what it deleted."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.pods: list[dict[str, str]] = []  # job, step, attempt, pod
        self.jobs: list[dict[str, str]] = []  # job, uid, step, attempt

    def running_step_pods(self) -> list[dict[str, Any]]:
        pods = self.cluster.items("pods", LABEL_STEP)
        return [
            p
            for p in pods
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    def delete_pod(self) -> bool:
        candidates = self.running_step_pods()
        if not candidates:
            return False
        pod = self.rng.choice(candidates)
        meta = pod["metadata"]
        self.cluster.kubectl("delete", "pod", meta["name"], "--wait=false", check=False)
        self.pods.append(
            {
                "job": meta["labels"]["job-name"],
                "step": meta["annotations"]["kubestep.dev/step"],
                "attempt": meta["annotations"]["kubestep.dev/attempt"],
                "pod": meta["name"],
            }
        )
        return True

    def delete_job(self) -> bool:
        busy = {p["metadata"]["labels"]["job-name"] for p in self.running_step_pods()}
        jobs = [j for j in self.cluster.items("jobs", LABEL_STEP) if j["metadata"]["name"] in busy]
        if not jobs:
            return False
        job = self.rng.choice(jobs)
        meta = job["metadata"]
        self.cluster.kubectl("delete", "job", meta["name"], "--wait=false", check=False)
        self.jobs.append(
            {
                "job": meta["name"],
                "uid": meta["uid"],
                "step": meta["annotations"]["kubestep.dev/step"],
                "attempt": meta["annotations"]["kubestep.dev/attempt"],
            }
        )
        return True


def traces(data_dir: Path, run: str) -> list[tuple[str, int, str]]:
    path = data_dir / f"{run}.log"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(step_id, int(attempt), what) for step_id, attempt, what in lines]


def attempts_by_job(run: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {a["job"]: (s["id"], a) for s in run["status"]["steps"] for a in s.get("attempts") or []}


# A load with 15 operator restarts takes a few minutes on an idle machine; far more on a loaded one.
@pytest.mark.timeout(1800)
def test_runs_survive_deleted_pods_and_jobs_and_a_crashing_operator(
    operator: Operator, cluster: Cluster, kubestep_crds: ControlPlane, tmp_path: Path
) -> None:
    jobs = JobRecorder(client.BatchV1Api(kubestep_crds.api_client()), cluster.namespace)
    jobs.start()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"chaos seed {seed}")
    data_dir = tmp_path / "traces"
    data_dir.mkdir()
    cluster.apply(chaos_workflow(data_dir))
    published = 0

    def top_up() -> None:
        # Keep about RUNS runs in flight until the chaos is done, however fast this machine runs them.
        nonlocal published
        finished = sum(
            1
            for r in cluster.runs()
            if r.get("status", {}).get("phase") in ("Succeeded", "Failed", "Cancelled")
        )
        missing = RUNS - (published - finished)
        if missing >= RUNS // 2:
            cluster.apply(*(chaos_event(i) for i in range(published, published + missing)))
            published += missing

    top_up()
    chaos = Chaos(cluster, rng)

    def all_finished() -> bool:
        runs = cluster.runs()
        return len(runs) == published and all(
            r.get("status", {}).get("phase") in ("Succeeded", "Failed", "Cancelled") for r in runs
        )

    kills = 0
    began = time.monotonic()
    deadline = began + 900
    while kills < KILLS or len(chaos.pods) < POD_DELETIONS or len(chaos.jobs) < JOB_DELETIONS:
        assert time.monotonic() < deadline, (kills, chaos.pods, chaos.jobs)
        # The timeline is printed, so a failure shows how the load went.
        print(
            f"{time.monotonic() - began:5.0f}s kills {kills} pods {len(chaos.pods)} jobs {len(chaos.jobs)}"
            f" published {published}"
        )
        top_up()
        if kills < KILLS:
            # Kill it while it works, not while Python is still importing: wait until it has acted on
            # some run since it started (bounded, as a busy machine may hold everything up).
            wait_for(
                lambda: operator.log_since_start().strip() != "",
                timeout=120,
                interval=0.2,
                what="the restarted operator to act on a run",
            )
        time.sleep(rng.uniform(0.5, 2.0))
        if len(chaos.jobs) < JOB_DELETIONS and (len(chaos.pods) >= POD_DELETIONS or rng.random() < 0.4):
            chaos.delete_job()
        elif len(chaos.pods) < POD_DELETIONS:
            chaos.delete_pod()
        time.sleep(rng.uniform(0.5, 2.0))
        if kills < KILLS:
            operator.kill()
            kills += 1
            # A pod deleted while the operator is down must be recorded just the same.
            if len(chaos.pods) < POD_DELETIONS and rng.random() < 0.3:
                time.sleep(rng.uniform(0.2, 1.5))
                chaos.delete_pod()
            time.sleep(rng.uniform(0.0, 2.0))
            operator.start()
    assert published >= RUNS

    wait_for(all_finished, timeout=600, interval=2, what="every run to end")
    runs = {r["metadata"]["name"]: r for r in cluster.runs()}
    failed = {n: r["status"].get("error") for n, r in runs.items() if r["status"]["phase"] != "Succeeded"}
    assert not failed, failed

    recorded = {
        job: (name, step_id, a)
        for name, r in runs.items()
        for job, (step_id, a) in attempts_by_job(r).items()
    }
    for deleted in [*chaos.pods, *chaos.jobs]:
        job = deleted["job"]
        assert job in recorded, f"deletion of {deleted} is recorded on no step"
        run, step_id, attempt = recorded[job]
        assert step_id == deleted["step"] and str(attempt["number"]) == deleted["attempt"], (deleted, attempt)
        finished = (step_id, attempt["number"], "ok") in traces(data_dir, run)
        if not finished:
            # The body never returned: the attempt must say the cluster took it away.
            assert attempt["result"] in INTERRUPTED, (deleted, attempt)
        else:
            assert attempt["result"] in INTERRUPTED | {"Succeeded"}, (deleted, attempt)

    for name, run in runs.items():
        trace = traces(data_dir, name)
        starts = Counter((s, n) for s, n, what in trace if what == "start")
        twice = {key: count for key, count in starts.items() if count > 1}
        assert not twice, f"run {name}: an attempt's body ran more than once: {twice}"
        for step_status in run["status"]["steps"]:
            numbers = {a["number"] for a in step_status["attempts"]}
            ran = {n for s, n in starts if s == step_status["id"]}
            assert ran <= numbers, f"run {name} step {step_status['id']}: bodies {ran}, attempts {numbers}"
            # Nothing here fails by itself: every retry was the cluster's doing and spent no budget.
            assert step_status["failures"] == 0, step_status
            assert step_status["phase"] == "Succeeded", step_status
        assert [s["id"] for s in run["status"]["steps"]] == list(STEPS)

    # No attempt name was ever given a second Job, among every Job the watch saw created.
    jobs.stop()
    assert_no_attempt_has_two_jobs(jobs, cluster)
    assert {d["uid"] for d in chaos.jobs} <= set(jobs.jobs)
    assert operator.starts == KILLS + 1
    assert_clean_log(operator)
