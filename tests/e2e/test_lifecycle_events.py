"""A run's end as an Event, on the real control plane: a failed run publishes exactly one
`kubestep/run.failed` Event (also when the operator is killed at the moment of failure), its
`spec.onFailure` handler runs once and sees the error, and users cannot publish `kubestep/` events.
The workflows live in ``tests/e2e/flows/lifecycle_flows.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for

FLOWS = "lifecycle_flows"


def doomed_workflow(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "doomed-flow"},
        "spec": {
            "triggers": [{"event": "test/doomed.requested"}],
            "image": "ghcr.io/example/lifecycle-flows:test",
            "function": f"{FLOWS}:doomed_flow",
            "onFailure": {"function": f"{FLOWS}:on_doomed_failure"},
            **spec,
        },
    }


def an_event(name: str, event_name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": event_name, "data": data},
    }


def runs_of(cluster: Cluster, started_by: str) -> list[dict[str, Any]]:
    return [r for r in cluster.runs() if r["spec"]["event"]["name"] == started_by]


def end_events(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    return [e for e in cluster.items("events.kubestep.dev") if e["spec"]["name"] == kind]


def finished(cluster: Cluster, started_by: str, count: int = 1) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        runs = runs_of(cluster, started_by)
        assert len(runs) <= count, [r["metadata"]["name"] for r in runs]
        ended = [
            r for r in runs if (r.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Cancelled")
        ]
        return ended if len(ended) == count else None

    return wait_for(done, timeout=180, interval=0.3, what=f"{count} run(s) started by {started_by} to end")


def check_one_failure_announced(cluster: Cluster, marker: Path) -> None:
    (failed,) = finished(cluster, "test/doomed.requested")
    name = failed["metadata"]["name"]
    assert failed["status"]["phase"] == "Failed", failed["status"]
    (handler,) = finished(cluster, "kubestep/run.failed")
    assert handler["status"]["phase"] == "Succeeded", handler["status"]
    assert handler["spec"]["workflowRef"]["name"] == "doomed-flow"
    assert handler["spec"]["workflow"]["function"] == f"{FLOWS}:on_doomed_failure"
    # The handler saw the failed run and its error.
    line = f"{name}: NonRetriableError: the CRM is gone (step explode)"
    assert handler["status"]["output"] == line
    assert marker.read_text().splitlines() == [line]
    (announced,) = end_events(cluster, "kubestep/run.failed")
    assert announced["metadata"]["name"] == f"kubestep.run.{name}"
    data = announced["spec"]["data"]
    assert (data["workflow"], data["run"], data["phase"]) == ("doomed-flow", name, "Failed")
    assert data["error"] == {"type": "NonRetriableError", "message": "the CRM is gone", "step": "explode"}
    assert data["event"]["data"]["marker"] == str(marker)
    # Read again: the run may have been read as Failed before the pass that announces its end.
    assert cluster.get("workflowruns.kubestep.dev", name)["status"]["announced"] is True
    # The handler's own end is not announced: handlers never chain.
    assert end_events(cluster, "kubestep/run.finished") == []
    assert "announced" not in handler["status"]


def test_a_failed_run_publishes_one_event_and_its_on_failure_handler_sees_the_error(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "failures.txt"
    cluster.apply(doomed_workflow())
    cluster.apply(
        an_event("doomed-1", "test/doomed.requested", {"marker": str(marker), "reason": "the CRM is gone"})
    )
    check_one_failure_announced(cluster, marker)
    # Other ends are announced too, and any Workflow can trigger on them.
    assert_clean_log(operator)


def test_an_operator_killed_at_the_moment_of_failure_publishes_the_event_once(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "failures.txt"
    cluster.apply(doomed_workflow())
    cluster.apply(
        an_event("doomed-1", "test/doomed.requested", {"marker": str(marker), "reason": "the CRM is gone"})
    )

    def failed() -> bool:
        runs = runs_of(cluster, "test/doomed.requested")
        return bool(runs) and (runs[0].get("status") or {}).get("phase") == "Failed"

    wait_for(failed, timeout=120, interval=0.05, what="the run to fail")
    operator.kill()  # right after the final status was saved: the announcement may or may not be out
    announced_before_restart = len(end_events(cluster, "kubestep/run.failed"))
    operator.start()
    check_one_failure_announced(cluster, marker)
    print(f"run.failed Events present when the operator was killed: {announced_before_restart}")
    assert_clean_log(operator)


def test_users_cannot_publish_events_under_the_reserved_prefix(cluster: Cluster) -> None:
    forged = an_event("forged", "kubestep/run.failed", {"workflow": "doomed-flow", "run": "x"})
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(forged), check=False)
    assert result.returncode != 0
    assert "reserved for the events kubestep publishes itself" in result.stderr, result.stderr
    # A name under another prefix that merely contains it is fine.
    cluster.apply(an_event("fine", "api/kubestep/run.failed", {}))
