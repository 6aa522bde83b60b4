"""Chained mode through the operator: several steps per pod, and none of them lost when the pod dies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_operator_contacts import HAPPY_STEPS

from conftest import Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow, step

CHAINED = {"mode": "Chained", "maxStepsPerPod": 10, "maxPodSeconds": 300}


def chain_workflow(data_dir: Path, kill: str = "") -> dict[str, Any]:
    env = [{"name": "CHAIN_DATA_DIR", "value": str(data_dir)}, {"name": "CHAIN_KILL", "value": kill}]
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "four-steps"},
        "spec": {
            "triggers": [{"event": "test/chain"}],
            "image": "example.invalid/chain-flows:1.0",
            "function": "chain_flows:four_steps",
            "retries": {"limit": 2, "backoff": {"initial": "1s", "factor": 1, "max": "1s", "jitter": "0s"}},
            "execution": CHAINED,
            "podTemplate": {"env": env},
        },
    }


def chain_event() -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": "go"},
        "spec": {"name": "test/chain", "data": {}},
    }


def starts(data_dir: Path, step_id: str) -> list[str]:
    trace = data_dir / f"{step_id}.log"
    return trace.read_text().splitlines() if trace.exists() else []


def test_a_chained_pod_killed_in_its_third_step_keeps_the_two_it_finished(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(chain_workflow(tmp_path, kill="s3"))
    cluster.apply(chain_event())

    run = cluster.wait_run(timeout=240)

    status = run["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == 10
    assert [s["id"] for s in status["steps"]] == ["s1", "s2", "s3", "s4"]
    # Steps 1 and 2 finished in the pod that died: recorded from its log, never executed again.
    assert starts(tmp_path, "s1") == ["1 start"]
    assert starts(tmp_path, "s2") == ["1 start"]
    assert starts(tmp_path, "s3") == ["1 start", "2 start"]
    assert starts(tmp_path, "s4") == ["1 start"]
    for step_id, output in (("s1", 1), ("s2", 2), ("s4", 4)):
        recorded = step(run, step_id)
        assert recorded["output"] == output
        assert [a["result"] for a in recorded["attempts"]] == ["Succeeded"]
    first, second = step(run, "s1")["attempts"][0], step(run, "s2")["attempts"][0]
    assert first["job"] == second["job"]  # one pod, two steps
    s3 = step(run, "s3")
    assert [a["number"] for a in s3["attempts"]] == [1, 2]
    assert s3["attempts"][0]["result"] != "Succeeded" and s3["attempts"][0]["exitCode"] == 137
    assert s3["attempts"][0]["job"] == first["job"]
    # The killed attempt's log tail is its own step's, not the lines of the steps before it in the pod.
    tail = s3["attempts"][0].get("logTail", "")
    assert "working on s3" in tail and "working on s1" not in tail, tail
    # The dead pod, the retry of s3 (a retry runs alone), then s4 and the function's end.
    jobs = cluster.items("jobs", f"kubestep.dev/run={run['metadata']['name']}")
    assert len(jobs) == 3, [j["metadata"]["name"] for j in jobs]
    assert_clean_log(operator)


def test_contacts_example_succeeds_chained_with_the_same_outputs_in_fewer_pods(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(contacts_workflow(tmp_path, execution=CHAINED))
    cluster.apply(contacts_event())

    run = cluster.wait_run(timeout=240)

    status = run["status"]
    assert status["phase"] == "Succeeded", status
    assert [s["id"] for s in status["steps"]] == HAPPY_STEPS
    assert step(run, "validate-upload-contents")["output"]["valid"] is True
    assert len(step(run, "enrich-address-information")["output"]) == 5
    assert step(run, "create-contacts-in-crm")["output"] == {"total_users_added": 5}
    assert all(len(s["attempts"]) == 1 for s in status["steps"] if s["type"] == "run")
    jobs = cluster.items("jobs", f"kubestep.dev/run={run['metadata']['name']}")
    assert len(jobs) < 4, [j["metadata"]["name"] for j in jobs]
    assert cluster.items("secrets", f"kubestep.dev/run={run['metadata']['name']}") == []
    assert_clean_log(operator)
