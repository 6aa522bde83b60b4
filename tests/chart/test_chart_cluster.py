"""The chart installed with the real helm into the real control plane, in both RBAC modes.

What a user would notice: `helm install --wait` succeeds, the operator (from the chart's Deployment, with
the chart's ServiceAccount) completes the contacts example, its rights stop where its namespaces stop,
people get exactly what `kubestep-view` / `kubestep-edit` promise, a hand-written WorkflowRun is refused
with the policy's message, `helm test` passes, and `helm uninstall` leaves only the CRDs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import CHART, ROOT, Helm, HelmError
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubecp.cluster import ControlPlane, KubectlError
from kubecp.processes import free_ports
from kubecp.pytest_plugin import namespace_name
from kubecp.testing import wait_for

pytestmark = pytest.mark.controlplane

CONTACTS = ROOT / "examples" / "contacts"
RELEASE = "kubestep"
# The operator pod runs on the process node, in the host's network: one pod (two would share a port),
# and its health endpoint on loopback. It still elects itself leader, as the chart's default does.
LEADER_ELECTION = True


class Install:
    """One release of the chart: its namespaces, the operator's identity, and kubectl as someone."""

    def __init__(self, cp: ControlPlane, helm: Helm, namespace: str, managed: list[str], port: int) -> None:
        self.cp = cp
        self.helm = helm
        self.namespace = namespace
        self.managed = managed
        self.port = port
        self.operator_user = f"system:serviceaccount:{namespace}:{RELEASE}"

    def values(self) -> dict[str, Any]:
        return {
            "replicaCount": 1,
            "leaderElection": {"enabled": LEADER_ELECTION},
            "watchNamespaces": self.managed,
            "health": {"address": "127.0.0.1", "port": self.port},
            "tests": {"healthUrl": f"http://127.0.0.1:{self.port}/healthz"},
        }

    def kubectl(
        self, *args: str, user: str | None = None, check: bool = True, input: str | None = None
    ) -> str:
        who = [f"--as={user}"] if user else []
        result = self.cp.kubectl(*who, *args, check=check, input=input)
        return result.stdout + result.stderr

    def can(self, user: str, verb: str, resource: str, namespace: str | None) -> bool:
        # No namespace: across all of them (and, for a cluster-scoped resource, the resource itself).
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        resource, _, subresource = resource.partition("/")
        if subresource:
            where.append(f"--subresource={subresource}")
        answer = self.kubectl("auth", "can-i", verb, resource, *where, user=user, check=False)
        return answer.strip().splitlines()[0] == "yes"


@pytest.fixture
def namespaces(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Three fresh namespaces enforcing `restricted`: the release's, a managed one, an unmanaged one."""
    names = [namespace_name(f"{request.node.name[:30]}-{role}") for role in ("ops", "managed", "other")]
    for name in names:
        control_plane.kubectl("create", "namespace", name)
        control_plane.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield names
    for name in names:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def install(
    helm: Helm, cp: ControlPlane, namespace: str, managed: list[str], tmp_path: Path
) -> Iterator[Install]:
    """`helm install --wait` the chart, yield it, and uninstall it whatever happened."""
    (port,) = free_ports(1)
    release = Install(cp, helm.with_kubeconfig(cp.kubeconfig), namespace, managed, port)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(release.values()))
    try:
        release.notes = release.helm.run(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            namespace,
            "--values",
            str(values),
            "--wait",
            "--timeout",
            "180s",
        ).stdout
        yield release
    finally:
        release.helm.run("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s", check=False)


@pytest.fixture
def namespaced(
    helm: Helm, control_plane: ControlPlane, namespaces: list[str], tmp_path: Path
) -> Iterator[Install]:
    """The chart managing one namespace (`watchNamespaces`)."""
    ops, managed, _ = namespaces
    yield from install(helm, control_plane, ops, [managed], tmp_path)


@pytest.fixture
def clusterwide(
    helm: Helm, control_plane: ControlPlane, namespaces: list[str], tmp_path: Path
) -> Iterator[Install]:
    """The chart managing every namespace."""
    yield from install(helm, control_plane, namespaces[0], [], tmp_path)


# --- what the operator's ServiceAccount may do ---------------------------------------------------------


