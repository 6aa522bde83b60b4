"""kubestep's generated CRDs on the real API server: accepted, documented, defaulted and validating."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecp.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "contacts"


def apply(cp: ControlPlane, namespace: str, manifest: dict[str, Any]) -> Any:
    return cp.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)


def workflow(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "wf"},
        "spec": {"triggers": [{"event": "app/go"}], "image": "img", "function": "app.flows:main", **spec},
    }


def test_the_examples_are_accepted_and_listed_with_short_names(
    kubestep_crds: ControlPlane, namespace: str
) -> None:
    for name in ("workflow.yaml", "event.yaml", "event-invalid.yaml"):
        kubestep_crds.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE / name))
    table = kubestep_crds.kubectl("get", "ksw", "-n", namespace).stdout
    assert "process-contacts-csv-upload" in table and "READY" in table
    events = kubestep_crds.kubectl("get", "kse", "-n", namespace).stdout
    assert "api/contact_list.uploaded" in events
    everything = kubestep_crds.kubectl("get", "kubestep", "-n", namespace, "-o", "name").stdout.split()
    assert len(everything) == 3


def test_defaults_are_applied_by_the_api_server(kubestep_crds: ControlPlane, namespace: str) -> None:
    assert apply(kubestep_crds, namespace, workflow()).returncode == 0
    stored = json.loads(kubestep_crds.kubectl("get", "ksw", "wf", "-n", namespace, "-o", "json").stdout)
    retries = stored["spec"]["retries"]
    assert retries["limit"] == 4 and retries["disruptionLimit"] == 10
    assert retries["backoff"] == {"initial": "15s", "factor": 2, "max": "1h", "jitter": "30s"}
    assert stored["spec"]["limits"] == {"stepOutputBytes": 65536, "runOutputBytes": 524288}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"function": "no-colon"}, "spec.function"),
        ({"retries": {"limit": 99}}, "spec.retries.limit"),
        ({"retries": {"backoff": {"factor": 0.5}}}, "spec.retries.backoff.factor"),
        (
            {"retries": {"backoff": {"initial": "2h", "max": "1h"}}},
            "initial (2h) is longer than retries.backoff.max (1h)",
        ),
        ({"timeouts": {"step": "2h", "run": "1h"}}, "timeouts.step (2h) is longer than timeouts.run (1h)"),
        ({"limits": {"stepOutputBytes": 4096, "runOutputBytes": 2048}}, "lower stepOutputBytes or raise"),
        ({"timeouts": {"step": "1d"}}, "spec.timeouts.step"),
        ({"triggers": [{"event": "app/go"}, {"event": "app/go"}]}, "same event more than once"),
        ({"triggers": []}, "spec.triggers"),
    ],
)
def test_invalid_workflows_are_rejected_with_a_message_naming_the_problem(
    kubestep_crds: ControlPlane, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    proc = apply(kubestep_crds, namespace, workflow(**spec))
    assert proc.returncode != 0, f"accepted: {spec}"
    assert expected in proc.stderr


def test_kubectl_explain_documents_every_level(kubestep_crds: ControlPlane) -> None:
    text = kubestep_crds.kubectl("explain", "ksw.spec.retries.backoff.jitter").stdout
    assert "random time is added to each delay" in text
    text = kubestep_crds.kubectl("explain", "ksr.status.steps.attempts.result").stdout
    assert "Disruption" in text
    text = kubestep_crds.kubectl("explain", "kse.spec.id").stdout
    assert "Idempotency key" in text


def test_a_runs_frozen_inputs_cannot_change_but_cancel_can(
    kubestep_crds: ControlPlane, namespace: str
) -> None:
    run = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": "r1"},
        "spec": {
            "workflowRef": {"name": "wf"},
            "workflow": workflow()["spec"],
            "event": {"name": "app/go", "data": {"n": 1}},
        },
    }
    assert apply(kubestep_crds, namespace, run).returncode == 0
    changed = json.dumps({"spec": {"event": {"name": "app/go", "data": {"n": 2}}}})
    proc = kubestep_crds.kubectl(
        "patch", "ksr", "r1", "-n", namespace, "--type=merge", "-p", changed, check=False
    )
    assert proc.returncode != 0 and "spec.event" in proc.stderr and "immutable" in proc.stderr
    cancel = json.dumps({"spec": {"cancel": True}})
    kubestep_crds.kubectl("patch", "ksr", "r1", "-n", namespace, "--type=merge", "-p", cancel)
    # Status is a subresource: a write to the main resource does not touch it.
    phase = json.dumps({"status": {"phase": "Succeeded"}})
    kubestep_crds.kubectl("patch", "ksr", "r1", "-n", namespace, "--type=merge", "-p", phase)
    stored = json.loads(kubestep_crds.kubectl("get", "ksr", "r1", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["cancel"] is True
    assert stored.get("status", {}).get("phase") != "Succeeded"
    columns = kubestep_crds.kubectl("get", "ksr", "-n", namespace).stdout.splitlines()[0].split()
    assert columns[:6] == ["NAME", "WORKFLOW", "PHASE", "PROGRESS", "STEP", "ATTEMPT"]
