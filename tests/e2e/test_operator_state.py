"""How a step pod receives its input (the event and the outputs of the steps before it) with no API
credentials: a small one in the pod's own annotation, a large one from a Secret owned by the run."""

from __future__ import annotations

from typing import Any

from test_operator_failures import event, flow_workflow

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for


def _state_volume(job: dict[str, Any]) -> dict[str, Any]:
    (volume,) = job["spec"]["template"]["spec"]["volumes"]
    assert isinstance(volume, dict)
    return volume


def _step_jobs(cluster: Cluster, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each step's Job, as its attempt recorded it."""
    jobs = {
        job["metadata"]["name"]: job
        for job in cluster.items("jobs", f"kubestep.dev/run={run['metadata']['name']}")
    }
    return {step["id"]: jobs[step["attempts"][0]["job"]] for step in run["status"]["steps"]}


def test_a_small_input_rides_in_the_pod_and_a_large_one_in_a_secret_removed_when_the_run_ends(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(flow_workflow("relay", "relay_flow", "test/relay.requested"))
    # 30,000 characters: past what a pod's annotation carries (16 KiB), within every output limit.
    cluster.apply(event("relay-1", "test/relay.requested", {"bytes": 30_000}))

    run = cluster.wait_run(timeout=180)

    status = run["status"]
    assert status["phase"] == "Succeeded", {k: v for k, v in status.items() if k != "steps"}
    # The second step replayed the first from its input and saw all of its output.
    assert status["output"] == {"length": 30_000}
    assert [s["id"] for s in status["steps"]] == ["make-blob", "measure"]
    assert all(len(s["attempts"]) == 1 for s in status["steps"])

    jobs = _step_jobs(cluster, run)
    # The first step's input is the small event alone: its pod carries it, no Secret was made for it.
    first = _state_volume(jobs["make-blob"])
    assert "downwardAPI" in first, first
    # The second's holds the first step's 30,000 characters: it came from a Secret of the run ...
    second = _state_volume(jobs["measure"])
    assert second.get("secret", {}).get("secretName") == jobs["measure"]["metadata"]["name"], second
    # ... deleted once the run ended (its output is in the run's status), right after the end was saved.
    selector = f"kubestep.dev/run={run['metadata']['name']}"
    wait_for(lambda: cluster.items("secrets", selector) == [], timeout=60, what="the run's Secrets deleted")
    assert_clean_log(operator)
