"""Jobs as the user sees them: planned steps run side by side, a vanished Job is retried as lost,
and a Workflow's status counts its runs."""

from __future__ import annotations

from pathlib import Path

from test_operator_failures import event, flow_workflow, running_step_pods, start_slow_step

from conftest import Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow, step
from kubecp.testing import wait_for


def test_planned_parallel_steps_run_at_the_same_time(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("parallel-flow", "parallel_flow", "test/parallel.requested"))
    cluster.apply(event("parallel-1", "test/parallel.requested", {"seconds": 3}))

    run = cluster.wait_run(timeout=90)

    assert run["status"]["phase"] == "Succeeded", run["status"]
    left, right = run["status"]["output"]["left"], run["status"]["output"]["right"]
    # Each slept 3 s: run one after the other they could not overlap by more than a moment.
    overlap = min(left["ended"], right["ended"]) - max(left["began"], right["began"])
    assert overlap > 2.0, (left, right)
    jobs = {a["job"] for sid in ("left", "right") for a in step(run, sid)["attempts"]}
    assert len(jobs) == 2
    assert_clean_log(operator)


def test_a_job_deleted_while_its_step_runs_is_recorded_as_lost_and_retried(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    name = start_slow_step(cluster, tmp_path / "slow.marker", 4)
    running = running_step_pods(cluster, name)
    job = running[0]["metadata"]["labels"]["batch.kubernetes.io/job-name"]
    cluster.kubectl("delete", "job", job, "--wait=false")

    run = cluster.wait_run(timeout=90)

    assert run["status"]["phase"] == "Succeeded", run["status"]
    slow = step(run, "slow-step")
    assert [(a["result"], a["job"] == job) for a in slow["attempts"]] == [
        ("Lost", True),
        ("Succeeded", False),
    ]
    assert slow["failures"] == 0, "a vanished Job does not spend the retry budget"
    assert_clean_log(operator)


def test_the_workflow_status_counts_its_runs(operator: Operator, cluster: Cluster, tmp_path: Path) -> None:
    cluster.apply(contacts_workflow(tmp_path))
    cluster.apply(contacts_event())
    cluster.wait_run()

    def counted() -> dict[str, object] | None:
        status = cluster.get("workflows.kubestep.dev", "process-contacts-csv-upload").get("status", {})
        return status if status.get("succeeded") == 1 else None

    status = wait_for(counted, timeout=20, what="the workflow to count its succeeded run")
    assert (status["active"], status["failed"], status["observedGeneration"]) == (0, 0, 1)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert_clean_log(operator)
