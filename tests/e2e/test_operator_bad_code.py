"""Workflow code that misbehaves in ways the SDK cannot prevent: each answered on the step concerned, the
operator carrying on."""

from __future__ import annotations

from test_operator_failures import event, flow_workflow, run_jobs

from conftest import Cluster, Operator, assert_clean_log, step
from kubecp.testing import wait_for


def test_an_unencodable_message_is_recorded_on_its_step_and_retried(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(flow_workflow("odd-names", "odd_names_flow", "test/odd.requested"))
    cluster.apply(event("odd-1", "test/odd.requested"))

    run = cluster.wait_run(timeout=120)

    assert run["status"]["phase"] == "Succeeded", run["status"]
    attempts = step(run, "read-upload")["attempts"]
    assert [(a["result"], a["reason"]) for a in attempts] == [
        ("Error", "FileNotFoundError"),
        ("Succeeded", "Completed"),
    ]
    assert attempts[0]["message"] == "no such upload: caf\\udce9.csv", attempts[0]
    assert_clean_log(operator)


def test_an_unencodable_output_fails_its_step_not_retried(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("odd-names", "odd_names_flow", "test/odd.requested"))
    cluster.apply(event("odd-2", "test/odd.requested", {"return_odd": True}))

    run = cluster.wait_run(timeout=120)

    status = run["status"]
    assert status["phase"] == "Failed", status
    listing = step(run, "list-uploads")
    assert [a["result"] for a in listing["attempts"]] == ["NonRetriable"]
    assert "step 'list-uploads'" in listing["error"]["message"], listing
    assert "not valid Unicode" in listing["error"]["message"], listing
    assert status["error"]["step"] == "list-uploads", status["error"]
    assert_clean_log(operator)


def test_sys_exit_outside_a_step_fails_the_run_at_once(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("exit", "exit_flow", "test/exit.requested"))
    cluster.apply(event("exit-1", "test/exit.requested"))

    run = cluster.wait_run(timeout=120)

    status = run["status"]
    assert status["phase"] == "Failed", status
    assert "sys.exit(3)" in status["error"]["message"] and "outside any step" in status["error"]["message"]
    assert step(run, "first")["phase"] == "Succeeded"
    # At once: the step's own Job reported the exit after its output; no execution was retried.
    assert len(run_jobs(cluster, run["metadata"]["name"])) == 1
    assert status["discoveryFailures"] == 0
    # The operator carries on: a good run afterwards succeeds.
    cluster.apply(flow_workflow("odd-names", "odd_names_flow", "test/odd.requested"))
    cluster.apply(event("odd-3", "test/odd.requested"))

    def good_run_done() -> bool:
        runs = [r for r in cluster.runs() if r["spec"]["workflowRef"]["name"] == "odd-names"]
        return bool(runs) and runs[0].get("status", {}).get("phase") == "Succeeded"

    wait_for(good_run_done, timeout=120, what="a good run after the bad one")
    assert_clean_log(operator)
