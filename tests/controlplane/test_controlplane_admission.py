"""Admission and validation by the real apiserver: PodSecurity and CRD schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubecp.cluster import ControlPlane
from kubecp.testing import python_pod, wait_for

RESTRICTED_CONTAINER = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def test_pod_security_restricted_rejects_a_noncompliant_pod_and_admits_a_compliant_one(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    core = client.CoreV1Api(api_client)

    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, python_pod("loose", "print(1)"))
    assert rejected.value.status == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "allowPrivilegeEscalation != false" in message

    core.create_namespaced_pod(namespace, python_pod("strict", "print(1)", container=RESTRICTED_CONTAINER))
    assert core.read_namespaced_pod("strict", namespace).metadata.name == "strict"


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.kubecp.example.com"},
    "spec": {
        "group": "kubecp.example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["replicas"],
                                "properties": {
                                    "replicas": {"type": "integer", "minimum": 1},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
                                        "message": "replicas must not exceed maxReplicas",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, **spec: int) -> dict[str, Any]:
    return {"apiVersion": "kubecp.example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def widgets_crd(control_plane: ControlPlane, api_client: Any) -> Any:
    extensions = client.ApiextensionsV1Api(api_client)
    extensions.create_custom_resource_definition(CRD)

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(CRD["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, what="CRD established")
    yield
    extensions.delete_custom_resource_definition(CRD["metadata"]["name"])


def test_invalid_custom_resources_are_rejected_with_the_schema_message(
    control_plane: ControlPlane, api_client: Any, namespace: str, widgets_crd: Any
) -> None:
    custom = client.CustomObjectsApi(api_client)

    def create(body: dict[str, Any]) -> Any:
        return custom.create_namespaced_custom_object("kubecp.example.com", "v1", namespace, "widgets", body)

    # Discovery of a new CRD may lag a moment behind Established.
    wait_for(lambda: create(widget("good", replicas=2, maxReplicas=3)), what="valid widget created")

    with pytest.raises(ApiException) as too_small:
        create(widget("too-small", replicas=0))
    assert too_small.value.status == 422
    message = json.loads(too_small.value.body)["message"]
    assert (
        "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1"
        in message
    )

    with pytest.raises(ApiException) as too_many:
        create(widget("too-many", replicas=5, maxReplicas=3))
    assert too_many.value.status == 422
    assert "replicas must not exceed maxReplicas" in json.loads(too_many.value.body)["message"]

    kubectl = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(widget("via-kubectl", replicas=0)), check=False
    )
    assert kubectl.returncode != 0
    assert "should be greater than or equal to 1" in kubectl.stderr
