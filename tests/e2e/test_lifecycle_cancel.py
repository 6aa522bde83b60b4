"""`spec.cancelOn` on the real control plane: a matching Event cancels a running run within 2 s (its pod
stopped, later steps never run, `status.error` naming the Event); a non-matching Event changes nothing.
The workflow lives in ``tests/e2e/flows/lifecycle_flows.py``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for

#: Event creation times are stamped in whole seconds (rounded down), so a measured gap is up to 1 s long.
STAMP_SLACK = 1.0


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def an_event(name: str, event_name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": event_name, "data": data},
    }


def test_a_matching_event_cancels_the_run_and_a_non_matching_one_changes_nothing(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "marker.txt"
    cluster.apply(
        {
            "apiVersion": "kubestep.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "cancellable-flow"},
            "spec": {
                "triggers": [{"event": "test/cancellable.requested"}],
                "image": "ghcr.io/example/lifecycle-flows:test",
                "function": "lifecycle_flows:cancellable_flow",
                "cancelOn": [
                    {"event": "test/upload.deleted", "if": "async.data.upload == event.data.upload"},
                ],
            },
        }
    )
    cluster.apply(an_event("go-1", "test/cancellable.requested", {"marker": str(marker), "upload": "u1"}))
    wait_for(
        lambda: marker.exists() and "slow step started" in marker.read_text(),
        timeout=120,
        interval=0.1,
        what="the slow step to start",
    )
    (run,) = cluster.runs()
    name = run["metadata"]["name"]

    def running_pods() -> list[str]:
        pods = cluster.items("pods", f"kubestep.dev/run={name}")
        return [
            p["metadata"]["name"]
            for p in pods
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    (slow_pod,) = wait_for(running_pods, timeout=30, interval=0.2, what="the slow step's pod to run")

    # Another upload's deletion: nothing changes.
    cluster.apply(an_event("deleted-other", "test/upload.deleted", {"upload": "u2"}))
    wait_for(
        lambda: "Processed" in str(cluster.get("events.kubestep.dev", "deleted-other").get("status")),
        timeout=30,
        interval=0.2,
        what="the other deletion to be processed",
    )
    run = cluster.get("workflowruns.kubestep.dev", name)
    assert run["status"]["phase"] == "Running", run["status"]
    assert running_pods() == [slow_pod]

    # This upload's deletion cancels the run.
    cluster.apply(an_event("deleted-mine", "test/upload.deleted", {"upload": "u1"}))
    run = wait_for(
        lambda: (r := cluster.get("workflowruns.kubestep.dev", name))["status"]["phase"] == "Cancelled" and r,
        timeout=30,
        interval=0.1,
        what="the run to be cancelled",
    )
    published = when(cluster.get("events.kubestep.dev", "deleted-mine")["metadata"]["creationTimestamp"])
    gap = (when(run["status"]["finishedAt"]) - published).total_seconds()
    print(f"cancelled {gap:.2f}s after the Event's (whole-second) creation time")
    assert gap <= 2.0 + STAMP_SLACK, gap
    assert run["status"]["error"]["type"] == "Cancelled"
    assert "Event deleted-mine" in run["status"]["error"]["message"], run["status"]["error"]
    slow = next(s for s in run["status"]["steps"] if s["id"] == "slow-step")
    assert slow["phase"] == "Cancelled" and slow["attempts"][-1]["result"] == "Cancelled"
    # Its pod is stopped, and the later step never runs.
    wait_for(lambda: running_pods() == [], timeout=30, interval=0.2, what="the slow step's pod to stop")
    lines = marker.read_text().splitlines()
    assert "after ran" not in lines and "slow step finished" not in lines, lines
    assert [s["id"] for s in run["status"]["steps"]] == ["prepare", "slow-step"]
    assert_clean_log(operator)
