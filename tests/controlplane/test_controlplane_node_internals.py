"""Pieces of the process node and of process handling that need no cluster."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes.client.exceptions import ApiException

from kubecp.node import container_init, pods
from kubecp.node.agent import mount_namespace_problem
from kubecp.node.api import pod_replaced, watch_event
from kubecp.node.environment import ImageStandIn
from kubecp.node.pods import Backoff, NodeContext, PodWorker
from kubecp.processes import free_ports, pid_running, process_start_time, stop_group
from kubecp.testing import wait_for


def test_a_watch_error_event_is_raised_with_its_status_code() -> None:
    gone = {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "too old resource version: 1 (42)",
            "reason": "Expired",
            "code": 410,
        },
    }
    with pytest.raises(ApiException) as raised:
        watch_event(json.dumps(gone))
    assert raised.value.status == 410
    assert "too old resource version" in str(raised.value.reason)

    pod = {"metadata": {"name": "p", "resourceVersion": "7"}}
    assert watch_event(json.dumps({"type": "MODIFIED", "object": pod})) == ("MODIFIED", pod)
    assert watch_event("") is None


def test_a_uid_precondition_failure_means_the_pod_was_replaced() -> None:
    def error(status: int, body: dict[str, object]) -> ApiException:
        raised = ApiException(status=status, reason="x")
        raised.body = json.dumps(body)
        return raised

    immutable_uid = {
        "reason": "Invalid",
        "details": {"causes": [{"field": "metadata.uid", "reason": "FieldValueInvalid"}]},
    }
    assert pod_replaced(error(422, immutable_uid))
    precondition = "Precondition failed: UID in precondition: a, UID in object meta: b"
    assert pod_replaced(error(409, {"reason": "Conflict", "message": precondition}))
    assert not pod_replaced(error(409, {"reason": "Conflict", "message": "the object has been modified"}))
    assert not pod_replaced(error(422, {"details": {"causes": [{"field": "status.phase"}]}}))
    assert not pod_replaced(error(500, {}))


def test_backoff_grows_to_its_bound_and_resets() -> None:
    backoff = Backoff(initial=0.2, maximum=1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2


def test_free_ports_are_distinct() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3


def test_a_group_whose_leader_is_gone_is_still_stopped() -> None:
    # The leader starts a child in its group and exits, as a container's main process may.
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess; print(subprocess.Popen(['sleep', '600']).pid, flush=True)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    start_time = process_start_time(leader.pid)
    assert leader.stdout is not None and start_time is not None
    child = int(leader.stdout.readline())
    try:
        leader.wait()
        assert pid_running(child)

        stop_group(leader.pid, timeout=5, start_time=start_time)

        wait_for(lambda: not pid_running(child), timeout=5, what="the leader's child gone")
    finally:
        subprocess.run(["kill", "-9", str(child)], capture_output=True, check=False)


# Runs container_init with the node's files in `base` (on a fresh overlayfs there if
# asked: /tmp is on overlayfs in a Docker container) for a container that mounts a
# file at `target` and works in `working_dir`, and reports how it went.
_RUN_CONTAINER = textwrap.dedent(
    """
    import ctypes, json, os, subprocess, sys
    libc = ctypes.CDLL(None, use_errno=True)
    base, on_overlayfs, target, working_dir, init_script = sys.argv[1:]
    node = os.path.join(base, "node")
    if on_overlayfs == "yes":
        assert libc.unshare(0x00020000) == 0, "unshare"
        assert libc.mount(b"none", b"/", None, 16384 | (1 << 18), None) == 0, "private /"
        lower, upper, work = (os.path.join(base, p) for p in ("lower", "upper", "work"))
        for path in (lower, upper, work, node):
            os.makedirs(path)
        options = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
        assert libc.mount(b"overlay", node.encode(), b"overlay", 0, options) == 0, "overlay"
    os.makedirs(node, exist_ok=True)
    with open(os.path.join(node, "secret"), "w") as handle:
        handle.write("from the volume")
    spec = {
        "argv": ["sh", "-c", f"cat {target}; echo; pwd"],
        "env": {"PATH": os.environ["PATH"]},
        "mounts": [{"source": os.path.join(node, "secret"), "target": target, "read_only": True}],
        "working_dir": working_dir,
        "hostname": "probe",
        "isolate": True,
        "scratch_dir": os.path.join(node, "pods", "p", "scratch"),
        "start_error_file": os.path.join(node, "start-error"),
        "node_pid": os.getpid(),
    }
    with open(os.path.join(node, "spec.json"), "w") as handle:
        json.dump(spec, handle)
    result = subprocess.run(
        [sys.executable, "-I", init_script, os.path.join(node, "spec.json")], capture_output=True, text=True
    )
    with open(spec["start_error_file"]) as handle:
        start_error = handle.read()
    print(json.dumps({"code": result.returncode, "stdout": result.stdout, "start_error": start_error}))
    """
)


@pytest.mark.parametrize(
    "setup",
    [
        # A top-level mount point: an overlay of / as the new root, with its writable
        # layer where the node's files are, i.e. on overlayfs, which the kernel refuses.
        "node files on overlayfs",
        # A mount point in a new directory next to the node's files (with the node in
        # /tmp: a volume at /tmp/data) overlays an ancestor of the node's scratch space;
        # the overlay the working directory then needs must still find it.
        "overlay over the node's files, then another",
    ],
)
def test_containers_get_private_mount_points_wherever_the_node_files_are(tmp_path: Path, setup: str) -> None:
    problem = mount_namespace_problem(sys.executable, tmp_path / "probe")
    if problem is not None:
        pytest.fail(f"needs private mount namespaces (root), as the control-plane tests do: {problem}")
    if setup == "node files on overlayfs":
        on_overlayfs, target, working_dir = "yes", "/kubecp-test-missing/dir/secret", "/"
    else:
        on_overlayfs, target, working_dir = "no", str(tmp_path / "data" / "secret"), "/usr/kubecp-test-work"
    arguments = [str(tmp_path), on_overlayfs, target, working_dir, container_init.__file__]
    result = subprocess.run(
        [sys.executable, "-c", _RUN_CONTAINER, *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    outcome = json.loads(result.stdout)
    assert outcome == {"code": 0, "stdout": f"from the volume\n{working_dir}\n", "start_error": ""}
    # All of it was private to the container.
    assert not Path("/kubecp-test-missing").exists() and not (tmp_path / "data").exists()
    assert not Path("/usr/kubecp-test-work").exists()


# -- a pod worker against a fake API: failures of the API do not strand the pod ------------


class FakeApi:
    """The calls a pod worker makes, recorded; each may be made to fail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.deletions = 0
        self.secret_calls = 0
        self.fail_secret: int | None = None
        self.fail_terminal_status = 0
        self.fail_delete = 0

    def event(
        self, obj: Any, kind: str, reason: str, message: str, component: str, warning: bool = False
    ) -> None:
        with self.lock:
            self.events.append((reason, message))

    def patch_pod_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        with self.lock:
            if status["phase"] in ("Succeeded", "Failed") and self.fail_terminal_status > 0:
                self.fail_terminal_status -= 1
                raise ApiException(status=500, reason="Internal Server Error")
            self.statuses.append(status)

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        with self.lock:
            if self.fail_delete > 0:
                self.fail_delete -= 1
                raise ApiException(status=503, reason="Service Unavailable")
            self.deletions += 1

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            self.secret_calls += 1
            if self.fail_secret is not None:
                raise ApiException(status=self.fail_secret, reason="Forbidden")
        return {"data": {}}