def test_namespaced_mode_stops_at_the_managed_namespaces(namespaced: Install, namespaces: list[str]) -> None:
    ops, managed, other = namespaces
    sa = namespaced.operator_user
    for verb, resource in [
        ("create", "jobs.batch"),
        ("delete", "jobs.batch"),
        ("create", "secrets"),
        ("get", "secrets"),
        ("get", "pods/log"),
        ("create", "workflowruns.kubestep.dev"),
        ("update", "workflowruns.kubestep.dev/status"),
    ]:
        assert namespaced.can(sa, verb, resource, managed), f"{verb} {resource} in the managed namespace"
        assert not namespaced.can(sa, verb, resource, other), f"{verb} {resource} in an unmanaged namespace"
        assert not namespaced.can(sa, verb, resource, ops), f"{verb} {resource} in the release namespace"
    for verb, resource in [
        ("list", "secrets"),
        ("update", "secrets"),
        ("create", "pods"),
        ("create", "deployments.apps"),
        ("delete", "workflows.kubestep.dev"),
        ("update", "workflowruns.kubestep.dev"),
        ("create", "roles.rbac.authorization.k8s.io"),
    ]:
        assert not namespaced.can(sa, verb, resource, managed), f"{verb} {resource}: more than it needs"
    # Cluster-wide it only reads CRDs and namespace names.
    assert namespaced.can(sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert namespaced.can(sa, "list", "namespaces", None)
    assert not namespaced.can(sa, "get", "namespaces", None)
    assert not namespaced.can(sa, "update", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert not namespaced.can(sa, "list", "jobs.batch", None)  # across namespaces


def test_namespaced_mode_with_the_service_account_token(namespaced: Install, namespaces: list[str]) -> None:
    _, managed, other = namespaces
    token = namespaced.kubectl(
        "create", "token", RELEASE, "-n", namespaced.namespace, "--duration=10m"
    ).strip()
    configuration = client.Configuration()
    configuration.host = namespaced.cp.server
    configuration.proxy = None
    configuration.ssl_ca_cert = str(namespaced.cp.pki / "ca.crt")
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(configuration) as as_operator:
        batch, core = client.BatchV1Api(as_operator), client.CoreV1Api(as_operator)
        assert batch.list_namespaced_job(managed).items == []
        for call in (
            lambda: batch.list_namespaced_job(other),
            lambda: core.read_namespaced_secret("anything", other),
            lambda: core.create_namespaced_secret(other, {"metadata": {"name": "stolen"}}),
        ):
            with pytest.raises(ApiException) as denied:
                call()
            assert denied.value.status == 403


def test_cluster_wide_mode_manages_every_namespace_and_nothing_else(
    clusterwide: Install, namespaces: list[str]
) -> None:
    sa = clusterwide.operator_user
    for namespace in (*namespaces, "default"):
        assert clusterwide.can(sa, "create", "jobs.batch", namespace)
        assert clusterwide.can(sa, "delete", "secrets", namespace)
        assert not clusterwide.can(sa, "list", "secrets", namespace)
        assert not clusterwide.can(sa, "create", "pods", namespace)
    assert clusterwide.can(sa, "watch", "workflowruns.kubestep.dev", None)
    assert not clusterwide.can(sa, "list", "namespaces", None)  # not needed when watching everything
    assert not clusterwide.can(sa, "list", "nodes", None)
    assert not clusterwide.can(sa, "create", "clusterroles.rbac.authorization.k8s.io", None)


# --- the operator from the chart runs the example --------------------------------------------------------


def contacts(data_dir: Path) -> str:
    workflow = yaml.safe_load((CONTACTS / "workflow.yaml").read_text())
    workflow["spec"]["podTemplate"] = {"env": [{"name": "CONTACTS_DATA_DIR", "value": str(data_dir)}]}
    event = yaml.safe_load((CONTACTS / "event.yaml").read_text())
    # JSON: YAML 1.1 would read some keys as booleans.
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [workflow, event]})


