"""The CRD rules of debounce and batch on the real API server: a held run's event may change while the run
is open and never after; `spec.gather` only closes; debounce with batch is refused naming both."""

from __future__ import annotations

import json
from typing import Any

from test_kubestep_crds import apply, workflow

from kubecp.cluster import ControlPlane


def patch(cp: ControlPlane, namespace: str, spec: dict[str, Any]) -> Any:
    body = json.dumps({"spec": spec})
    return cp.kubectl("patch", "ksr", "r1", "-n", namespace, "--type=merge", "-p", body, check=False)


def test_a_held_runs_event_changes_until_it_is_released(kubestep_crds: ControlPlane, namespace: str) -> None:
    gather = {"kind": "Debounce", "firstAt": "2026-03-01T12:00:00Z", "lastAt": "2026-03-01T12:00:00Z"}
    run = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": "r1"},
        "spec": {
            "workflowRef": {"name": "wf"},
            "workflow": workflow(debounce={"period": "3s"})["spec"],
            "event": {"name": "app/go", "data": {"v": 1}},
            "gather": gather,
        },
    }
    assert apply(kubestep_crds, namespace, run).returncode == 0
    newer = {"event": {"name": "app/go", "data": {"v": 2}}, "gather": {"lastAt": "2026-03-01T12:00:01Z"}}
    assert patch(kubestep_crds, namespace, newer).returncode == 0
    assert patch(kubestep_crds, namespace, {"gather": {"open": False}}).returncode == 0
    proc = patch(kubestep_crds, namespace, {"event": {"name": "app/go", "data": {"v": 3}}})
    assert proc.returncode != 0 and "spec.event is immutable" in proc.stderr
    proc = patch(kubestep_crds, namespace, {"gather": {"open": True}})
    assert proc.returncode != 0 and "spec.gather is fixed once the run is released" in proc.stderr
    stored = json.loads(kubestep_crds.kubectl("get", "ksr", "r1", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["event"]["data"] == {"v": 2}


def test_debounce_with_batch_is_refused_naming_both(kubestep_crds: ControlPlane, namespace: str) -> None:
    both = workflow(debounce={"period": "3s"}, batch={"maxSize": 5, "timeout": "5s"})
    proc = apply(kubestep_crds, namespace, both)
    assert proc.returncode != 0
    assert "spec.debounce and spec.batch are both set" in proc.stderr
    short = workflow(batch={"maxSize": 101, "timeout": "500ms"})
    proc = apply(kubestep_crds, namespace, short)
    assert proc.returncode != 0
    assert "batch.timeout is shorter than 1s" in proc.stderr and "maxSize" in proc.stderr
