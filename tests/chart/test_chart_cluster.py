"""The chart installed with the real helm into the real control plane, in both RBAC modes, from images.

The same commands, in the same order, as README.md's "Install on a cluster": kubestep's runner and
operator images and the example's image (`examples/contacts/Dockerfile`, FROM the runner) are built and
pushed to a registry (the session's, on loopback); then, in namespaces enforcing `restricted`,
`helm install --wait` with `image.repository`/`image.tag` naming the operator image, and `kubectl apply`
of the example's Workflow (its image: the example's, as pushed) and Event.

What a user would notice: `helm install --wait` succeeds, the operator pod runs the operator image as
uid 65532 with the chart's ServiceAccount token, it completes the contacts example whose step pods run
the example's image as 65532, its rights stop where its namespaces stop, people get exactly what
`kubestep-view` / `kubestep-edit` promise, a hand-written WorkflowRun is refused with the policy's
message, `helm test` passes, `helm upgrade` rolls the operator while a run finishes, and
`helm uninstall` leaves only the CRDs.

One release per mode (a class each, installed once: the two cannot coexist, as both install the
cluster-wide roles for people and the admission policy); each class ends with the uninstall.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import CHART, ROOT, Helm, HelmError
from host_processes import Sampler, jwt_claims, processes
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubecp.cluster import ControlPlane, KubectlError
from kubecp.processes import free_ports
from kubecp.pytest_images import PushedImages
from kubecp.pytest_plugin import namespace_name
from kubecp.testing import wait_for

pytestmark = pytest.mark.controlplane

CONTACTS = ROOT / "examples" / "contacts"
RELEASE = "kubestep"
# The operator pod runs on the process node, in the host's network: one pod (two would share a port),
# and its health endpoint on loopback. It still elects itself leader, as the chart's default does.
LEADER_ELECTION = True


class Install:
    """One release of the chart: its namespaces, images, the operator's identity, and kubectl as someone."""

    def __init__(
        self,
        cp: ControlPlane,
        helm: Helm,
        namespaces: list[str],
        managed: list[str],
        port: int,
        images: PushedImages,
        example: str,
    ) -> None:
        self.cp = cp
        self.helm = helm
        self.namespaces = namespaces
        self.namespace = namespaces[0]
        self.managed = managed
        self.port = port
        self.images = images
        self.example = example
        self.operator_user = f"system:serviceaccount:{self.namespace}:{RELEASE}"
        self.notes = ""

    def values(self) -> dict[str, Any]:
        """What the tests change besides the image: one pod, and health on a free port of loopback."""
        runner, runner_tag = self.images.runner.rsplit(":", 1)
        return {
            "replicaCount": 1,
            "leaderElection": {"enabled": LEADER_ELECTION},
            "watchNamespaces": self.managed,
            "health": {"address": "127.0.0.1", "port": self.port},
            "tests": {
                "healthUrl": f"http://127.0.0.1:{self.port}/healthz",
                "image": {"repository": runner, "tag": runner_tag},
            },
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


@pytest.fixture(scope="session")
def example_image(kubestep_images: PushedImages) -> str:
    """The contacts example as users ship it (examples/contacts/Dockerfile, FROM the runner image), pushed."""
    return kubestep_images.push_from_runner("contacts", CONTACTS / "Dockerfile", CONTACTS)


def restricted_namespaces(cp: ControlPlane, mode: str) -> list[str]:
    """Three fresh namespaces enforcing `restricted`: the release's, a managed one, an unmanaged one."""
    names = [namespace_name(f"chart-{mode}-{role}") for role in ("ops", "managed", "other")]
    for name in names:
        cp.kubectl("create", "namespace", name)
        cp.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    return names


def install(
    helm: Helm,
    cp: ControlPlane,
    images: PushedImages,
    example: str,
    mode: str,
    tmp_path: Path,
) -> Iterator[Install]:
    """`helm install --wait` the chart with the operator image, yield it, and uninstall it whatever happened
    (then delete its namespaces)."""
    namespaces = restricted_namespaces(cp, mode)
    (port,) = free_ports(1)
    managed = [namespaces[1]] if mode == "namespaced" else []
    release = Install(cp, helm.with_kubeconfig(cp.kubeconfig), namespaces, managed, port, images, example)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(release.values()))
    repository, tag = images.operator.rsplit(":", 1)
    try:
        release.notes = release.helm.run(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            release.namespace,
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
            "--values",
            str(values),
            "--wait",
            "--timeout",
            "180s",
        ).stdout
        yield release
    finally:
        release.helm.run(
            "uninstall", RELEASE, "-n", release.namespace, "--wait", "--timeout", "120s", check=False
        )
        for name in namespaces:
            cp.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="class")