def finished_run(release: Install, namespace: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        runs = json.loads(release.kubectl("get", "ksr", "-n", namespace, "-o", "json"))["items"]
        if runs and runs[0].get("status", {}).get("phase") in ("Succeeded", "Failed", "Cancelled"):
            return dict(runs[0])
        return None

    try:
        return wait_for(finished, timeout=240, interval=1, what="the contacts run to finish")
    except TimeoutError:
        logs = release.kubectl(
            "logs", "-n", release.namespace, f"deployment/{RELEASE}", "--tail=60", check=False
        )
        raise AssertionError(f"no finished run; the operator's log:\n{logs}") from None


def assert_operator_had_every_right(release: Install) -> None:
    """The operator's log shows no refused call and no kopf fallback for want of permissions."""
    log = release.kubectl("logs", "-n", release.namespace, f"deployment/{RELEASE}")
    for sign in ("forbidden", "Forbidden", "Not enough permissions", "Traceback"):
        assert sign not in log, log[-4000:]


def test_an_editor_runs_the_example_and_may_only_cancel_runs(
    namespaced: Install, namespaces: list[str], tmp_path: Path
) -> None:
    _, managed, _ = namespaces
    alice, bob = "alice@example.com", "bob@example.com"
    namespaced.kubectl(
        "create", "rolebinding", "alice", "-n", managed, "--clusterrole=kubestep-edit", f"--user={alice}"
    )
    namespaced.kubectl(
        "create", "rolebinding", "bob", "-n", managed, "--clusterrole=kubestep-view", f"--user={bob}"
    )

    # Alice applies the example's Workflow and Event; the chart's operator runs it to the end.
    namespaced.kubectl("apply", "-n", managed, "-f", "-", user=alice, input=contacts(tmp_path))
    run = finished_run(namespaced, managed)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert run["status"]["progress"] == "5/5"
    assert_operator_had_every_right(namespaced)
    assert "Succeeded" in namespaced.kubectl("get", "ksr", "-n", managed, user=alice)

    # A hand-written run is refused, with the way runs are started, even where RBAC would allow it.
    name = run["metadata"]["name"]
    copy = {
        "apiVersion": run["apiVersion"],
        "kind": "WorkflowRun",
        "metadata": {"name": f"{name}-by-hand"},
        "spec": run["spec"],
    }
    with pytest.raises(KubectlError) as refused:
        namespaced.kubectl(
            "create", "-n", managed, "--dry-run=server", "-f", "-", user=alice, input=json.dumps(copy)
        )
    assert "WorkflowRuns are created by the kubestep operator only" in refused.value.stderr
    assert "kubectl apply -f event.yaml" in refused.value.stderr
    with pytest.raises(KubectlError) as admin_refused:
        namespaced.kubectl("create", "-n", managed, "--dry-run=server", "-f", "-", input=json.dumps(copy))
    assert "WorkflowRuns are created by the kubestep operator only" in admin_refused.value.stderr
    # ...but not the operator's own.
    namespaced.kubectl(
        "create",
        "-n",
        managed,
        "--dry-run=server",
        "-f",
        "-",
        user=namespaced.operator_user,
        input=json.dumps(copy),
    )

    # Alice may cancel a run, and change nothing else in its spec.
    namespaced.kubectl(
        "patch", "ksr", name, "-n", managed, "--type=merge", "-p", '{"spec":{"cancel":true}}', user=alice
    )
    with pytest.raises(KubectlError) as edited:
        namespaced.kubectl(
            "patch",
            "ksr",
            name,
            "-n",
            managed,
            "--type=merge",
            "-p",
            # (The CRD itself keeps workflowRef, workflow and event immutable.)
            '{"spec":{"parent":{"run":"other","step":"invoke"}}}',
            user=alice,
        )
    assert "spec.cancel is the one field you may set" in edited.value.stderr
    assert """kubectl patch ksr NAME --type merge -p '{"spec":{"cancel":true}}'""" in edited.value.stderr
    # Nor its status, which is the operator's.
    with pytest.raises(KubectlError) as status:
        namespaced.kubectl(
            "patch",
            "ksr",
            name,
            "-n",
            managed,
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"phase":"Failed"}}',
            user=alice,
        )
    assert "forbidden" in status.value.stderr

    # Bob reads and writes nothing.
    assert not namespaced.can(bob, "create", "workflows.kubestep.dev", managed)
    assert not namespaced.can(bob, "create", "events.kubestep.dev", managed)
    assert not namespaced.can(bob, "patch", "workflowruns.kubestep.dev", managed)
    event = yaml.safe_load((CONTACTS / "event.yaml").read_text())
    event["metadata"]["name"] = "published-by-bob"
    with pytest.raises(KubectlError) as bob_refused:
        namespaced.kubectl("create", "-n", managed, "-f", "-", user=bob, input=json.dumps(event))
    assert "forbidden" in bob_refused.value.stderr
    assert "Succeeded" in namespaced.kubectl("get", "ksr", "-n", managed, user=bob)
    # Kubernetes' own roles include kubestep's.
    assert not namespaced.can(alice, "create", "workflows.kubestep.dev", namespaces[2])
    namespaced.kubectl("create", "rolebinding", "carol", "-n", managed, "--clusterrole=edit", "--user=carol")
    assert namespaced.can("carol", "create", "events.kubestep.dev", managed)
    assert namespaced.can("carol", "patch", "workflowruns.kubestep.dev", managed)


