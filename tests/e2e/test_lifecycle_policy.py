"""Per-step policy through the operator, on the real control plane: `spec.steps` gives one step its own
retries and pod resources, `StepOptions` in code gives one its own timeout, and other steps keep the
workflow's settings. The workflow lives in ``tests/e2e/flows/lifecycle_flows.py``."""

from __future__ import annotations

import json
from typing import Any

from conftest import Cluster, Operator, assert_clean_log, step

FLOWS = "lifecycle_flows"
#: Short, fixed delays between attempts: the test is about how many, not how long.
QUICK_RETRIES = {"limit": 2, "backoff": {"initial": "500ms", "factor": 1, "max": "500ms", "jitter": "0s"}}


def policy_workflow(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "policy-flow"},
        "spec": {
            "triggers": [{"event": "test/policy.requested"}],
            "image": "ghcr.io/example/lifecycle-flows:test",
            "function": f"{FLOWS}:policy_flow",
            "retries": QUICK_RETRIES,
            "podTemplate": {"resources": {"limits": {"cpu": "1", "memory": "256Mi"}}},
            **spec,
        },
    }


def policy_event(name: str, succeeds_at: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": "test/policy.requested", "data": {"succeedsAt": succeeds_at}},
    }


def test_spec_steps_gives_the_flaky_step_six_attempts_and_the_heavy_step_its_own_pod(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(
        policy_workflow(
            steps={
                "flaky": {"retries": 5},
                "heav*": {"resources": {"limits": {"memory": "2Gi"}, "requests": {"memory": "1Gi"}}},
            }
        )
    )
    cluster.apply(policy_event("policy-1", succeeds_at=6))

    run = cluster.wait_run(timeout=240)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert run["status"]["output"] == {"flaky": 6, "steady": "failed: Unavailable", "heavy": "crunched"}

    flaky = step(run, "flaky")
    assert [a["result"] for a in flaky["attempts"]] == ["Error"] * 5 + ["Succeeded"], flaky["attempts"]
    assert flaky["policy"]["retries"] == 5 and flaky["policy"]["retriesFrom"] == "spec.steps[flaky]"
    assert flaky["policy"]["matched"] == ["flaky"]

    # The step no entry matches keeps the workflow's retries: 2, so 3 attempts, then it fails for good.
    steady = step(run, "steady")
    assert steady["phase"] == "Failed" and steady["attemptCount"] == 3, steady
    assert steady["policy"]["retriesFrom"] == "spec.retries.limit"

    heavy = step(run, "heavy")
    assert heavy["policy"]["code"] == {"timeoutSeconds": 300.0}
    assert (heavy["policy"]["timeout"], heavy["policy"]["timeoutFrom"]) == ("5m", "code")
    assert heavy["policy"]["matched"] == ["heav*"]

    # Each pod's resources: the override is on the heavy step's pod only, merged over the template.
    pods = cluster.items("pods", f"kubestep.dev/run={run['metadata']['name']}")
    by_step: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_step.setdefault(pod["metadata"]["annotations"].get("kubestep.dev/step", "(first)"), []).append(pod)
    assert set(by_step) >= {"(first)", "flaky", "steady", "heavy"}, sorted(by_step)
    for step_id, step_pods in by_step.items():
        for pod in step_pods:
            container = pod["spec"]["containers"][0]
            if step_id == "heavy":
                # (Kubernetes fills a request left unset, here CPU, from the limit.)
                assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}, container
                assert container["resources"]["requests"]["memory"] == "1Gi", container
                assert pod["spec"]["activeDeadlineSeconds"] == 300
            else:
                limits = container["resources"]["limits"]
                assert limits == {"cpu": "1", "memory": "256Mi"}, (step_id, container)
                assert "activeDeadlineSeconds" not in pod["spec"], (step_id, pod["spec"])
    assert len(by_step["heavy"]) == 1
    assert_clean_log(operator)


def test_a_bad_step_policy_is_refused_by_the_api_server(cluster: Cluster) -> None:
    result = cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(policy_workflow(steps={"flaky": {"retries": 50, "timeout": "1 minute"}})),
        check=False,
    )
    assert result.returncode != 0
    assert "spec.steps.flaky.retries" in result.stderr and "20" in result.stderr, result.stderr
    assert "'1 minute' is not a duration" in result.stderr, result.stderr
