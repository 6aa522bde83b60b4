"""Pods whose image is on a registry on loopback run in that image, as the kubelet would run them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from kubecp.cluster import ControlPlane
from kubecp.pytest_images import PushedImages
from kubecp.testing import wait_for

ROOT = Path(__file__).resolve().parents[2]
CONTACTS = ROOT / "examples" / "contacts"
ECHO = Path(__file__).resolve().parent / "images" / "echo"

# What the step's code checks and reports; it would fail on the node's own Python environment.
STEP_CHECKS = """
import json, os, stat
import contacts.workflows, kubestep
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
open("/scratch/written", "w").write("ok")
open("/tmp/written", "w").write("ok")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "cwd": os.getcwd(), "home": os.environ.get("HOME"),
    "contacts": contacts.workflows.__file__, "kubestep": kubestep.__file__,
    "tmp_mode": oct(stat.S_IMODE(os.stat("/tmp").st_mode)),
    "token": len(open(sa + "/token").read()) > 0,
    "ca": open(sa + "/ca.crt").read().startswith("-----BEGIN CERTIFICATE-----"),
    "namespace": open(sa + "/namespace").read(),
    "hostname": open("/etc/hostname").read().strip(),
    "no_new_privs": [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0],
}))
"""


def create(control_plane: ControlPlane, namespace: str, *manifests: dict[str, Any]) -> None:
    documents = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(documents))


def pod(name: str, image: str, **container: Any) -> dict[str, Any]:
    spec = container.pop("pod_spec", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, **container}],
            **spec,
        },
    }


def read_pod(api_client: Any, namespace: str, name: str) -> client.V1Pod:
    return client.CoreV1Api(api_client).read_namespaced_pod(name, namespace)


def finished(api_client: Any, namespace: str, name: str) -> client.V1Pod | None:
    found = read_pod(api_client, namespace, name)
    return found if found.status and found.status.phase in ("Succeeded", "Failed") else None


def output(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    done = wait_for(lambda: finished(api_client, namespace, name), timeout=120, what=f"pod {name} finished")
    log = client.CoreV1Api(api_client).read_namespaced_pod_log(name, namespace)
    assert done.status.phase == "Succeeded", log
    result: dict[str, Any] = json.loads(log.strip().splitlines()[-1])
    return result


def waiting(api_client: Any, namespace: str, name: str, reason: str) -> client.V1ContainerStateWaiting:
    """The container's waiting state, once it has ``reason``."""

    def probe() -> client.V1ContainerStateWaiting | None:
        statuses = read_pod(api_client, namespace, name).status.container_statuses or []
        state = statuses[0].state.waiting if statuses and statuses[0].state else None
        return state if state is not None and state.reason == reason else None

    return wait_for(probe, what=f"{name} waiting with {reason}")


