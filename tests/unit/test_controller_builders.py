"""What the operator creates, as the API server receives it: step Jobs, state Secrets, runs, events."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from kubestep.api.base import API_VERSION, ObjectMeta
from kubestep.api.event import Event, EventSpec
from kubestep.api.report import MemoEntry, RunnerState
from kubestep.api.run import (
    RunEvent,
    StepPhase,
    StepStatus,
    StepType,
    WorkflowRef,
    WorkflowRun,
    WorkflowRunSpec,
    WorkflowRunStatus,
)
from kubestep.api.workflow import PodTemplate, Trigger, Workflow, WorkflowSpec
from kubestep.controller import builders
from kubestep.engine import Note, StartChild, StartExecution
from kubestep.engine.decide import runner_state
from kubestep.runner.main import DEFAULT_STATE

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NAMESPACE = "team-a"
RUN = "contacts-7f3a9c2e41"
RUN_UID = "0b6f2c1e-run-uid"
JOB = "contacts-7f3a9c2e41-5d1c0e9ab2f4-1"

Obj = dict[str, Any]


def make_spec(
    pod_template: PodTemplate | None = None, image: str = "registry.example/contacts:1"
) -> WorkflowSpec:
    return WorkflowSpec(
        triggers=[Trigger(event="api/contact_list.uploaded")],
        image=image,
        function="contacts.workflows:process",
        pod_template=pod_template or PodTemplate(),
    )


def make_workflow(name: str = "contacts", pod_template: PodTemplate | None = None) -> Workflow:
    return Workflow(
        metadata=ObjectMeta(name=name, namespace=NAMESPACE, uid=f"{name}-uid", generation=3),
        spec=make_spec(pod_template),
    )


def make_run(pod_template: PodTemplate | None = None, name: str = RUN) -> WorkflowRun:
    return WorkflowRun(
        metadata=ObjectMeta(name=name, namespace=NAMESPACE, uid=RUN_UID),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="contacts"),
            workflow=make_spec(pod_template),
            event=RunEvent(name="api/contact_list.uploaded", data={"rows": 3}, source="upload-1"),
        ),
    )


def make_start(
    timeout: float | None = 30.0, step: str | None = "validate", attempt: int = 1, output: Any = None
) -> StartExecution:
    output = {"rows": [1, 2, 3]} if output is None else output
    state = RunnerState(
        run=RUN,
        function="contacts.workflows:process",
        event={"name": "api/contact_list.uploaded", "data": {"rows": 3}},
        steps=[MemoEntry(id="fetch", name="fetch", type=StepType.RUN, done=True, output=output)],
        target=step,
        attempt=attempt,
        max_output_bytes=4096,
    )
    return StartExecution(name=JOB, step=step, attempt=attempt, state=state, timeout_seconds=timeout)


def job_for(pod_template: PodTemplate | None = None, timeout: float | None = 30.0) -> Obj:
    return builders.step_job(make_run(pod_template), make_start(timeout))


def pod_spec(job: Obj) -> Obj:
    spec: Obj = job["spec"]["template"]["spec"]
    return spec


def container(job: Obj) -> Obj:
    (only,) = pod_spec(job)["containers"]
    assert isinstance(only, dict)
    return only


RUN_OWNER = {
    "apiVersion": API_VERSION,
    "kind": "WorkflowRun",
    "name": RUN,
    "uid": RUN_UID,
    "controller": True,
    "blockOwnerDeletion": True,
}


# --- step Jobs ---------------------------------------------------------------------------------------


def test_a_step_job_runs_one_pod_never_retried_under_the_execution_name() -> None:
    job = job_for()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == JOB
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["spec"]["backoffLimit"] == 0
    assert pod_spec(job)["restartPolicy"] == "Never"
    step = container(job)
    assert step["name"] == builders.CONTAINER
    assert step["image"] == "registry.example/contacts:1"
    assert step["command"] == ["python", "-m", "kubestep.runner"]
    # A runner that dies before writing its report still leaves its last lines as the message.
    assert step["terminationMessagePolicy"] == "FallbackToLogsOnError"


#: An output that makes an execution's input too large for its pod's annotation.
LARGE_OUTPUT = {"text": "x" * builders.INLINE_STATE_BYTES}


def test_the_same_execution_builds_the_same_job_so_creating_it_twice_is_harmless() -> None:
    assert job_for() == job_for()
    run, start = make_run(), make_start(output=LARGE_OUTPUT)
    assert builders.step_job(run, start) == builders.step_job(run, start)
    assert builders.state_secret(run, start) == builders.state_secret(run, start)


def test_the_job_and_its_state_secret_are_owned_by_the_run() -> None:
    run, start = make_run(), make_start(output=LARGE_OUTPUT)
    assert builders.step_job(run, start)["metadata"]["ownerReferences"] == [RUN_OWNER]
    secret = builders.state_secret(run, start)
    assert secret is not None and secret["metadata"]["ownerReferences"] == [RUN_OWNER]


@pytest.mark.parametrize(
    ("timeout", "pod_deadline"),
    [
        pytest.param(30.0, 30, id="whole-seconds"),
        pytest.param(30.2, 31, id="rounded-up"),
        pytest.param(0.2, 1, id="sub-second-is-one-second"),
        pytest.param(86400.0, 86400, id="one-day"),
    ],
)
def test_the_pod_deadline_is_the_step_timeout_rounded_up_and_the_job_lives_longer(
    timeout: float, pod_deadline: int
) -> None:
    job = job_for(timeout=timeout)
    assert pod_spec(job)["activeDeadlineSeconds"] == pod_deadline
    # The pod (and its log) ends by its own deadline; the Job's only catches a pod that never started.
    assert job["spec"]["activeDeadlineSeconds"] > pod_deadline
    assert job["spec"]["activeDeadlineSeconds"] == pod_deadline + builders.JOB_DEADLINE_GRACE_SECONDS


def test_without_a_step_timeout_neither_pod_nor_job_has_a_deadline() -> None:
    job = job_for(timeout=None)
    assert "activeDeadlineSeconds" not in pod_spec(job)
    assert "activeDeadlineSeconds" not in job["spec"]


def test_step_pods_get_no_api_credentials_even_with_a_service_account() -> None:
    for template in (PodTemplate(), PodTemplate(service_account_name="contacts-steps")):
        spec = pod_spec(job_for(template))
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False


# The Kubernetes `restricted` Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
# as the PodSecurity admission plugin checks it, for the fields a step pod can carry.
_RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: Obj) -> list[str]:
    problems: list[str] = []
    pod_sc: Obj = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(host)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {kinds}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"pod seccompProfile {pod_seccomp}")
    for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        sc: Obj = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps: Obj = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


FULL_TEMPLATE = PodTemplate(
    service_account_name="contacts-steps",
    resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    env=[
        {"name": "CRM_URL", "value": "https://crm.example"},
        {"name": "CRM_TOKEN", "valueFrom": {"secretKeyRef": {"name": "crm", "key": "token"}}},
    ],
    env_from=[{"configMapRef": {"name": "contacts-config"}}, {"secretRef": {"name": "contacts-secrets"}}],
    node_selector={"kubernetes.io/arch": "arm64", "pool": "batch"},
    tolerations=[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
    image_pull_secrets=[{"name": "regcred"}],
)


@pytest.mark.parametrize(
    "template", [pytest.param(PodTemplate(), id="defaults"), pytest.param(FULL_TEMPLATE, id="overrides")]
)
def test_step_pods_are_admitted_by_the_restricted_pod_security_profile(template: PodTemplate) -> None:
    spec = pod_spec(job_for(template))
    assert restricted_violations(spec) == []
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(job_for(template))["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_restricted_check_itself_catches_a_privileged_pod() -> None:
    spec = pod_spec(job_for())
    spec["containers"][0]["securityContext"] = {"privileged": True}
    spec["securityContext"] = {}
    spec["volumes"].append({"name": "root", "hostPath": {"path": "/"}})
    problems = restricted_violations(spec)
    assert any("privileged" in p for p in problems)
    assert any("allowPrivilegeEscalation" in p for p in problems)
    assert any("drop ALL" in p for p in problems)
    assert any("runAsNonRoot" in p for p in problems)
    assert any("seccompProfile" in p for p in problems)
    assert any("hostPath" in p for p in problems)


def _state_mount(job: Obj) -> tuple[Obj, str]:
    """The pod's state volume, and the file the runner is told to read."""
    spec, step = pod_spec(job), container(job)
    (volume,) = spec["volumes"]
    (mount,) = step["volumeMounts"]
    assert mount["name"] == volume["name"]
    assert mount["readOnly"] is True
    state_env = step["env"][0]
    assert state_env["name"] == "KUBESTEP_STATE"
    assert state_env["value"].startswith(mount["mountPath"] + "/")
    # The runner's own default agrees, so a pod started without the variable still finds its state.
    assert state_env["value"] == DEFAULT_STATE
    return volume, state_env["value"].removeprefix(mount["mountPath"] + "/")


