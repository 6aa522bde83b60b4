"""kubestep's generated CRDs on the real API server: accepted, documented, defaulted and validating."""

from __future__ import annotations

import json
import re
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


DURATION = (
    "is not a duration; write a number and a unit (ms, s, m or h; a day is 24h), e.g. 30s, 1h30m or 48h"
)
TOO_LONG = "is longer than 8784h (366 days), the longest duration kubestep accepts; use 8784h or less"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"timeouts": {"step": "5 minutes"}},
            f"spec.timeouts.step: Invalid value: \"5 minutes\": '5 minutes' {DURATION}",
        ),
        (
            {"timeouts": {"step": "-1s", "run": "1h"}},
            f"spec.timeouts.step: Invalid value: \"-1s\": '-1s' {DURATION}",
        ),
        ({"timeouts": {"run": "1y"}}, f"spec.timeouts.run: Invalid value: \"1y\": '1y' {DURATION}"),
        (
            {"retries": {"backoff": {"initial": "5 minutes", "max": "1h"}}},
            f"spec.retries.backoff.initial: Invalid value: \"5 minutes\": '5 minutes' {DURATION}",
        ),
        (
            {"timeouts": {"step": "100000000h"}},
            f"spec.timeouts.step: Invalid value: \"100000000h\": '100000000h' {TOO_LONG}",
        ),
        (
            {"timeouts": {"step": "8785h"}},
            f"spec.timeouts.step: Invalid value: \"8785h\": '8785h' {TOO_LONG}",
        ),
        ({"retries": {"backoff": {"max": "999999999999s"}}}, f"'999999999999s' {TOO_LONG}"),
        (
            {"function": "contacts.workflows"},
            "spec.function: Invalid value: \"contacts.workflows\": 'contacts.workflows' is not "
            "module:function; write the module's import path, a colon and the function's name, "
            "e.g. contacts.workflows:process",
        ),
        (
            {"triggers": [{"event": "api/liste_validée"}]},
            "spec.triggers[0].event: Invalid value: \"api/liste_validée\": 'api/liste_validée' is not a "
            "valid event name; use ASCII letters, digits and the characters . _ - in parts joined by /, each "
            "part starting with a letter or a digit, e.g. api/contact_list.uploaded",
        ),
        (
            {"podTemplate": {"resources": {"limits": {"cpu": "2 cores", "memory": "256Mi"}}}},
            "spec.podTemplate.resources.limits[cpu]: Invalid value: \"2 cores\": '2 cores' is not a "
            "quantity; write a number with an optional unit, e.g. 500m or 2 for CPU, 256Mi or 1Gi for memory",
        ),
        (
            {"podTemplate": {"resources": {"requests": {"memory": -1}}}},
            "spec.podTemplate.resources.requests[memory]",
        ),
        (
            {"podTemplate": {"tolerations": [{"key": "batch", "operator": "Sometimes"}]}},
            'spec.podTemplate.tolerations[0].operator: Unsupported value: "Sometimes"',
        ),
        ({"podTemplate": {"env": [{"value": "x"}]}}, "spec.podTemplate.env[0].name: Required value"),
    ],
)
def test_bad_values_are_refused_at_apply_with_one_message_in_words(
    kubestep_crds: ControlPlane, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    proc = apply(kubestep_crds, namespace, workflow(**spec))
    assert proc.returncode != 0, f"accepted: {spec}"
    assert expected in proc.stderr
    # No bare regular expression, no CEL type error from a rule comparing a value that does not parse.
    assert "should match" not in proc.stderr and "^" not in proc.stderr, proc.stderr
    assert "type conversion error" not in proc.stderr and "no such overload" not in proc.stderr, proc.stderr
    problems = re.findall(r"spec\.[^ ]*: (?:Invalid|Unsupported|Required) value", proc.stderr)
    assert len(problems) == 1, proc.stderr


def test_the_longest_durations_and_a_full_pod_template_are_accepted(
    kubestep_crds: ControlPlane, namespace: str
) -> None:
    pod_template = {
        "serviceAccountName": "steps",
        "resources": {"limits": {"cpu": 2, "memory": "1Gi", "nvidia.com/gpu": 1}, "requests": {"cpu": "0.5"}},
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}},
            {"name": "C", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "cm"}}],
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "regcred"}],
    }
    spec = {
        "timeouts": {"step": "8784h", "run": "8784h"},
        "retries": {"backoff": {"initial": "1h", "max": "8784h", "jitter": "0s"}},
        "podTemplate": pod_template,
    }
    assert apply(kubestep_crds, namespace, workflow(**spec)).returncode == 0
    stored = json.loads(kubestep_crds.kubectl("get", "ksw", "wf", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["podTemplate"] == pod_template, "kept as written, nothing pruned"


def event(object_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": object_name},
        "spec": {"name": "app/go", **spec},
    }


def test_an_events_spec_cannot_change_once_published(kubestep_crds: ControlPlane, namespace: str) -> None:
    assert apply(kubestep_crds, namespace, event("upload-1", data={"rows": 3})).returncode == 0
    # Applying the same Event again is harmless.
    again = apply(kubestep_crds, namespace, event("upload-1", data={"rows": 3}))
    assert again.returncode == 0 and "unchanged" in again.stdout
    changed = apply(kubestep_crds, namespace, event("upload-1", data={"rows": 4}))
    assert changed.returncode != 0
    assert (
        "spec: Invalid value: spec is immutable: an Event's spec cannot change once published; publish a new "
        "Event (a new metadata.name) instead"
    ) in changed.stderr
    stored = json.loads(kubestep_crds.kubectl("get", "kse", "upload-1", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["data"] == {"rows": 3}
    # Labels and annotations may still change.
    kubestep_crds.kubectl("label", "kse", "upload-1", "-n", namespace, "seen=yes")


def test_an_event_name_outside_ascii_is_refused_in_words(kubestep_crds: ControlPlane, namespace: str) -> None:
    proc = apply(kubestep_crds, namespace, event("accents", name="api/liste_validée"))
    assert proc.returncode != 0
    assert (
        "spec.name: Invalid value: \"api/liste_validée\": 'api/liste_validée' is not a valid event name;"
        in (proc.stderr)
    )
    assert "e.g. api/contact_list.uploaded" in proc.stderr


def test_the_size_limits_of_an_event_are_those_the_readme_states(
    kubestep_crds: ControlPlane, namespace: str
) -> None:
    """kubectl apply keeps a copy of the object in an annotation (256 KiB at most); server-side apply and
    create do not, and go up to what etcd stores (about 1.5 MiB)."""
    big = event("big", data={"blob": "x" * 300_000})
    proc = apply(kubestep_crds, namespace, big)
    assert proc.returncode != 0 and "metadata.annotations: Too long" in proc.stderr
    manifest = yaml.safe_dump(big)
    kubestep_crds.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)
    huge = yaml.safe_dump(event("huge", data={"blob": "x" * 1_000_000}))
    kubestep_crds.kubectl("create", "-n", namespace, "-f", "-", input=huge)
    too_big = yaml.safe_dump(event("too-big", data={"blob": "x" * 2_000_000}))
    proc = kubestep_crds.kubectl("create", "-n", namespace, "-f", "-", input=too_big, check=False)
    assert proc.returncode != 0 and "too large" in proc.stderr.lower(), proc.stderr


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
