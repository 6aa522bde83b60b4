"""What the process node does with pods: status, termination messages, deadlines, deletion, volumes."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubecp.cluster import ControlPlane
from kubecp.node.api import Api, pod_replaced
from kubecp.testing import python_pod, wait_for


def create(control_plane: ControlPlane, namespace: str, *manifests: dict[str, Any]) -> None:
    documents = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(documents))


def read_pod(api_client: Any, namespace: str, name: str) -> client.V1Pod:
    return client.CoreV1Api(api_client).read_namespaced_pod(name, namespace)


def finished(api_client: Any, namespace: str, name: str) -> client.V1Pod | None:
    pod = read_pod(api_client, namespace, name)
    return pod if pod.status and pod.status.phase in ("Succeeded", "Failed") else None


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    assert pod.status is not None
    [status] = pod.status.container_statuses or []
    assert status.state is not None and status.state.terminated is not None
    return status.state.terminated


def test_pod_status_is_reported_like_the_kubelet(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    create(control_plane, namespace, python_pod("short", "import time; time.sleep(1)"))

    running = wait_for(
        lambda: (p := read_pod(api_client, namespace, "short")).status.phase == "Running" and p,
        what="pod running",
    )
    assert running.spec.node_name == control_plane.node_options.name
    conditions = {c.type: c.status for c in running.status.conditions}
    assert conditions == {
        "PodScheduled": "True",
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    [status] = running.status.container_statuses
    assert status.ready and status.started and status.state.running.started_at is not None
    assert running.status.pod_ip == running.status.host_ip == "127.0.0.1"

    done = wait_for(lambda: finished(api_client, namespace, "short"), what="pod finished")
    assert done.status.phase == "Succeeded"
    conditions = {c.type: (c.status, c.reason) for c in done.status.conditions}
    assert conditions["Ready"] == ("False", "PodCompleted")
    assert conditions["Initialized"] == ("True", "PodCompleted")
    assert terminated(done).reason == "Completed"


def test_fallback_to_logs_on_error_uses_the_end_of_the_log(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    code = "import sys\nfor i in range(100):\n    print(f'line {i}')\nsys.exit(3)\n"
    create(
        control_plane,
        namespace,
        python_pod("fallback", code, container={"terminationMessagePolicy": "FallbackToLogsOnError"}),
        python_pod("no-fallback", code),
    )

    pod = wait_for(lambda: finished(api_client, namespace, "fallback"), what="pod finished")
    state = terminated(pod)
    assert state.exit_code == 3
    # The last 80 lines (the kubelet's limit; 2048 bytes would allow more).
    assert state.message == "".join(f"line {i}\n" for i in range(20, 100))
    other = wait_for(lambda: finished(api_client, namespace, "no-fallback"), what="pod finished")
    assert terminated(other).message is None


def test_termination_message_is_capped_at_4096_bytes(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    code = "open('/dev/termination-log', 'w').write('a' * 5000 + 'END')"
    create(control_plane, namespace, python_pod("long-message", code))

    state = terminated(wait_for(lambda: finished(api_client, namespace, "long-message")))
    assert state.message is not None and len(state.message) == 4096 and state.message.endswith("END")


def test_active_deadline_seconds_fails_the_pod_with_deadline_exceeded(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    create(
        control_plane, namespace, python_pod("slow", "import time; time.sleep(600)", activeDeadlineSeconds=2)
    )

    pod = wait_for(lambda: finished(api_client, namespace, "slow"), timeout=30, what="pod finished")
    assert pod.status.phase == "Failed"
    assert pod.status.reason == "DeadlineExceeded"
    assert "deadline" in pod.status.message
    state = terminated(pod)
    assert state.exit_code == 143  # killed by SIGTERM
    assert state.signal is None  # the kubelet never sets it


def start_sigterm_catcher(control_plane: ControlPlane, namespace: str, name: str, out: Path) -> None:
    """Start a pod that writes ``out/sigterm`` when it gets SIGTERM, and wait until it runs."""
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    open('/out/sigterm', 'w').write('received')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('waiting', flush=True)\n"
        "time.sleep(600)\n"
    )
    pod = python_pod(
        name,
        code,
        volumes=[{"name": "out", "hostPath": {"path": str(out)}}],
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
    )
    create(control_plane, namespace, pod)
    wait_for(lambda: "waiting" in control_plane.kubectl("logs", "-n", namespace, name).stdout, what="pod up")


def test_deleting_a_running_pod_sends_sigterm_and_removes_it(
    control_plane: ControlPlane, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    start_sigterm_catcher(control_plane, namespace, "victim", tmp_path)

    started = time.monotonic()
    client.CoreV1Api(api_client).delete_namespaced_pod("victim", namespace)  # default grace: 30s

    def gone() -> bool:
        try:
            read_pod(api_client, namespace, "victim")
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, timeout=30, what="pod removed")
    assert time.monotonic() - started < 10, "the node waited for the grace period instead of the process"
    assert (tmp_path / "sigterm").read_text() == "received"


def test_env_volumes_and_working_dir(control_plane: ControlPlane, api_client: Any, namespace: str) -> None:
    code = (
        "import importlib.util, json, os, sys\n"
        "print(json.dumps({\n"
        "  'cwd': os.getcwd(),\n"
        "  'env': {k: os.environ.get(k) for k in os.environ['CHECK'].split()},\n"
        "  'secret_file': open('/var/run/kubestep/state/password').read(),\n"
        "  'cm_file': open('/etc/app/settings.ini').read(),\n"
        "  'kubecp_importable': importlib.util.find_spec('kubecp') is not None,\n"
        "  'python': sys.executable,\n"
        "  'args': sys.argv[1:],\n"
        "}))\n"
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"password": "hunter2"},
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"mode": "fast", "settings.ini": "[app]\nx=1\n"},
    }
    pod = python_pod(
        "configured",
        code,
        volumes=[
            {"name": "state", "secret": {"secretName": "creds"}},
            {
                "name": "settings",
                "configMap": {"name": "settings", "items": [{"key": "settings.ini", "path": "settings.ini"}]},
            },
        ],
        container={
            # $(VAR) refers to the container's variables only, not to the image's (PATH...).
            "args": ["$(PLAIN)", "$(HOME)", "$$(PLAIN)"],
            "workingDir": "/srv/work",
            "env": [
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "PLAIN", "value": "plain"},
                {"name": "CHECK", "value": "FROM_SECRET FROM_CM POD_NAME NODE PLAIN EXPANDED"},
                {"name": "EXPANDED", "value": "$(PLAIN)-$(POD_NAME)"},
            ],
            "volumeMounts": [
                {"name": "state", "mountPath": "/var/run/kubestep/state"},
                {"name": "settings", "mountPath": "/etc/app"},
            ],
        },
    )
    create(control_plane, namespace, secret, config_map, pod)

    done = wait_for(lambda: finished(api_client, namespace, "configured"), what="pod finished")
    logs = control_plane.kubectl("logs", "-n", namespace, "configured").stdout
    assert done.status.phase == "Succeeded", logs
    assert json.loads(logs) == {
        "cwd": "/srv/work",
        "env": {
            "FROM_SECRET": "hunter2",
            "FROM_CM": "fast",
            "POD_NAME": "configured",
            "NODE": control_plane.node_options.name,
            "PLAIN": "plain",
            "EXPANDED": "plain-configured",
        },
        "secret_file": "hunter2",
        "cm_file": "[app]\nx=1\n",
        # pytest's pythonpath reaches the containers, and `python` is the project's.
        "kubecp_importable": True,
        "python": str(Path(sys.executable).parent / "python"),
        "args": ["plain", "$(HOME)", "$(PLAIN)"],
    }
    # Mounted privately: nothing of it appears on the machine running the node.
    assert not Path("/var/run/kubestep/state/password").exists()
    assert not Path("/srv/work").exists()


def test_concurrent_pods_each_see_their_own_files_at_the_same_path(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    code = (
        "import os, time\n"
        "open('/dev/termination-log', 'w').write(os.environ['WHO'])\n"
        "time.sleep(1)\n"
        "print(open('/var/run/kubestep/state/who').read())\n"
    )
    manifests: list[dict[str, Any]] = []
    for who in ("alice", "bob"):
        manifests.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": who}, "stringData": {"who": who}}
        )
        manifests.append(
            python_pod(
                who,
                code,
                volumes=[{"name": "state", "secret": {"secretName": who}}],
                container={
                    "env": [{"name": "WHO", "value": who}],
                    "volumeMounts": [{"name": "state", "mountPath": "/var/run/kubestep/state"}],
                },
            )
        )
    create(control_plane, namespace, *manifests)

    for who in ("alice", "bob"):
        pod = wait_for(lambda who=who: finished(api_client, namespace, who), what=f"{who} finished")
        assert terminated(pod).message == who
        assert control_plane.kubectl("logs", "-n", namespace, who).stdout == f"{who}\n"


def test_service_account_token_is_mounted_and_works_in_cluster(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    code = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "review = client.AuthenticationV1Api().create_self_subject_review(\n"
        "    client.V1SelfSubjectReview(api_version='authentication.k8s.io/v1', kind='SelfSubjectReview'))\n"
        "print(review.status.user_info.username)\n"
    )
    create(control_plane, namespace, python_pod("in-cluster", code))

    pod = wait_for(lambda: finished(api_client, namespace, "in-cluster"), what="pod finished")
    logs = control_plane.kubectl("logs", "-n", namespace, "in-cluster").stdout
    assert pod.status.phase == "Succeeded", logs
    assert logs == f"system:serviceaccount:{namespace}:default\n"


def test_a_command_that_cannot_start_is_reported_as_start_error(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    create(control_plane, namespace, python_pod("broken", "", container={"command": ["no-such-command-xyz"]}))

    done = wait_for(lambda: finished(api_client, namespace, "broken"), what="pod finished")
    state = terminated(done)
    assert (done.status.phase, state.reason, state.exit_code) == ("Failed", "StartError", 128)
    assert "executable file not found" in (state.message or "")


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('stubborn', flush=True)\n"
        "time.sleep(600)\n"
    )
    create(control_plane, namespace, python_pod("stubborn", code))
    wait_for(lambda: "stubborn" in control_plane.kubectl("logs", "-n", namespace, "stubborn").stdout)

    started = time.monotonic()
    client.CoreV1Api(api_client).delete_namespaced_pod("stubborn", namespace, grace_period_seconds=2)

    def gone() -> bool:
        try:
            read_pod(api_client, namespace, "stubborn")
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, timeout=30, what="pod removed")
    assert 2 <= time.monotonic() - started < 10


def test_init_containers_run_first_in_order(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    def step(name: str, code: str) -> dict[str, Any]:
        return {
            "name": name,
            "image": "python:3.11-slim",
            "command": ["python", "-c", code],
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        }

    pod = python_pod(
        "ordered",
        "print(open('/shared/trail').read())",
        volumes=[{"name": "shared", "emptyDir": {}}],
        initContainers=[
            step("first", "open('/shared/trail', 'a').write('first ')"),
            step("second", "open('/shared/trail', 'a').write('second')"),
        ],
        container={"volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
    )
    create(control_plane, namespace, pod)

    done = wait_for(lambda: finished(api_client, namespace, "ordered"), what="pod finished")
    assert done.status.phase == "Succeeded"
    assert [(s.state.terminated.reason, s.ready) for s in done.status.init_container_statuses] == [
        ("Completed", True),
        ("Completed", True),
    ]
    conditions = {c.type: (c.status, c.reason) for c in done.status.conditions}
    assert conditions["Initialized"] == ("True", "PodCompleted")
    assert control_plane.kubectl("logs", "-n", namespace, "ordered").stdout == "first second\n"
    assert control_plane.kubectl("logs", "-n", namespace, "ordered", "-c", "first").stdout == ""


def test_a_failed_init_container_leaves_the_pod_not_initialized(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    pod = python_pod(
        "uninitialized",
        "print('never runs')",
        initContainers=[
            {"name": "setup", "image": "python:3.11-slim", "command": ["python", "-c", "raise SystemExit(2)"]}
        ],
    )
    create(control_plane, namespace, pod)

    done = wait_for(lambda: finished(api_client, namespace, "uninitialized"), what="pod finished")
    assert done.status.phase == "Failed"
    [init] = done.status.init_container_statuses
    assert (init.state.terminated.exit_code, init.state.terminated.reason, init.ready) == (2, "Error", False)
    [main] = done.status.container_statuses
    assert main.state.waiting is not None and main.state.waiting.reason == "PodInitializing"
    initialized = next(c for c in done.status.conditions if c.type == "Initialized")
    assert (initialized.status, initialized.reason) == ("False", "ContainersNotInitialized")
    assert initialized.message == "containers with incomplete status: [setup]"


def test_a_force_deleted_pod_still_gets_sigterm_first(
    control_plane: ControlPlane, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    start_sigterm_catcher(control_plane, namespace, "forced", tmp_path)

    client.CoreV1Api(api_client).delete_namespaced_pod("forced", namespace, grace_period_seconds=0)

    wait_for(lambda: (tmp_path / "sigterm").exists(), timeout=10, what="SIGTERM handled")
    assert (tmp_path / "sigterm").read_text() == "received"


def test_a_status_patch_for_a_replaced_pod_is_refused(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    # Bound to another node: neither the process node nor its scheduler touches it.
    pod = python_pod("replaced", "pass", nodeName="elsewhere")
    uid = core.create_namespaced_pod(namespace, pod).metadata.uid
    node_api = Api(control_plane.kubeconfig)
    try:
        node_api.patch_pod_status(namespace, "replaced", uid, {"phase": "Running"})
        with pytest.raises(ApiException) as refused:
            node_api.patch_pod_status(namespace, "replaced", str(uuid.uuid4()), {"phase": "Failed"})
        assert pod_replaced(refused.value)
        assert read_pod(api_client, namespace, "replaced").status.phase == "Running"
    finally:
        node_api.client.close()
        core.delete_namespaced_pod("replaced", namespace, grace_period_seconds=0)