def test_a_small_state_travels_in_the_pods_own_annotation_read_through_the_downward_api() -> None:
    run, start = make_run(), make_start(step="validate", attempt=2)
    assert builders.state_secret(run, start) is None
    job = builders.step_job(run, start)
    volume, key = _state_mount(job)
    (item,) = volume["downwardAPI"]["items"]
    assert item["path"] == key
    annotation = re.fullmatch(r"metadata\.annotations\['(.+)'\]", item["fieldRef"]["fieldPath"])
    assert annotation is not None
    state_json = job["spec"]["template"]["metadata"]["annotations"][annotation.group(1)]
    assert RunnerState.model_validate_json(state_json) == start.state
    wire = json.loads(state_json)
    assert wire["maxOutputBytes"] == 4096 and wire["target"] == "validate" and wire["attempt"] == 2
    assert wire["steps"][0]["output"] == {"rows": [1, 2, 3]}
    # On the pod only: the Job's own metadata, which `kubectl get jobs` lists, stays small.
    assert annotation.group(1) not in job["metadata"]["annotations"]


def test_a_large_state_travels_in_a_secret_mounted_read_only_where_the_runner_reads() -> None:
    run, start = make_run(), make_start(step="validate", attempt=2, output=LARGE_OUTPUT)
    secret = builders.state_secret(run, start)
    assert secret is not None
    assert secret["apiVersion"] == "v1" and secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == start.name
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["immutable"] is True
    (key,) = secret["stringData"]
    assert RunnerState.model_validate_json(secret["stringData"][key]) == start.state

    job = builders.step_job(run, start)
    volume, mounted_key = _state_mount(job)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert mounted_key == key
    assert "kubestep.dev/state" not in job["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("extra_bytes", "in_secret"),
    [
        pytest.param(0, False, id="exactly-the-bound"),
        pytest.param(1, True, id="one-byte-over"),
        pytest.param(-1000, False, id="well-under"),
    ],
)
def test_the_bound_on_a_pods_state_counts_bytes(extra_bytes: int, in_secret: bool) -> None:
    base = len(builders.state_json(make_start(output={"text": ""})).encode())
    # "é" is two bytes: the bound is on the annotation's bytes, not its characters.
    room = builders.INLINE_STATE_BYTES - base + extra_bytes
    text = "é" * (room // 2) + "x" * (room % 2)
    start = make_start(output={"text": text})
    assert len(builders.state_json(start).encode()) == builders.INLINE_STATE_BYTES + extra_bytes
    assert (builders.state_secret(make_run(), start) is not None) is in_secret
    volume = pod_spec(builders.step_job(make_run(), start))["volumes"][0]
    assert ("secret" in volume) is in_secret


def _run_with(steps: list[tuple[str, Any, bool]]) -> tuple[WorkflowRun, WorkflowRunStatus]:
    run = make_run()
    status = WorkflowRunStatus(
        steps=[
            StepStatus(
                id=step_id,
                name=step_id,
                type=StepType.RUN,
                phase=StepPhase.SUCCEEDED if done else StepPhase.RUNNING,
                output=output,
            )
            for step_id, output, done in steps
        ]
    )
    return run, status


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        pytest.param([1, 2, 3], False, id="small-outputs"),
        pytest.param([{"text": "x" * builders.INLINE_STATE_BYTES}], True, id="one-large-output"),
        pytest.param(["x" * 6000] * 3, True, id="outputs-that-add-up"),
        pytest.param([], False, id="no-steps"),
    ],
)
def test_whether_a_finished_run_may_have_had_state_secrets(outputs: list[Any], expected: bool) -> None:
    run, status = _run_with([(f"s{i}", output, True) for i, output in enumerate(outputs)])
    assert builders.may_have_state_secrets(run, status) is expected