def namespaced(
    helm: Helm,
    control_plane: ControlPlane,
    kubestep_images: PushedImages,
    example_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Install]:
    """The chart managing one namespace (`watchNamespaces`)."""
    tmp = tmp_path_factory.mktemp("namespaced")
    yield from install(helm, control_plane, kubestep_images, example_image, "namespaced", tmp)


@pytest.fixture(scope="class")
def clusterwide(
    helm: Helm,
    control_plane: ControlPlane,
    kubestep_images: PushedImages,
    example_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Install]:
    """The chart managing every namespace."""
    tmp = tmp_path_factory.mktemp("clusterwide")
    yield from install(helm, control_plane, kubestep_images, example_image, "cluster-wide", tmp)


# --- helpers ---------------------------------------------------------------------------------------------


def contacts(release: Install, marker: str) -> str:
    """The example's Workflow (its image: the example's, as pushed) and Event, as one list.

    ``marker`` goes into the step pods' environment (CONTACTS_DATA_DIR, in each pod's own /tmp), so that
    the test can tell their processes apart on this machine.
    """
    workflow = yaml.safe_load((CONTACTS / "workflow.yaml").read_text())
    workflow["spec"]["image"] = release.example
    workflow["spec"]["podTemplate"] = {"env": [{"name": "CONTACTS_DATA_DIR", "value": marker}]}
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


def run_example(release: Install, namespace: str, user: str | None = None) -> dict[str, Any]:
    """Apply the example's Workflow and Event as ``user``; the finished run, once every step pod was seen
    running the example's image as 65532, seeing the image's files."""
    marker = f"/tmp/contacts-{namespace}"
    sampler = Sampler("CONTACTS_DATA_DIR", marker).start(
        "/app/contacts/workflows.py", "/app/storage/uploads/contacts.csv"
    )
    try:
        release.kubectl("apply", "-n", namespace, "-f", "-", user=user, input=contacts(release, marker))
        run = finished_run(release, namespace)
    finally:
        seen = sampler.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert run["status"]["progress"] == "5 done"
    # Every step pod ran the example's image, as pushed ...
    pods = json.loads(
        release.kubectl(
            "get", "pods", "-n", namespace, "-l", f"kubestep.dev/run={run['metadata']['name']}", "-o", "json"
        )
    )["items"]
    assert len(pods) >= 4, [p["metadata"]["name"] for p in pods]
    repository = release.example.rsplit(":", 1)[0]
    pinned = run["status"]["image"]  # the digest the run's first pod ran: its later Jobs name it
    assert pinned.startswith(f"{repository}@sha256:"), run["status"]
    for pod in pods:
        [container] = pod["status"]["containerStatuses"]
        assert container["image"] in (release.example, pinned), container
        assert container["imageID"] == pinned, container
    # ... and their processes, caught while they ran, were the runner as 65532 in the image's files
    # (which are not on this machine: /app exists only in the image).
    steps = [(p, sights) for p, sights in seen if "kubestep.runner" in p.command]
    assert steps, f"no step process was seen running (saw {[p.command for p, _ in seen]})"
    for process, sights in steps:
        assert (process.uid, process.gid) == (65532, 65532), process
        assert all(sights.values()), (process, sights)
    assert not Path("/app/contacts/workflows.py").exists()
    return run


