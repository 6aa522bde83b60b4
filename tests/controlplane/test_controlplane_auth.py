"""Authentication with TokenRequest tokens and RBAC authorization by the real apiserver."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubecp.cluster import ControlPlane


def test_service_account_token_authenticates_and_rbac_limits_it(
    control_plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="configmap-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
        ),
    )
    token = core.create_namespaced_service_account_token(
        "reader",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status.token

    configuration = client.Configuration()
    configuration.host = control_plane.server
    configuration.proxy = None  # loopback, whatever proxy the environment names
    configuration.ssl_ca_cert = str(control_plane.pki / "ca.crt")
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(configuration) as as_reader:
        reader = client.CoreV1Api(as_reader)
        review = client.AuthenticationV1Api(as_reader).create_self_subject_review(
            client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"

        names = [cm.metadata.name for cm in reader.list_namespaced_config_map(namespace).items]
        assert "kube-root-ca.crt" in names

        with pytest.raises(ApiException) as denied:
            reader.list_namespaced_secret(namespace)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied_write:
            reader.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))
            )
        assert denied_write.value.status == 403
        with pytest.raises(ApiException) as other_namespace:
            reader.list_namespaced_config_map("default")
        assert other_namespace.value.status == 403

    configuration.api_key = {"BearerToken": token[:-4] + "AAAA"}
    with client.ApiClient(configuration) as forged, pytest.raises(ApiException) as unauthenticated:
        client.CoreV1Api(forged).list_namespaced_config_map(namespace)
    assert unauthenticated.value.status == 401
