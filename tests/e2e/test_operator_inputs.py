"""Bad input as a user writes it, through kubectl and the operator: each refused with a message naming the
field, the value and the fix, by the API server where it can tell, otherwise on the object's status; the
operator carries on and a good run still succeeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow
from kubecp.testing import wait_for


def nest(depth: int) -> Any:
    """``depth`` levels of objects around a string."""
    value: Any = "deep"
    for _ in range(depth):
        value = {"a": value}
    return value


def processed(cluster: Cluster, name: str) -> dict[str, str]:
    """The Event's Processed condition, once the operator set it."""

    def condition() -> dict[str, str] | None:
        conditions = cluster.get("events.kubestep.dev", name).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Processed"), None)

    return wait_for(condition, timeout=60, what=f"the Processed condition of Event {name}")


def refused(cluster: Cluster, manifest: dict[str, Any]) -> str:
    """What `kubectl apply` says when the API server refuses ``manifest``."""
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0, f"accepted: {manifest}"
    return proc.stderr


def test_bad_input_is_refused_in_words_and_a_good_run_still_succeeds(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    good = contacts_workflow(tmp_path)

    def workflow_with(**spec: Any) -> dict[str, Any]:
        manifest = json.loads(json.dumps(good))
        for key, value in spec.items():
            manifest["spec"][key] = (
                {**manifest["spec"].get(key, {}), **value} if isinstance(value, dict) else value
            )
        return manifest

    # Refused by the API server, at apply.
    said = refused(cluster, workflow_with(timeouts={"step": "5 minutes"}))
    assert "spec.timeouts.step: Invalid value: \"5 minutes\": '5 minutes' is not a duration;" in said
    assert "e.g. 30s, 1h30m or 48h" in said and "type conversion error" not in said
    said = refused(cluster, workflow_with(timeouts={"step": "100000000h"}))
    assert "'100000000h' is longer than 8784h (366 days), the longest duration kubestep accepts" in said
    said = refused(cluster, workflow_with(function="contacts.workflows"))
    assert "is not module:function;" in said and "e.g. contacts.workflows:process" in said
    said = refused(cluster, workflow_with(podTemplate={"resources": {"limits": {"cpu": "2 cores"}}}))
    assert (
        "spec.podTemplate.resources.limits[cpu]: Invalid value: \"2 cores\": '2 cores' is not a quantity"
        in said
    )
    accented = contacts_event("accented")
    accented["spec"]["name"] = "api/liste_validée"
    said = refused(cluster, accented)
    assert "'api/liste_validée' is not a valid event name; use ASCII letters" in said
    assert cluster.items("workflows.kubestep.dev") == []

    cluster.apply(good)
    # Admitted (the API server cannot measure the depth of free JSON), refused by the operator.
    deep = contacts_event("deep", id="deep-upload", data={"filename": "uploads/contacts.csv", "x": nest(199)})
    cluster.apply(deep)
    condition = processed(cluster, "deep")
    assert (condition["status"], condition["reason"]) == ("False", "InvalidEvent"), condition
    assert condition["message"] == (
        "spec.data nests 200 levels deep, more than the 64 an Event may hold; flatten it, or keep the "
        "document in object storage and send a reference to it; fix the field and publish a new Event"
    )
    assert cluster.runs() == []

    # A published Event cannot be changed into a good one: the message says to publish a new one.
    fixed = contacts_event("deep", id="deep-upload")
    said = refused(cluster, fixed)
    assert "an Event's spec cannot change once published; publish a new Event (a new metadata.name)" in said

    cluster.apply(contacts_event("good-one", id="good-upload"))
    run = cluster.wait_run()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert processed(cluster, "good-one")["reason"] == "RunsStarted"
    assert_clean_log(operator)


def test_a_run_written_by_hand_runs_its_own_spec_even_naming_no_workflow(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    """A WorkflowRun holds the whole spec it runs, as an Argo Workflow does: `workflowRef` names where it came
    from, and a run never depends on its Workflow still existing (deleting a Workflow leaves its runs be)."""
    workflow = contacts_workflow(tmp_path)
    event = contacts_event()["spec"]
    run = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": "by-hand"},
        "spec": {"workflowRef": {"name": "no-such-workflow"}, "workflow": workflow["spec"], "event": event},
    }
    cluster.apply(run)

    finished = cluster.wait_run()
    assert finished["metadata"]["name"] == "by-hand"
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    assert finished["status"]["output"]["imported"] > 0, finished["status"]
    assert cluster.items("workflows.kubestep.dev") == []
    assert_clean_log(operator)