def test_a_run_that_had_a_state_secret_is_never_taken_for_one_that_had_none() -> None:
    # Every execution of a run whose inputs cross the bound as it grows: each step retried at a high
    # attempt (its long name the target), pending steps shrinking as they finish with tiny outputs.
    long_id = "enrich-address-information-" + "x" * 200
    pending = [(f"{long_id}:{i}", None, False) for i in range(20)]
    run, _ = _run_with([])
    _, bare = _run_with([("fill", "", True), *pending])
    base = len(runner_state(run, bare, target=pending[-1][0], attempt=99).model_dump_json().encode())
    crossed, room = 0, builders.INLINE_STATE_BYTES - base
    for filler in range(room - 1500, room + 200, 7):
        steps = [("fill", "x" * filler, True), *pending]
        _, final = _run_with([(sid, out if done else 1, True) for sid, out, done in steps])
        for reached in range(1, len(steps) + 1):
            _, status = _run_with(steps[:reached])
            state = runner_state(run, status, target=steps[reached - 1][0], attempt=99)
            if builders.state_in_secret(state.model_dump_json(by_alias=True)):
                crossed += 1
                assert builders.may_have_state_secrets(run, final), (filler, reached)
    assert crossed  # the table reached the bound


def test_jobs_pods_and_secrets_carry_the_run_labels_and_the_step_annotations() -> None:
    run, start = make_run(), make_start(step="validate", attempt=3)
    job = builders.step_job(run, start)
    expected = {
        "app.kubernetes.io/managed-by": "kubestep",
        "kubestep.dev/run": RUN,
        "kubestep.dev/workflow": "contacts",
    }
    # `kubectl get pods -l kubestep.dev/step=validate` lists a step's pods.
    assert job["metadata"]["labels"] == {**expected, "kubestep.dev/step": "validate"}
    assert job["spec"]["template"]["metadata"]["labels"] == {**expected, "kubestep.dev/step": "validate"}
    secret = builders.state_secret(run, make_start(step="validate", attempt=3, output=LARGE_OUTPUT))
    assert secret is not None and secret["metadata"]["labels"] == expected
    annotations = {"kubestep.dev/step": "validate", "kubestep.dev/attempt": "3"}
    assert job["metadata"]["annotations"] == annotations
    template_annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert {k: v for k, v in template_annotations.items() if k != "kubestep.dev/state"} == annotations


