"""The servers are the pinned release."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from kubecp.cluster import ControlPlane
from kubecp.versions import pinned


def test_server_reports_the_pinned_version(control_plane: ControlPlane, api_client: Any) -> None:
    version = client.VersionApi(api_client).get_code()
    assert version.git_version == pinned().kubernetes
    assert (version.major, version.minor) == (pinned().kubernetes_major, pinned().kubernetes_minor)


def test_kubectl_talks_to_the_server(control_plane: ControlPlane) -> None:
    output = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert output["serverVersion"]["gitVersion"] == pinned().kubernetes


def test_the_process_node_is_ready(control_plane: ControlPlane, api_client: Any) -> None:
    node = client.CoreV1Api(api_client).read_node(control_plane.node_options.name)
    assert node.status is not None
    conditions = {c.type: c.status for c in node.status.conditions or []}
    assert conditions["Ready"] == "True"
    assert node.status.node_info is not None
    assert node.status.node_info.kubelet_version == pinned().kubernetes
    assert not (node.spec and node.spec.taints), "the node-lifecycle controller tainted the node"
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(node.metadata.name, "kube-node-lease")
    assert lease.spec is not None and lease.spec.holder_identity == node.metadata.name
    assert lease.spec.renew_time is not None