def test_a_step_of_the_example_runs_in_its_image_as_the_runner_user(
    control_plane: ControlPlane, api_client: Any, namespace: str, kubestep_images: PushedImages
) -> None:
    example = kubestep_images.push_from_runner("examples/contacts", CONTACTS / "Dockerfile", CONTACTS)
    # As a step Job's pod: restricted, no user of its own (the image's USER applies).
    create(
        control_plane,
        namespace,
        pod(
            "step",
            example,
            command=["python", "-c", STEP_CHECKS],
            securityContext={
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": True,
            },
            volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
            pod_spec={
                "automountServiceAccountToken": True,
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        ),
    )
    seen = output(api_client, namespace, "step")
    assert seen["uid"] == seen["gid"] == 65532
    assert seen["contacts"] == "/app/contacts/workflows.py"
    assert seen["kubestep"].startswith("/opt/kubestep/")
    assert seen["cwd"] == "/app"
    assert seen["tmp_mode"] == "0o1777"
    assert seen["token"] and seen["ca"] and seen["namespace"] == namespace
    assert seen["hostname"] == "step"
    assert seen["no_new_privs"] == "1"  # allowPrivilegeEscalation: false
    [status] = read_pod(api_client, namespace, "step").status.container_statuses
    repository = example.rsplit(":", 1)[0]
    assert status.image == example
    assert status.image_id.startswith(f"{repository}@sha256:")


def test_command_args_env_and_working_dir_combine_with_the_image_by_kubernetes_rules(
    control_plane: ControlPlane, api_client: Any, namespace: str, kubestep_images: PushedImages
) -> None:
    echo = kubestep_images.push_from_runner("kubestep-tests/echo", ECHO / "Dockerfile", ECHO)
    create(
        control_plane,
        namespace,
        pod("image-defaults", echo),
        # The operator image's entrypoint is `kubestep operator`: its flags are the pod's args.
        pod("operator-help", kubestep_images.operator, args=["--help"]),
        pod("args-replace-cmd", echo, args=["a", "$(WHO)"], env=[{"name": "WHO", "value": "pod"}]),
        pod(
            "command-replaces-both",
            echo,
            command=["python", "/srv/echo.py", "from-command"],
            env=[{"name": "GREETING", "value": "from-pod"}],
            workingDir="/tmp",
        ),
    )
    assert output(api_client, namespace, "image-defaults") == {
        "argv": ["from-cmd"],
        "cwd": "/srv",
        "greeting": "from-image",
        "only_in_image": "kept",
        "uid": 65532,
    }
    assert output(api_client, namespace, "args-replace-cmd")["argv"] == ["a", "pod"]
    wait_for(lambda: finished(api_client, namespace, "operator-help"), timeout=120, what="operator --help")
    help_text = client.CoreV1Api(api_client).read_namespaced_pod_log("operator-help", namespace)
    assert read_pod(api_client, namespace, "operator-help").status.phase == "Succeeded", help_text
    assert "Run the kubestep operator" in help_text
    replaced = output(api_client, namespace, "command-replaces-both")
    assert replaced["argv"] == ["from-command"]
    assert (replaced["cwd"], replaced["greeting"], replaced["only_in_image"]) == ("/tmp", "from-pod", "kept")


def test_the_pods_user_groups_and_volume_ownership_apply_and_root_is_refused_when_non_root_is_required(
    control_plane: ControlPlane, api_client: Any, namespace: str, kubestep_images: PushedImages
) -> None:
    code = """
import json, os, stat
open("/data/written", "w").write("ok")
secret = os.stat("/secret/key")
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "data_gid": os.stat("/data").st_gid, "secret": open("/secret/key").read(),
    "secret_mode": oct(stat.S_IMODE(secret.st_mode)), "secret_gid": secret.st_gid}))
"""
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace, {"metadata": {"name": "s"}, "stringData": {"key": "value"}}
    )
    create(
        control_plane,
        namespace,
        pod(
            "as-user",
            kubestep_images.runner,
            command=["python", "-c", code],
            volumeMounts=[
                {"name": "data", "mountPath": "/data"},
                {"name": "secret", "mountPath": "/secret"},
            ],
            pod_spec={
                "securityContext": {
                    "runAsUser": 1234,
                    "runAsGroup": 2345,
                    "fsGroup": 3456,
                    "supplementalGroups": [4567],
                },
                "volumes": [
                    {"name": "data", "emptyDir": {}},
                    {"name": "secret", "secret": {"secretName": "s", "defaultMode": 0o400}},
                ],
            },
        ),
        pod(
            "root",
            kubestep_images.runner,
            command=["python", "-c", "print('never')"],
            securityContext={"runAsUser": 0, "runAsNonRoot": True},
        ),
    )
    seen = output(api_client, namespace, "as-user")
    assert (seen["uid"], seen["gid"]) == (1234, 2345)
    assert {2345, 3456, 4567} <= set(seen["groups"])
    assert seen["data_gid"] == 3456
    # defaultMode 0400, readable by the pod's fsGroup as the kubelet makes it.
    assert (seen["secret"], seen["secret_gid"], seen["secret_mode"]) == ("value", 3456, "0o440")

    refused = waiting(api_client, namespace, "root", "CreateContainerConfigError")
    assert "runAsUser breaks non-root policy" in refused.message
    assert read_pod(api_client, namespace, "root").status.phase == "Pending"


def test_a_missing_image_is_err_image_pull_then_back_off_until_it_is_pushed(
    control_plane: ControlPlane, api_client: Any, namespace: str, kubestep_images: PushedImages
) -> None:
    missing = f"{kubestep_images.registry.host}/kubestep-tests/late:{uuid.uuid4().hex[:8]}"
    create(control_plane, namespace, pod("late", missing, command=["python", "-c", "print('{}')"]))

    failed = waiting(api_client, namespace, "late", "ErrImagePull")
    assert "not found" in failed.message and missing in failed.message
    backing_off = waiting(api_client, namespace, "late", "ImagePullBackOff")
    assert backing_off.message == f'Back-off pulling image "{missing}"'
    assert read_pod(api_client, namespace, "late").status.phase == "Pending"

    kubestep_images.local.buildah.push(kubestep_images.local.name("runner"), missing)
    assert output(api_client, namespace, "late") == {}