def test_cluster_wide_operator_runs_the_example_anywhere(
    clusterwide: Install, namespaces: list[str], tmp_path: Path
) -> None:
    other = namespaces[2]
    clusterwide.kubectl("apply", "-n", other, "-f", "-", input=contacts(tmp_path))
    run = finished_run(clusterwide, other)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert_operator_had_every_right(clusterwide)


def test_helm_test_finds_the_operator_healthy(namespaced: Install) -> None:
    result = namespaced.helm.run("test", RELEASE, "-n", namespaced.namespace, "--timeout", "120s")
    assert "Phase:          Succeeded" in result.stdout, result.stdout


def operator_pods(release: Install) -> list[dict[str, Any]]:
    pods = json.loads(
        release.kubectl(
            "get", "pods", "-n", release.namespace, "-l", "app.kubernetes.io/name=kubestep", "-o", "json"
        )
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_upgrade_rolls_the_operator_and_the_run_in_flight_finishes(
    namespaced: Install, namespaces: list[str], tmp_path: Path
) -> None:
    _, managed, _ = namespaces
    marker = tmp_path / "slow-step-started"
    workflow = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "slow-flow"},
        "spec": {
            "triggers": [{"event": "test/slow.requested"}],
            "image": "registry.example.com/flows:test",
            "function": "failure_flows:slow_flow",
        },
    }
    event = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": "slow-1"},
        "spec": {"name": "test/slow.requested", "data": {"marker": str(marker), "seconds": 8}},
    }
    namespaced.kubectl(
        "apply",
        "-n",
        managed,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [workflow, event]}),
    )
    wait_for(marker.exists, timeout=90, interval=0.2, what="the slow step to start")
    (before,) = operator_pods(namespaced)

    namespaced.helm.run(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespaced.namespace,
        "--reuse-values",
        "--set",
        "dedupeWindow=12h",
        "--wait",
        "--timeout",
        "180s",
    )

    (after,) = operator_pods(namespaced)
    assert after["metadata"]["name"] != before["metadata"]["name"]
    assert "--dedupe-window=12h" in after["spec"]["containers"][0]["args"]
    run = finished_run(namespaced, managed)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    (slow_step,) = run["status"]["steps"]
    assert len(slow_step["attempts"]) == 1, slow_step  # the step ran once, across the operator's restart


# --- uninstall ---------------------------------------------------------------------------------------------


def leftovers(cp: ControlPlane, namespaces: list[str]) -> list[str]:
    names = []
    selector = f"app.kubernetes.io/instance={RELEASE}"
    for namespace in namespaces:
        out = cp.kubectl(
            "get", "all,serviceaccounts,roles,rolebindings", "-n", namespace, "-l", selector, "-o", "name"
        )
        names += out.stdout.split()
    cluster_kinds = (
        "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings"
    )
    names += cp.kubectl("get", cluster_kinds, "-l", selector, "-o", "name").stdout.split()
    return names


@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_uninstall_leaves_only_the_crds(
    helm: Helm, control_plane: ControlPlane, namespaces: list[str], tmp_path: Path, mode: str
) -> None:
    ops, managed, _ = namespaces
    installed = install(helm, control_plane, ops, [managed] if mode == "namespaced" else [], tmp_path)
    release = next(installed)
    assert leftovers(control_plane, namespaces)  # the selector finds what was installed
    # NOTES.txt says what to do next, and how to upgrade the CRDs that Helm leaves alone.
    assert "kubectl get ksr" in release.notes
    assert "kubectl apply --server-side -f charts/kubestep/crds/" in release.notes
    with contextlib.suppress(StopIteration):
        next(installed)  # uninstalls
    wait_for(lambda: not leftovers(control_plane, namespaces), timeout=60, what="nothing of the release left")
    for crd in ("workflows.kubestep.dev", "events.kubestep.dev", "workflowruns.kubestep.dev"):
        control_plane.kubectl("get", "crd", crd)
    with pytest.raises(HelmError):
        release.helm.run("status", RELEASE, "-n", ops)