def test_a_discovery_execution_has_no_step_annotation() -> None:
    job = builders.step_job(make_run(), make_start(step=None))
    assert job["metadata"]["annotations"] == {"kubestep.dev/attempt": "1"}
    assert "kubestep.dev/step" not in job["metadata"]["labels"]


@pytest.mark.parametrize(
    ("step_id", "label"),
    [
        ("enrich-address-information", "enrich-address-information"),
        ("fetch.v2", "fetch.v2"),
        ("fetch:1", "fetch_1-" + hashlib.sha256(b"fetch:1").hexdigest()[:8]),
        ("adresse-prüfen", "adresse-pr_fen-" + hashlib.sha256("adresse-prüfen".encode()).hexdigest()[:8]),
        ("-x-", "x-" + hashlib.sha256(b"-x-").hexdigest()[:8]),
        ("s" * 70, "s" * 50 + "-" + hashlib.sha256(b"s" * 70).hexdigest()[:8]),
    ],
)
def test_the_step_label_is_the_step_id_or_a_valid_value_unique_to_it(step_id: str, label: str) -> None:
    assert builders.step_label(step_id) == label
    assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]", label)


def test_label_values_of_long_names_are_cut_to_a_valid_label() -> None:
    long_name = "a" * 61 + "-.b" + "c" * 40
    job = builders.step_job(make_run(name=long_name), make_start())
    value = job["metadata"]["labels"]["kubestep.dev/run"]
    assert len(value) <= 63
    assert value == "a" * 61
    assert value[-1].isalnum()


