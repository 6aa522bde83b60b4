"""The contacts example's steps run in the example's image (built FROM the runner image), as users ship it."""

from __future__ import annotations

from pathlib import Path

from conftest import CONTACTS, Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow
from kubecp.pytest_images import PushedImages


def test_the_contacts_steps_run_in_the_example_image_as_its_user(
    operator: Operator, cluster: Cluster, kubestep_images: PushedImages
) -> None:
    image = kubestep_images.push_from_runner("examples/contacts", CONTACTS / "Dockerfile", CONTACTS)
    # The CRM and outbox live in the pod's own file system, where the image's user may write.
    cluster.apply(contacts_workflow(Path("/tmp/contacts"), image=image))
    cluster.apply(contacts_event())

    run = cluster.wait_run()

    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert run["status"]["progress"] == "5/5"
    pods = cluster.items("pods", f"kubestep.dev/run={run['metadata']['name']}")
    assert len(pods) >= 4
    repository = image.rsplit(":", 1)[0]
    for pod in pods:
        [status] = pod["status"]["containerStatuses"]
        assert status["imageID"].startswith(f"{repository}@sha256:"), status
        assert status["state"]["terminated"]["reason"] == "Completed", status
    assert_clean_log(operator)
