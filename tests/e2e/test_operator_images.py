"""The contacts example's steps run in the example's image (built FROM the runner image), as users ship it."""

from __future__ import annotations

from pathlib import Path

from conftest import CONTACTS, Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow
from kubecp.pytest_images import PushedImages
from kubecp.testing import wait_for


def test_the_contacts_steps_run_in_the_example_image_as_its_user(
    operator: Operator, cluster: Cluster, kubestep_images: PushedImages
) -> None:
    image = kubestep_images.push_from_runner("examples/contacts", CONTACTS / "Dockerfile", CONTACTS)
    # The CRM and outbox live in the pod's own file system, where the image's user may write.
    cluster.apply(contacts_workflow(Path("/tmp/contacts"), image=image))
    cluster.apply(contacts_event())

    run = cluster.wait_run()

    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert run["status"]["progress"] == "5 done"
    pods = cluster.items("pods", f"kubestep.dev/run={run['metadata']['name']}")
    assert len(pods) >= 4
    repository = image.rsplit(":", 1)[0]
    for pod in pods:
        [status] = pod["status"]["containerStatuses"]
        assert status["imageID"].startswith(f"{repository}@sha256:"), status
        assert status["state"]["terminated"]["reason"] == "Completed", status
    assert_clean_log(operator)


def test_a_workflow_whose_image_is_missing_says_why_then_fails_with_the_pull_error(
    operator: Operator, cluster: Cluster, kubestep_images: PushedImages, tmp_path: Path
) -> None:
    # The registry answers, but nobody pushed this tag: the node reports ErrImagePull, then backs off.
    missing = f"{kubestep_images.registry.host}/examples/contacts:never-pushed"
    workflow = contacts_workflow(
        tmp_path, image=missing, timeouts={"podStart": "20s"}, retries={"limit": 0, "disruptionLimit": 0}
    )
    cluster.apply(workflow)
    cluster.apply(contacts_event())

    # While it waits, the run says why (its first execution has no step to show it on) ...
    def pull_error_shown() -> str | None:
        runs = cluster.runs()
        status = runs[0].get("status", {}) if runs else {}
        for condition in status.get("conditions", []):
            if condition["type"] == "Succeeded" and "pod has not started" in condition["message"]:
                return str(condition["message"])
        return None

    message = wait_for(pull_error_shown, timeout=60, interval=0.5, what="the run to say why its pod waits")
    assert "ErrImagePull" in message or "ImagePullBackOff" in message, message
    assert "never-pushed" in message, message
    assert cluster.runs()[0]["status"]["phase"] == "Running"
    # ... as the node does on the pod, and a Kubernetes Event on the run.
    run_name = cluster.runs()[0]["metadata"]["name"]
    [waiting] = [
        status["state"]["waiting"]
        for pod in cluster.items("pods", f"kubestep.dev/run={run_name}")
        for status in pod["status"].get("containerStatuses", [])
        if "waiting" in status["state"]
    ]
    assert waiting["reason"] in ("ErrImagePull", "ImagePullBackOff"), waiting
    events = cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={run_name}").stdout
    assert "RunPending" in events, events

    # Past spec.timeouts.podStart, with no retry left, it fails with the pull error: never a silent stall.
    run = cluster.wait_run(timeout=180)
    status = run["status"]
    assert status["phase"] == "Failed", status
    assert status["error"]["type"] in ("ErrImagePull", "ImagePullBackOff"), status["error"]
    assert "did not start within spec.timeouts.podStart (20s)" in status["error"]["message"], status["error"]
    assert "never-pushed" in status["error"]["message"], status["error"]
    wait_for(
        lambda: not cluster.items("pods", f"kubestep.dev/run={run_name}"), what="the run's pod to be gone"
    )
    assert_clean_log(operator)