def _template_field(job: Obj, where: str, field: str) -> Any:
    holder = pod_spec(job) if where == "pod" else container(job)
    return holder.get(field)


@pytest.mark.parametrize(
    ("template", "where", "field", "expected"),
    [
        pytest.param(
            PodTemplate(service_account_name="contacts-steps"),
            "pod",
            "serviceAccountName",
            "contacts-steps",
            id="serviceAccountName",
        ),
        pytest.param(
            PodTemplate(resources={"limits": {"memory": "256Mi"}}),
            "container",
            "resources",
            {"limits": {"memory": "256Mi"}},
            id="resources",
        ),
        pytest.param(
            PodTemplate(env_from=[{"secretRef": {"name": "contacts-secrets"}}]),
            "container",
            "envFrom",
            [{"secretRef": {"name": "contacts-secrets"}}],
            id="envFrom",
        ),
        pytest.param(
            PodTemplate(node_selector={"pool": "batch"}),
            "pod",
            "nodeSelector",
            {"pool": "batch"},
            id="nodeSelector",
        ),
        pytest.param(
            PodTemplate(tolerations=[{"key": "batch", "operator": "Exists"}]),
            "pod",
            "tolerations",
            [{"key": "batch", "operator": "Exists"}],
            id="tolerations",
        ),
        pytest.param(
            PodTemplate(image_pull_secrets=[{"name": "regcred"}]),
            "pod",
            "imagePullSecrets",
            [{"name": "regcred"}],
            id="imagePullSecrets",
        ),
    ],
)
def test_pod_template_overrides_reach_the_step_pod(
    template: PodTemplate, where: str, field: str, expected: Any
) -> None:
    assert _template_field(job_for(template), where, field) == expected


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("pod", "serviceAccountName"),
        ("container", "resources"),
        ("container", "envFrom"),
        ("pod", "nodeSelector"),
        ("pod", "tolerations"),
        ("pod", "imagePullSecrets"),
    ],
)
def test_unset_pod_template_fields_are_absent_from_the_step_pod(where: str, field: str) -> None:
    job = job_for(PodTemplate())
    holder = pod_spec(job) if where == "pod" else container(job)
    assert field not in holder


def test_pod_template_env_comes_after_the_state_variable_in_order() -> None:
    env = container(job_for(FULL_TEMPLATE))["env"]
    assert [e["name"] for e in env] == ["KUBESTEP_STATE", "CRM_URL", "CRM_TOKEN"]
    assert env[2] == {"name": "CRM_TOKEN", "valueFrom": {"secretKeyRef": {"name": "crm", "key": "token"}}}
    assert container(job_for(PodTemplate()))["env"] == [env[0]]