def assert_operator_had_every_right(release: Install) -> None:
    """The operator's log shows no refused call and no kopf fallback for want of permissions."""
    log = release.kubectl("logs", "-n", release.namespace, f"deployment/{RELEASE}")
    for sign in ("forbidden", "Forbidden", "Not enough permissions", "Traceback"):
        assert sign not in log, log[-4000:]


def operator_pods(release: Install) -> list[dict[str, Any]]:
    pods = json.loads(
        release.kubectl(
            "get", "pods", "-n", release.namespace, "-l", "app.kubernetes.io/name=kubestep", "-o", "json"
        )
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def assert_operator_runs_its_image_as_65532_with_its_token(release: Install) -> None:
    (pod,) = operator_pods(release)
    [container] = pod["status"]["containerStatuses"]
    repository = release.images.operator.rsplit(":", 1)[0]
    assert container["image"] == release.images.operator, container
    assert container["imageID"].startswith(f"{repository}@sha256:"), container
    assert container["ready"] and "running" in container["state"], container
    # Its process on this machine: `kubestep operator` from the image (its files, not this machine's),
    # as 65532, with the ServiceAccount token mounted where in-cluster clients read it and no kubeconfig.
    [process] = [
        p for p in processes("POD_NAME", pod["metadata"]["name"]) if "operator" in " ".join(p.command)
    ]
    assert (process.uid, process.gid) == (65532, 65532), process
    assert process.sees("/opt/kubestep/bin/kubestep") and not Path("/opt/kubestep/bin/kubestep").exists()
    assert "KUBECONFIG" not in process.env
    token = process.read("/var/run/secrets/kubernetes.io/serviceaccount/token")
    assert jwt_claims(token)["sub"] == release.operator_user
    # The API server took it as that ServiceAccount: the runs it created passed the admission policy,
    # which refuses WorkflowRuns from anyone else (see the editor's test).


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


def assert_uninstall_leaves_only_the_crds(release: Install) -> None:
    assert leftovers(release.cp, release.namespaces)  # the selector finds what was installed
    # NOTES.txt says what to do next, and how to upgrade the CRDs that Helm leaves alone.
    assert "kubectl get ksr" in release.notes
    assert "kubectl apply --server-side -f charts/kubestep/crds/" in release.notes
    release.helm.run("uninstall", RELEASE, "-n", release.namespace, "--wait", "--timeout", "120s")
    wait_for(
        lambda: not leftovers(release.cp, release.namespaces), timeout=60, what="nothing of the release left"
    )
    for crd in ("workflows.kubestep.dev", "events.kubestep.dev", "workflowruns.kubestep.dev"):
        release.cp.kubectl("get", "crd", crd)
    with pytest.raises(HelmError):
        release.helm.run("status", RELEASE, "-n", release.namespace)


# --- namespaced mode: installed once, these tests in order, then uninstalled -----------------------------


class TestNamespaced:
    """`watchNamespaces: [managed]`: Roles in that namespace only."""

    def test_the_operator_runs_its_image_as_65532_with_its_token(self, namespaced: Install) -> None:
        assert_operator_runs_its_image_as_65532_with_its_token(namespaced)

    def test_helm_test_finds_the_operator_healthy(self, namespaced: Install) -> None:
        # Its pod runs the runner image (it has python3).
        result = namespaced.helm.run("test", RELEASE, "-n", namespaced.namespace, "--timeout", "120s")
        assert "Phase:          Succeeded" in result.stdout, result.stdout

    def test_its_rights_stop_at_the_managed_namespaces(self, namespaced: Install) -> None:
        ops, managed, other = namespaced.namespaces
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
            assert not namespaced.can(sa, verb, resource, other), f"{verb} {resource} in an unmanaged one"
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

    def test_with_the_service_account_token(self, namespaced: Install) -> None:
        _, managed, other = namespaced.namespaces
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

    def test_an_editor_runs_the_example_and_may_only_cancel_runs(self, namespaced: Install) -> None:
        _, managed, other = namespaced.namespaces
        alice, bob = "alice@example.com", "bob@example.com"
        namespaced.kubectl(
            "create", "rolebinding", "alice", "-n", managed, "--clusterrole=kubestep-edit", f"--user={alice}"
        )
        namespaced.kubectl(
            "create", "rolebinding", "bob", "-n", managed, "--clusterrole=kubestep-view", f"--user={bob}"
        )

        # Alice applies the example's Workflow and Event; the chart's operator runs it to the end, its
        # steps in the example's image.
        run = run_example(namespaced, managed, user=alice)
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
        assert not namespaced.can(alice, "create", "workflows.kubestep.dev", other)
        namespaced.kubectl(
            "create", "rolebinding", "carol", "-n", managed, "--clusterrole=edit", "--user=carol"
        )
        assert namespaced.can("carol", "create", "events.kubestep.dev", managed)
        assert namespaced.can("carol", "patch", "workflowruns.kubestep.dev", managed)

    def test_upgrade_rolls_the_operator_and_the_run_in_flight_finishes(
        self, namespaced: Install, tmp_path: Path
    ) -> None:
        _, managed, _ = namespaced.namespaces
        marker = tmp_path / "slow-step-started"
        # Not in an image (registry.example.com is not on loopback): the step runs in this machine's files
        # and can leave the marker here.
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
        assert after["spec"]["containers"][0]["image"] == namespaced.images.operator
        runs = json.loads(namespaced.kubectl("get", "ksr", "-n", managed, "-o", "json"))["items"]
        slow = next(r["metadata"]["name"] for r in runs if r["spec"]["workflowRef"]["name"] == "slow-flow")

        def slow_finished() -> dict[str, Any] | None:
            run = json.loads(namespaced.kubectl("get", "ksr", slow, "-n", managed, "-o", "json"))
            return run if run.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

        run = wait_for(slow_finished, timeout=240, interval=1, what="the slow run to finish")
        assert run["status"]["phase"] == "Succeeded", run["status"]
        (slow_step,) = run["status"]["steps"]
        assert len(slow_step["attempts"]) == 1, slow_step  # the step ran once, across the operator's restart

    def test_uninstall_leaves_only_the_crds(self, namespaced: Install) -> None:
        assert_uninstall_leaves_only_the_crds(namespaced)


# --- cluster-wide mode: installed once, these tests in order, then uninstalled -----------------------------


class TestClusterWide:
    """`watchNamespaces: []`: one ClusterRole."""

    def test_the_operator_runs_its_image_as_65532_with_its_token(self, clusterwide: Install) -> None:
        assert_operator_runs_its_image_as_65532_with_its_token(clusterwide)

    def test_it_manages_every_namespace_and_nothing_else(self, clusterwide: Install) -> None:
        sa = clusterwide.operator_user
        for namespace in (*clusterwide.namespaces, "default"):
            assert clusterwide.can(sa, "create", "jobs.batch", namespace)
            assert clusterwide.can(sa, "delete", "secrets", namespace)
            assert not clusterwide.can(sa, "list", "secrets", namespace)
            assert not clusterwide.can(sa, "create", "pods", namespace)
        assert clusterwide.can(sa, "watch", "workflowruns.kubestep.dev", None)
        assert not clusterwide.can(sa, "list", "namespaces", None)  # not needed when watching everything
        assert not clusterwide.can(sa, "list", "nodes", None)
        assert not clusterwide.can(sa, "create", "clusterroles.rbac.authorization.k8s.io", None)

    def test_it_runs_the_example_anywhere(self, clusterwide: Install) -> None:
        run_example(clusterwide, clusterwide.namespaces[2])
        assert_operator_had_every_right(clusterwide)

    def test_uninstall_leaves_only_the_crds(self, clusterwide: Install) -> None:
        assert_uninstall_leaves_only_the_crds(clusterwide)
