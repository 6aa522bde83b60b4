"""Objects the API server admits but that cannot work: the user is told where, the operator carries on."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from conftest import Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow
from kubecp.testing import wait_for


def test_a_step_job_the_api_server_refuses_fails_the_run_with_the_reason(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    workflow = contacts_workflow(tmp_path)
    # Admitted by the Workflow's schema (node selector keys are not checked there), refused in a Job.
    workflow["spec"]["podTemplate"]["nodeSelector"] = {"not a label key!": "batch"}
    workflow["spec"]["retries"] = {"limit": 1, "backoff": {"initial": "1s", "jitter": "0s"}}
    cluster.apply(workflow)
    cluster.apply(contacts_event())

    run = cluster.wait_run(timeout=120)

    status = run["status"]
    assert status["phase"] == "Failed", status
    assert status["error"]["type"] == "JobRejected", status["error"]
    assert "nodeSelector" in status["error"]["message"], status["error"]
    assert "spec.podTemplate" in status["error"]["message"], status["error"]
    assert cluster.items("jobs", f"kubestep.dev/run={run['metadata']['name']}") == []
    # Not retried: the same Job would be refused again.
    assert status["discoveryFailures"] <= 1, status
    assert_clean_log(operator)


def test_an_event_the_models_cannot_read_says_why_and_starts_nothing(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(contacts_workflow(tmp_path))
    # The CRD's `date-time` format lets year 0 through; no run can be given such a timestamp.
    cluster.apply(contacts_event("year-zero", ts="0000-01-01T00:00:00Z"))

    def refused() -> dict[str, str] | None:
        conditions = cluster.get("events.kubestep.dev", "year-zero").get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Processed"), None)

    condition = wait_for(refused, timeout=30, what="the Event's Processed condition")
    assert (condition["status"], condition["reason"]) == ("False", "InvalidEvent"), condition
    assert "ts" in condition["message"], condition
    assert cluster.runs() == []
    # The operator still works: a good event afterwards starts its run.
    cluster.apply(contacts_event("good-one", id="another-upload"))
    assert cluster.wait_run()["status"]["phase"] == "Succeeded"
    assert_clean_log(operator)


def test_a_job_whose_pod_can_never_be_created_fails_with_the_kubernetes_reason_in_bounded_time(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    workflow = contacts_workflow(tmp_path)
    # Admitted everywhere, but the ServiceAccount admission refuses every pod of the Job: FailedCreate.
    workflow["spec"]["podTemplate"]["serviceAccountName"] = "no-such-account"
    workflow["spec"]["timeouts"] = {"podStart": "20s"}
    workflow["spec"]["retries"] = {"limit": 0, "disruptionLimit": 0}
    cluster.apply(workflow)
    cluster.apply(contacts_event())

    run = cluster.wait_run(timeout=180)

    status = run["status"]
    assert status["phase"] == "Failed", status
    error = status["error"]
    assert error["type"] == "FailedCreate", error
    assert "did not start within spec.timeouts.podStart (20s)" in error["message"], error
    assert 'serviceaccount "no-such-account" not found' in error["message"], error
    # Never a run left Running: it ended no earlier than the bound, and nothing of it is left running.
    started, finished = status["startedAt"], status["finishedAt"]
    assert timestamp(finished) - timestamp(started) >= timedelta(seconds=20), (started, finished)
    assert cluster.items("pods", f"kubestep.dev/run={run['metadata']['name']}") == []
    assert [
        j
        for j in cluster.items("jobs", f"kubestep.dev/run={run['metadata']['name']}")
        if not j["metadata"].get("deletionTimestamp")
    ] == []
    assert_clean_log(operator)


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