def start_worker(
    tmp_path: Path, api: FakeApi, **spec: Any
) -> tuple[PodWorker, dict[str, Any], list[PodWorker]]:
    pod = {
        "metadata": {"namespace": "ns", "name": "p", "uid": "uid-1"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "x", "command": [sys.executable, "-c", "pass"]}],
            **spec,
        },
    }
    context = NodeContext(
        api=cast(Any, api),
        node_name="node",
        root=tmp_path,
        image=ImageStandIn(Path(sys.executable).parent),
        python=sys.executable,
        isolate=False,
        service_env={},
        allocatable={},
    )
    done: list[PodWorker] = []
    worker = PodWorker(context, pod, done.append)
    worker.start()
    return worker, pod, done


def delete(worker: PodWorker, pod: dict[str, Any]) -> None:
    deleting = copy.deepcopy(pod)
    deleting["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    worker.update(deleting)


def test_status_and_deletion_are_retried_until_the_api_takes_them(tmp_path: Path) -> None:
    api = FakeApi()
    api.fail_terminal_status = 2
    api.fail_delete = 2
    worker, pod, done = start_worker(tmp_path, api)

    wait_for(
        lambda: api.statuses and api.statuses[-1]["phase"] == "Succeeded", timeout=10, what="final status"
    )
    delete(worker, pod)
    wait_for(lambda: api.deletions == 1, timeout=10, what="object deleted")
    worker.object_deleted()
    wait_for(lambda: done, timeout=10, what="worker done")


def test_a_persistent_403_on_volumes_is_retried_with_backoff_and_becomes_a_failed_mount_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pods, "FAILED_MOUNT_AFTER_SECONDS", 0.5)
    api = FakeApi()
    api.fail_secret = 403
    worker, pod, done = start_worker(
        tmp_path, api, volumes=[{"name": "creds", "secret": {"secretName": "creds"}}]
    )

    wait_for(lambda: [e for e in api.events if e[0] == "FailedMount"], timeout=10, what="FailedMount event")
    [(_, message)] = [e for e in api.events if e[0] == "FailedMount"]
    assert "MountVolume.SetUp failed" in message and "403" in message
    time.sleep(1.0)
    # 0.2 s, 0.4 s, 0.8 s... apart rather than every 0.2 s.
    assert api.secret_calls <= 6

    # Deleted while its volumes cannot be set up: it still ends, and is removed.
    delete(worker, pod)
    wait_for(lambda: api.deletions == 1, timeout=10, what="object deleted")
    assert api.statuses[-1]["phase"] == "Failed"
    worker.object_deleted()
    wait_for(lambda: done, timeout=10, what="worker done")
