"""Garbage collection on the real control plane, beyond the runs themselves: the step Jobs of finished runs
go (their log tails stay in the runs' status, for `kubestep logs` and `kubectl describe`), and Events go
after the operator's dedupe window unless an unfinished run refers to them, without ever letting a
re-published `spec.id` start a second run inside the window."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, Operator, assert_clean_log
from kubecp.cluster import ControlPlane
from kubecp.testing import wait_for

KUBESTEP = Path(sys.executable).parent / "kubestep"
#: The operator's dedupe window in the Event test: Events go about twice this long after they were published.
WINDOW_SECONDS = 20


def workflow(name: str, event: str, function: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "triggers": [{"event": event}],
            "image": "ghcr.io/example/gc-flows:test",
            "function": f"gc_flows:{function}",
            **spec,
        },
    }


def an_event(name: str, event: str, event_id: str | None = None, **data: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": event, "data": data}
    if event_id:
        spec["id"] = event_id
    return {"apiVersion": "kubestep.dev/v1alpha1", "kind": "Event", "metadata": {"name": name}, "spec": spec}


def processed(cluster: Cluster, name: str) -> dict[str, Any]:
    """An Event's `Processed` condition, once it has one."""

    def done() -> dict[str, Any] | None:
        conditions = (cluster.get("events.kubestep.dev", name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Processed"), None)

    return wait_for(done, timeout=60, interval=0.2, what=f"event {name} to be processed")


def started_run(cluster: Cluster, name: str) -> str:
    def run() -> str | None:
        status = cluster.get("events.kubestep.dev", name).get("status") or {}
        return next((r["run"] for r in status.get("started") or []), None)

    return wait_for(run, timeout=60, interval=0.2, what=f"the run of event {name}")


def phase(cluster: Cluster, run: str) -> str | None:
    """The run's phase (None once it is gone)."""
    found = cluster.runs()
    return next(((r.get("status") or {}).get("phase") for r in found if r["metadata"]["name"] == run), None)


def event_names(cluster: Cluster) -> set[str]:
    return {e["metadata"]["name"] for e in cluster.items("events.kubestep.dev")}


def kubestep(cluster: Cluster, *args: str) -> str:
    """``kubestep ARGS`` as a user types it; its output."""
    result = subprocess.run(
        [str(KUBESTEP), *args, "-n", cluster.namespace, "--kubeconfig", str(cluster.cp.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KUBECONFIG": "/nonexistent"},
    )
    assert result.returncode == 0, f"kubestep {' '.join(args)}: {result.returncode}\n{result.stderr}"
    return result.stdout


def test_history_keeps_two_runs_whose_jobs_are_gone_and_whose_log_tails_stay(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(
        workflow(
            "printing-flow",
            "test/print.requested",
            "printing_flow",
            history={"succeeded": 2, "jobsAfterFinished": "0s"},
        )
    )
    started: list[str] = []
    for i in range(5):
        cluster.apply(an_event(f"print-{i}", "test/print.requested", who=f"run number {i}"))
        run = started_run(cluster, f"print-{i}")
        started.append(run)
        wait_for(
            lambda run=run: (
                cluster.get("workflowruns.kubestep.dev", run)["status"].get("phase") == "Succeeded"
            ),
            timeout=120,
            interval=0.3,
            what=f"run {run} to succeed",
        )

    def two_left() -> list[dict[str, Any]] | None:
        runs = cluster.runs()
        return runs if len(runs) == 2 else None

    remaining = wait_for(two_left, timeout=60, interval=0.3, what="the older runs to be collected")
    assert sorted(r["metadata"]["name"] for r in remaining) == sorted(started[-2:])
    # Every run's Jobs and pods are gone, the kept runs' too (`jobsAfterFinished: 0s`).
    wait_for(
        lambda: cluster.items("jobs", "app.kubernetes.io/managed-by=kubestep") == [],
        timeout=60,
        interval=0.5,
        what="every step Job to be deleted",
    )
    wait_for(
        lambda: cluster.items("pods", "app.kubernetes.io/managed-by=kubestep") == [],
        timeout=60,
        interval=0.5,
        what="every step pod to be deleted with its Job",
    )
    for i, run in [(3, started[3]), (4, started[4])]:
        line = f"hello from run number {i}"
        status = cluster.get("workflowruns.kubestep.dev", run)["status"]
        (attempt,) = [a for s in status["steps"] for a in s.get("attempts") or []]
        assert line in attempt["logTail"], attempt
        assert attempt["result"] == "Succeeded"
        logs = kubestep(cluster, "logs", run)
        assert line in logs and "(recorded)" in logs, logs
        described = cluster.kubectl("describe", "workflowruns.kubestep.dev", run).stdout
        assert line in described, described
    assert_clean_log(operator)


@pytest.fixture
def short_window(kubestep_crds: ControlPlane, restricted: str, tmp_path: Path) -> Iterator[Operator]:
    """An operator whose dedupe window is WINDOW_SECONDS."""
    op = Operator(
        kubestep_crds, restricted, tmp_path / "operator.log", args=["--dedupe-window", f"{WINDOW_SECONDS}s"]
    )
    op.start()
    yield op
    op.stop()


def test_events_go_after_the_window_unless_an_unfinished_run_refers_to_them(
    short_window: Operator, cluster: Cluster
) -> None:
    cluster.apply(
        workflow(
            "printing-flow",
            "test/print.requested",
            "printing_flow",
            history={"succeeded": 0, "jobsAfterFinished": "0s"},
        )
    )
    cluster.apply(workflow("held-flow", "test/gc.hold", "held_flow"))
    # A run that stays unfinished, waiting: the Event that started it is kept past the window.
    cluster.apply(an_event("hold", "test/gc.hold"))
    held = started_run(cluster, "hold")
    wait_for(lambda: phase(cluster, held) == "Waiting", timeout=120, interval=0.3, what=f"{held} to wait")

    first_published = time.monotonic()
    cluster.apply(an_event("order-1", "test/print.requested", "order-0001", who="the first order"))
    assert processed(cluster, "order-1")["reason"] == "RunsStarted"
    # `history: {succeeded: 0}` collects its run as soon as it succeeded...
    wait_for(
        lambda: cluster.items("workflowruns.kubestep.dev", "kubestep.dev/workflow=printing-flow") == [],
        timeout=120,
        interval=0.3,
        what="the run of order-1 to succeed and be collected",
    )
    # ... and the same id published again inside the window still starts nothing.
    cluster.apply(an_event("order-1-again", "test/print.requested", "order-0001", who="a duplicate"))
    duplicate = processed(cluster, "order-1-again")
    assert time.monotonic() - first_published < WINDOW_SECONDS, "the duplicate came too late to test"
    assert duplicate["reason"] == "Duplicate" and "order-0001" in duplicate["message"], duplicate
    assert cluster.items("workflowruns.kubestep.dev", "kubestep.dev/workflow=printing-flow") == []

    # Past the window (and its grace), both go; the one whose run still waits stays.
    wait_for(
        lambda: not {"order-1", "order-1-again"} & event_names(cluster),
        timeout=4 * WINDOW_SECONDS + 60,
        interval=1,
        what="the handled Events past their window to be deleted",
    )
    assert "hold" in event_names(cluster)
    assert phase(cluster, held) == "Waiting"

    # Its run finishes: then it goes too, and so does the Event that resumed it, once past its window.
    cluster.apply(an_event("release", "test/gc.release"))
    wait_for(lambda: phase(cluster, held) == "Succeeded", timeout=120, interval=0.3, what=f"{held} to end")
    wait_for(
        lambda: not {"hold", "release"} & event_names(cluster),
        timeout=4 * WINDOW_SECONDS + 60,
        interval=1,
        what="the Events of the finished run to be deleted",
    )
    assert_clean_log(short_window)