def test_a_pod_template_as_written_in_a_workflow_reaches_the_step_pod_unchanged() -> None:
    """The typed podTemplate is a pass-through: what a user copies from a Pod is what the pod gets."""
    written: Obj = {
        "resources": {"limits": {"cpu": 2, "memory": "1Gi"}, "requests": {"cpu": "0.5"}},
        "env": [
            {"name": "A", "value": ""},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "b", "optional": True}}},
            {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "envFrom": [{"prefix": "S_", "secretRef": {"name": "s"}}],
        "tolerations": [
            {"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30}
        ],
        "imagePullSecrets": [{"name": "regcred"}],
    }
    job = job_for(PodTemplate.model_validate(written))
    assert container(job)["resources"] == written["resources"]
    assert container(job)["env"][1:] == written["env"]
    assert container(job)["envFrom"] == written["envFrom"]
    assert pod_spec(job)["tolerations"] == written["tolerations"]
    assert pod_spec(job)["imagePullSecrets"] == written["imagePullSecrets"]
    # Resources with neither limits nor requests add nothing.
    assert "resources" not in container(job_for(PodTemplate.model_validate({"resources": {}})))


def test_all_overrides_together_leave_the_security_settings_alone() -> None:
    plain, full = job_for(PodTemplate()), job_for(FULL_TEMPLATE)
    assert pod_spec(full)["securityContext"] == pod_spec(plain)["securityContext"]
    assert container(full)["securityContext"] == container(plain)["securityContext"]
    assert pod_spec(full)["automountServiceAccountToken"] is False
    assert pod_spec(full)["volumes"] == pod_spec(plain)["volumes"]


# --- runs started by events, child runs ----------------------------------------------------------


def make_event(ts: datetime | None = None, event_id: str | None = "upload-42") -> Event:
    return Event(
        metadata=ObjectMeta(name="upload-1", namespace=NAMESPACE, uid="event-uid", creation_timestamp=T0),
        spec=EventSpec(
            name="api/contact_list.uploaded",
            data={"rows": 3, "file": "a.csv"},
            user={"id": "u-1"},
            id=event_id,
            ts=ts,
        ),
    )


@pytest.mark.parametrize(
    ("event_ts", "expected_ts"),
    [
        pytest.param(None, T0, id="ts-defaults-to-the-given-time"),
        pytest.param(
            datetime(2026, 2, 28, 9, 30, tzinfo=UTC), datetime(2026, 2, 28, 9, 30, tzinfo=UTC), id="ts-kept"
        ),
    ],
)
def test_a_run_started_by_an_event_carries_the_event_and_its_source(
    event_ts: datetime | None, expected_ts: datetime
) -> None:
    workflow = make_workflow()
    body = builders.event_run(workflow, make_event(event_ts), "contacts-0a1b2c3d4e", T0)
    assert body["apiVersion"] == API_VERSION and body["kind"] == "WorkflowRun"
    assert body["metadata"]["name"] == "contacts-0a1b2c3d4e"
    assert body["metadata"]["namespace"] == NAMESPACE
    assert body["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kubestep",
        "kubestep.dev/workflow": "contacts",
        "kubestep.dev/event": "upload-1",
    }
    assert not body["metadata"].get("ownerReferences")
    assert "status" not in body
    # What the API server stores reads back as the same run.
    run = WorkflowRun.model_validate(json.loads(json.dumps(body)))
    assert run.spec.workflow_ref.name == "contacts"
    assert run.spec.workflow == workflow.spec
    assert run.spec.parent is None and run.spec.cancel is False
    event = run.spec.event
    assert event.name == "api/contact_list.uploaded"
    assert event.data == {"rows": 3, "file": "a.csv"}
    assert event.user == {"id": "u-1"}
    assert event.id == "upload-42"
    assert event.source == "upload-1"
    assert event.ts == expected_ts


def test_an_event_run_is_plain_json_with_wire_names() -> None:
    body = builders.event_run(make_workflow(), make_event(event_id=None), "r", T0)
    json.dumps(body)  # nothing but JSON types
    spec = body["spec"]
    assert set(spec) >= {"workflowRef", "workflow", "event"}
    assert spec["workflow"]["function"] == "contacts.workflows:process"
    assert spec["event"]["id"] == "event-uid"  # an event without spec.id: its uid


def test_a_child_run_is_owned_by_its_parent_without_being_controlled_by_it() -> None:
    parent = make_run()
    child_workflow = Workflow(
        metadata=ObjectMeta(name="enrich", namespace=NAMESPACE),
        spec=make_spec(image="registry.example/enrich:2"),
    )
    action = StartChild(
        step="enrich-contacts", name="contacts-7f3a9c2e41-aa11bb22cc33", workflow="enrich", data={"n": 3}
    )
    body = builders.child_run(parent, child_workflow, action, T0)
    assert body["metadata"]["name"] == action.name
    assert body["metadata"]["namespace"] == NAMESPACE
    assert body["metadata"]["ownerReferences"] == [{**RUN_OWNER, "controller": False}]
    assert body["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kubestep",
        "kubestep.dev/workflow": "enrich",
        "kubestep.dev/parent": RUN,
    }
    assert "status" not in body
    child = WorkflowRun.model_validate(json.loads(json.dumps(body)))
    assert child.spec.parent is not None
    assert (child.spec.parent.run, child.spec.parent.step) == (RUN, "enrich-contacts")
    assert child.spec.workflow_ref.name == "enrich"
    assert child.spec.workflow.image == "registry.example/enrich:2"
    assert child.spec.event.name == "kubestep/function.invoked"
    assert child.spec.event.data == {"n": 3}
    assert child.spec.event.source == RUN
    assert (child.spec.event.id, child.spec.event.ts) == (action.name, T0)


# --- events sent by steps, Kubernetes Events ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected_spec"),
    [
        pytest.param(
            {"name": "app/contact.created", "data": {"id": 7}, "id": "contact-7"},
            {"name": "app/contact.created", "data": {"id": 7}, "id": "contact-7"},
            id="own-id",
        ),
        pytest.param(
            {"name": "app/contact.created", "data": {"id": 7}},
            {"name": "app/contact.created", "data": {"id": 7}, "id": "sent-0"},
            id="id-defaults-to-object-name",
        ),
        pytest.param(
            {"name": "app/contact.created", "data": None, "user": {"id": "u-1"}, "id": ""},
            {"name": "app/contact.created", "data": {}, "user": {"id": "u-1"}, "id": "sent-0"},
            id="user-kept-empty-data-and-id",
        ),
    ],
)
def test_an_event_sent_by_a_step_has_a_deterministic_name_and_an_idempotency_key(
    payload: Obj, expected_spec: Obj
) -> None:
    body = builders.sent_event(make_run(), "sent-0", payload)
    assert body["apiVersion"] == API_VERSION and body["kind"] == "Event"
    assert body["metadata"]["name"] == "sent-0"
    assert body["metadata"]["namespace"] == NAMESPACE
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kubestep", "kubestep.dev/run": RUN}
    assert body["spec"] == expected_spec
    Event.model_validate(body)  # a valid Event, as the CRD schema would accept it


@pytest.mark.parametrize(("warning", "kind"), [(True, "Warning"), (False, "Normal")])
def test_a_note_becomes_a_kubernetes_event_about_the_run(warning: bool, kind: str) -> None:
    run_obj = make_run().to_dict()
    now = datetime(2026, 3, 1, 12, 0, 5, 123456, tzinfo=UTC)
    body = builders.note_event(run_obj, Note("StepRetrying", "x" * 2000, warning=warning), now)
    assert body["apiVersion"] == "v1" and body["kind"] == "Event"
    assert body["metadata"] == {"generateName": f"{RUN}.", "namespace": NAMESPACE}
    assert body["involvedObject"] == {
        "apiVersion": API_VERSION,
        "kind": "WorkflowRun",
        "name": RUN,
        "namespace": NAMESPACE,
        "uid": RUN_UID,
    }
    assert body["reason"] == "StepRetrying"
    assert body["type"] == kind
    assert len(body["message"]) == 1024
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-03-01T12:00:05Z"
    assert body["count"] == 1
    assert body["source"] == {"component": "kubestep-operator"}
