"""Garbage collection on the real control plane: with `history: {succeeded: 2}`, after 5 runs only the 2
newest succeeded runs remain, and the Jobs of the others are gone with them."""

from __future__ import annotations

from typing import Any

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for


def test_history_keeps_the_two_newest_succeeded_runs(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(
        {
            "apiVersion": "kubestep.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "quick-flow"},
            "spec": {
                "triggers": [{"event": "test/quick.requested"}],
                "image": "ghcr.io/example/lifecycle-flows:test",
                "function": "lifecycle_flows:quick_flow",
                # Jobs kept for an hour after their run ended: the kept runs' Jobs must still be there.
                "history": {"succeeded": 2, "jobsAfterFinished": "1h"},
            },
        }
    )
    started: list[str] = []
    for i in range(5):
        cluster.apply(
            {
                "apiVersion": "kubestep.dev/v1alpha1",
                "kind": "Event",
                "metadata": {"name": f"quick-{i}"},
                "spec": {"name": "test/quick.requested", "data": {}},
            }
        )

        def run_of_event(name: str = f"quick-{i}") -> str | None:
            status = cluster.get("events.kubestep.dev", name).get("status") or {}
            return next((r["run"] for r in status.get("started") or []), None)

        run = wait_for(run_of_event, timeout=60, interval=0.2, what=f"the run of event quick-{i}")
        started.append(run)

        def succeeded(run: str = run) -> bool:
            return cluster.get("workflowruns.kubestep.dev", run)["status"].get("phase") == "Succeeded"

        wait_for(succeeded, timeout=120, interval=0.3, what=f"run {run} to succeed")

    def two_left() -> list[dict[str, Any]] | None:
        runs = cluster.runs()
        return runs if len(runs) == 2 else None

    remaining = wait_for(two_left, timeout=60, interval=0.3, what="the older runs to be collected")
    assert sorted(r["metadata"]["name"] for r in remaining) == sorted(started[-2:])
    assert all(r["status"]["phase"] == "Succeeded" for r in remaining)
    # The collected runs' Jobs went with them (owner references); the kept runs keep theirs for the hour.
    for run in started[:3]:
        wait_for(
            lambda run=run: cluster.items("jobs", f"kubestep.dev/run={run}") == [],
            timeout=60,
            interval=0.5,
            what=f"the Jobs of run {run} to be deleted",
        )
    assert all(cluster.items("jobs", f"kubestep.dev/run={run}") for run in started[-2:])
    status = cluster.get("workflows.kubestep.dev", "quick-flow")["status"]
    assert status["succeeded"] == 2, status
    assert_clean_log(operator)
