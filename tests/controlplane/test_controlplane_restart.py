"""kube-apiserver killed and started again on the same etcd: the cluster and the process node carry on.

The session's control plane is restarted in place and left healthy (``restart_apiserver`` returns once the
apiserver is ready and the node is Ready again).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubecp.cluster import ControlPlane
from kubecp.testing import python_pod, wait_for


def create(control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> None:
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def phase(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod.status.phase if pod.status is not None else None


def test_the_node_carries_on_through_an_apiserver_restart_and_watches_resume_or_expire(
    control_plane: ControlPlane, namespace: str
) -> None:
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        # A pod that ends while the apiserver is down: the node reports its end once it is back.
        create(control_plane, namespace, python_pod("across", "import time; time.sleep(3); print('done')"))
        wait_for(lambda: phase(core, namespace, "across") == "Running", timeout=60, what="the pod to run")
        version = core.list_namespaced_pod(namespace).metadata.resource_version
        # History that the compaction below removes: a watch from `version` cannot be resumed after it.
        control_plane.kubectl("create", "configmap", "later", "-n", namespace, "--from-literal=k=v")
        node_log = control_plane.node_log()
        logged_before = node_log.stat().st_size

        outage = control_plane.restart_apiserver(down_seconds=6, while_down=control_plane.compact_etcd)
        assert outage >= 6

        # Objects are all there (same etcd), and the node told how the pod ended.
        status = wait_for(
            lambda: phase(core, namespace, "across") in ("Succeeded", "Failed"),
            timeout=120,
            what="the pod's end to be reported",
        )
        assert status and phase(core, namespace, "across") == "Succeeded"
        assert core.read_namespaced_pod_log("across", namespace).strip() == "done"
        # The node's watches were reconnected: a new pod is scheduled and run.
        create(control_plane, namespace, python_pod("after", "print('after the restart')"))
        wait_for(lambda: phase(core, namespace, "after") == "Succeeded", timeout=120, what="a new pod to run")
        node = core.read_node(control_plane.node_options.name)
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        with node_log.open() as log:
            log.seek(logged_before)
            since = log.read()
        assert "pod watch:" in since and "scheduler:" in since, since[-2000:]

        # History before the restart was compacted away: a watch resuming from it is told 410 Gone.
        with pytest.raises(ApiException) as gone:
            stream = core.list_namespaced_pod(
                namespace, watch=True, resource_version=version, timeout_seconds=5, _preload_content=False
            )
            for line in stream:
                event = json.loads(line)
                if event["type"] == "ERROR":
                    raise ApiException(status=event["object"]["code"], reason=event["object"]["message"])
        assert gone.value.status == 410, gone.value
