"""The chart as `helm lint --strict` and `helm template` see it: both RBAC modes, the values schema, the
operator's Deployment and the admission policy. No cluster needed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import CHART, ROOT, Helm, HelmError

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}
MODES = {"cluster-wide": {}, "namespaced": NAMESPACED}

# Exactly what the operator calls in a namespace it manages (controller/kube.py and kopf's watches):
# (API group, resource, verb).
OPERATOR_CALLS = {
    *(
        ("kubestep.dev", r, v)
        for r in ("workflows", "events", "workflowruns")
        for v in ("get", "list", "watch")
    ),
    ("kubestep.dev", "events", "create"),
    ("kubestep.dev", "workflowruns", "create"),
    ("kubestep.dev", "workflowruns", "patch"),
    ("kubestep.dev", "workflowruns", "delete"),  # spec.history, spec.ttlAfterFinished
    ("kubestep.dev", "events", "delete"),  # Events past their dedupe window
    *(("kubestep.dev", f"{r}/status", "update") for r in ("workflows", "events", "workflowruns")),
    *(("batch", "jobs", v) for v in ("get", "list", "watch", "create", "delete", "deletecollection")),
    *(("", "pods", v) for v in ("list", "watch", "delete")),
    ("", "pods/log", "get"),
    *(("", "secrets", v) for v in ("get", "create", "delete", "deletecollection")),
    ("", "events", "create"),
}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


# --- lint and render -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_lint_strict_passes(helm: Helm, mode: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(MODES[mode]))
    result = helm.run("lint", "--strict", str(CHART), "--values", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("mode", MODES)
def test_every_object_is_labelled_with_the_release(helm: Helm, mode: str) -> None:
    docs = helm.template(values=MODES[mode])
    assert docs
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "kubestep", doc["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# --- RBAC --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_no_wildcard_in_any_rule(helm: Helm, mode: str) -> None:
    for values in (MODES[mode], {**MODES[mode], "leaderElection": {"enabled": False}, "replicaCount": 1}):
        for doc in helm.template(values=values):
            if doc["kind"] in ("Role", "ClusterRole"):
                for rule in doc["rules"]:
                    assert "*" not in json.dumps(rule), f"{doc['kind']} {doc['metadata']['name']}: {rule}"


def test_cluster_wide_mode_grants_the_operator_calls_in_every_namespace(helm: Helm) -> None:
    docs = helm.template()
    role = one(docs, "ClusterRole", "kubestep-kubestep-system")
    assert grants(role) == OPERATOR_CALLS
    binding = one(docs, "ClusterRoleBinding", "kubestep-kubestep-system")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubestep", "namespace": "kubestep-system"}
    ]
    # No Role besides leader election's, which is about Leases in the release namespace only.
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == ["kubestep-leader-election"]


def test_namespaced_mode_grants_the_operator_calls_only_in_its_namespaces(helm: Helm) -> None:
    docs = helm.template(values=NAMESPACED)
    roles = {
        r["metadata"]["namespace"]: r for r in of_kind(docs, "Role") if r["metadata"]["name"] == "kubestep"
    }
    assert sorted(roles) == ["team-a", "team-b"]
    for role in roles.values():
        assert grants(role) == OPERATOR_CALLS
    bindings = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == "kubestep"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "kubestep",
        }
        assert binding["subjects"][0]["namespace"] == "kubestep-system"
    # Cluster-wide, the operator may only read CRDs and namespace names: nothing in any namespace.
    operator_cluster_roles = [
        r
        for r in of_kind(docs, "ClusterRole")
        if r["metadata"]["name"] not in ("kubestep-view", "kubestep-edit")
    ]
    assert [r["metadata"]["name"] for r in operator_cluster_roles] == ["kubestep-kubestep-system-discovery"]
    assert grants(operator_cluster_roles[0]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }


def test_leader_election_gets_leases_in_the_release_namespace_only(helm: Helm) -> None:
    docs = helm.template()
    role = one(docs, "Role", "kubestep-leader-election")
    assert role["metadata"]["namespace"] == "kubestep-system"
    assert grants(role) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    without = helm.template("leaderElection.enabled=false", "replicaCount=1")
    assert not [r for r in of_kind(without, "Role") if "leader" in r["metadata"]["name"]]


def test_user_roles_aggregate_into_the_kubernetes_roles(helm: Helm) -> None:
    docs = helm.template()
    view = one(docs, "ClusterRole", "kubestep-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert grants(view) == {
        ("kubestep.dev", r, v)
        for r in ("workflows", "events", "workflowruns")
        for v in ("get", "list", "watch")
    }
    edit = one(docs, "ClusterRole", "kubestep-edit")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels
    assert grants(view) < grants(edit)
    writes = {(r, v) for g, r, v in grants(edit) if v not in ("get", "list", "watch")}
    assert writes == {
        *((r, v) for r in ("workflows", "events") for v in ("create", "update", "patch", "delete")),
        # What the admission policy then narrows down to setting spec.cancel.
        *(("workflowruns", v) for v in ("create", "update", "patch")),
    }


def test_without_the_admission_policy_runs_are_read_only_for_people(helm: Helm) -> None:
    docs = helm.template("admissionPolicy.enabled=false")
    assert not of_kind(docs, "ValidatingAdmissionPolicy")
    edit = one(docs, "ClusterRole", "kubestep-edit")
    assert {v for _, r, v in grants(edit) if r == "workflowruns"} == {"get", "list", "watch"}


def test_user_roles_can_be_left_to_another_release(helm: Helm) -> None:
    docs = helm.template("userRoles.create=false")
    names = {d["metadata"]["name"] for d in of_kind(docs, "ClusterRole")}
    assert not names & {"kubestep-view", "kubestep-edit"}


# --- the operator's Deployment -------------------------------------------------------------------------


def test_operator_runs_restricted_with_probes_on_its_health_endpoint(helm: Helm) -> None:
    docs = helm.template()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # `helm install --wait` waits for every replica, and a rollout keeps a standby.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    single = one(helm.template("leaderElection.enabled=false", "replicaCount=1"), "Deployment")
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kubestep"
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = operator_container(docs)
    assert container["image"] == "kubestep/operator:0.1.0"  # the chart's appVersion
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    # The ServiceAccount itself does not hand its token to pods that do not ask for it.
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_operator_pods_are_annotated_for_prometheus_on_the_health_port(helm: Helm) -> None:
    pod = one(helm.template(values={"podAnnotations": {"team": "a"}}), "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
        "team": "a",
    }
    plain = one(helm.template(values={"metrics": {"podAnnotations": False}}), "Deployment")
    assert "annotations" not in plain["spec"]["template"]["metadata"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {},
            [
                "operator",
                "--metrics-port=8080",
                "--metrics-address=0.0.0.0",
                "--dedupe-window=24h",
                "--leader-elect",
                "--leader-elect-lease-duration=15s",
                "--leader-elect-renew-deadline=10s",
                "--leader-elect-retry-period=2s",
            ],
        ),
        (
            {**NAMESPACED, "leaderElection": {"enabled": False}, "replicaCount": 1, "verbose": True},
            [
                "operator",
                "--namespace=team-a",
                "--namespace=team-b",
                "--metrics-port=8080",
                "--metrics-address=0.0.0.0",
                "--dedupe-window=24h",
                "--verbose",
            ],
        ),
        (
            {"health": {"address": "127.0.0.1", "port": 9000}, "dedupeWindow": "30m"},
            [
                "operator",
                "--metrics-port=9000",
                "--metrics-address=127.0.0.1",
                "--dedupe-window=30m",
                "--leader-elect",
                "--leader-elect-lease-duration=15s",
                "--leader-elect-renew-deadline=10s",
                "--leader-elect-retry-period=2s",
            ],
        ),
    ],
    ids=["cluster-wide", "namespaced", "health-port"],
)
def test_operator_command_line(helm: Helm, values: dict[str, Any], expected: list[str]) -> None:
    container = operator_container(helm.template(values=values))
    assert container["command"] == ["kubestep"]
    assert container["args"] == expected


@pytest.mark.parametrize(
    "values",
    [
        {"leaderElection": {"enabled": False}, "replicaCount": 1},
        {**NAMESPACED, "leaderElection": {"enabled": False}, "replicaCount": 1, "verbose": True},
        {},
        NAMESPACED,
    ],
    ids=["cluster-wide", "namespaced", "defaults-leader-elect", "namespaced-leader-elect"],
)
def test_the_operator_accepts_the_chart_command_line(helm: Helm, values: dict[str, Any]) -> None:
    container = operator_container(helm.template(values=values))
    # --help is acted on only once every other option parsed: an unknown flag fails with exit status 2.
    argv = [str(Path(sys.executable).parent / "kubestep"), *container["args"], "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_image_values(helm: Helm) -> None:
    container = operator_container(
        helm.template(
            "image.repository=registry.example.com/kubestep/operator",
            "image.tag=1.2.3",
            "image.pullPolicy=Always",
        )
    )
    assert container["image"] == "registry.example.com/kubestep/operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"


def test_several_operators_need_leader_election(helm: Helm) -> None:
    with pytest.raises(HelmError) as refused:
        helm.template("leaderElection.enabled=false")
    assert "replicaCount: 2 operator pods without leaderElection.enabled" in refused.value.stderr


def test_an_existing_service_account_must_be_named(helm: Helm) -> None:
    with pytest.raises(HelmError) as refused:
        helm.template("serviceAccount.create=false")
    assert "serviceAccount.name: name the existing ServiceAccount" in refused.value.stderr
    docs = helm.template("serviceAccount.create=false", "serviceAccount.name=ops")
    assert not of_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(docs, "ClusterRoleBinding", "kubestep-kubestep-system")["subjects"][0]["name"] == "ops"


# --- values.schema.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("replicas=3", "replicas"),
        ("image.tga=1.0", "tga"),
        ("leaderElection.enable=false", "enable"),
        ("resources.request.cpu=1", "request"),
        ("tests.image.registry=x", "registry"),
    ],
)
def test_schema_refuses_unknown_keys(helm: Helm, setting: str, field: str) -> None:
    with pytest.raises(HelmError) as refused:
        helm.template(setting)
    message = refused.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    assert re.search(rf"additional properties? '{field}' not allowed", message), message


@pytest.mark.parametrize(
    "setting",
    [
        "watchNamespaces={Team_A}",
        "health.port=0",
        "dedupeWindow=soon",
        "image.pullPolicy=Sometimes",
        "replicaCount=-1",
    ],
)
def test_schema_refuses_bad_values(helm: Helm, setting: str) -> None:
    with pytest.raises(HelmError) as refused:
        helm.template(setting)
    assert "values don't meet the specifications of the schema" in refused.value.stderr


def test_schema_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, at: str) -> None:
        if node.get("type") != "object" or "properties" not in node:
            return
        assert node.get("additionalProperties") is False, f"{at or 'the root'} accepts unknown keys"
        if isinstance(value, dict):
            assert set(value) <= set(node["properties"]), f"{at}: values.yaml keys missing from the schema"
        for key, child in node["properties"].items():
            walk(child, value.get(key) if isinstance(value, dict) else None, f"{at}.{key}".lstrip("."))

    walk(schema, values, "")


# --- the admission policy --------------------------------------------------------------------------------


def test_admission_policy_compares_every_spec_field_but_cancel_and_rerun_requests(helm: Helm) -> None:
    docs = helm.template()
    policy = one(docs, "ValidatingAdmissionPolicy", "kubestep-kubestep-system-runs")["spec"]
    assert policy["failurePolicy"] == "Fail"
    (rule,) = policy["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["kubestep.dev"],
        ["workflowruns"],
        ["CREATE", "UPDATE"],
    )
    assert policy["matchConditions"] == [
        {
            "name": "not-the-operator",
            "expression": "request.userInfo.username != 'system:serviceaccount:kubestep-system:kubestep'",
        }
    ]
    create, update = policy["validations"]
    assert "kubectl apply -f event.yaml" in create["message"]
    assert """kubectl patch ksr NAME --type merge -p '{"spec":{"cancel":true}}'""" in update["message"]
    crd = yaml.safe_load((ROOT / "crds" / "workflowruns.kubestep.dev.yaml").read_text())
    fields = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    compared = set(re.findall(r"object\.spec\.(\w+) == oldObject", update["expression"]))
    # People may set spec.cancel and append to spec.rerunRequests (`kubestep rerun`); nothing else.
    assert compared == set(fields) - {"cancel", "rerunRequests"}


@pytest.mark.parametrize("mode", MODES)
def test_admission_policy_binding_covers_the_managed_namespaces(helm: Helm, mode: str) -> None:
    bindings = of_kind(helm.template(values=MODES[mode]), "ValidatingAdmissionPolicyBinding")
    assert len(bindings) == 2  # runs, reserved event names
    for binding in (b["spec"] for b in bindings):
        assert binding["validationActions"] == ["Deny"]
        if mode == "cluster-wide":
            assert "matchResources" not in binding
        else:
            (selector,) = binding["matchResources"]["namespaceSelector"]["matchExpressions"]
            assert selector == {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": ["team-a", "team-b"],
            }


def test_only_the_operator_may_publish_events_under_the_reserved_prefix(helm: Helm) -> None:
    docs = helm.template()
    policy = one(docs, "ValidatingAdmissionPolicy", "kubestep-kubestep-system-reserved-events")["spec"]
    (rule,) = policy["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["events"], ["CREATE", "UPDATE"])
    assert policy["matchConditions"] == [
        {
            "name": "not-the-operator",
            "expression": "request.userInfo.username != 'system:serviceaccount:kubestep-system:kubestep'",
        }
    ]
    (validation,) = policy["validations"]
    assert "startsWith('kubestep/')" in validation["expression"]
    assert "published by the kubestep operator only" in validation["message"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "kubestep-kubestep-system-reserved-events")
    assert binding["spec"]["policyName"] == "kubestep-kubestep-system-reserved-events"


# --- helm test -------------------------------------------------------------------------------------------


def test_helm_test_pod_checks_the_health_service(helm: Helm) -> None:
    docs = helm.template()
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "kubestep/runner:0.1.0"
    assert container["args"][-1] == "http://kubestep-health.kubestep-system.svc:8080/healthz"
    service = one(docs, "Service", "kubestep-health")
    assert service["spec"]["ports"][0]["targetPort"] == "health"
    # The Service selects the operator's pods, not the test pod.
    selector = service["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()
