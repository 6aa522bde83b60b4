"""Exactly-once starts outlive the runs, on the real control plane: an event id whose run was deleted by
hand inside the dedupe window still starts nothing when published again."""

from __future__ import annotations

from typing import Any

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for


def an_event(name: str, event_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": "test/quick.requested", "id": event_id, "data": {}},
    }


def processed(cluster: Cluster, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = cluster.get("events.kubestep.dev", name)
        conditions = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Processed"), None)

    return wait_for(done, timeout=60, interval=0.2, what=f"event {name} to be processed")


def test_an_event_id_whose_run_was_deleted_still_starts_nothing_inside_the_window(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(
        {
            "apiVersion": "kubestep.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "quick-flow"},
            "spec": {
                "triggers": [{"event": "test/quick.requested"}],
                "image": "ghcr.io/example/lifecycle-flows:test",
                "function": "lifecycle_flows:quick_flow",
            },
        }
    )
    cluster.apply(an_event("upload-1", "upload-0001"))
    run = cluster.wait_run()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert processed(cluster, "upload-1")["reason"] == "RunsStarted"
    # Deleted by hand: its name is free again.
    cluster.kubectl("delete", "workflowruns.kubestep.dev", run["metadata"]["name"], "--wait=true")
    assert cluster.runs() == []

    cluster.apply(an_event("upload-1-again", "upload-0001"))
    condition = processed(cluster, "upload-1-again")
    assert condition["reason"] == "Duplicate", condition
    assert "upload-1" in condition["message"] and "upload-0001" in condition["message"], condition
    assert cluster.runs() == []
    # Another id still starts a run.
    cluster.apply(an_event("upload-2", "upload-0002"))
    assert processed(cluster, "upload-2")["reason"] == "RunsStarted"
    assert len(cluster.runs()) == 1
    assert_clean_log(operator)
