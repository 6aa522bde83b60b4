"""Pure builders of the objects the operator creates: step Jobs, state Secrets for large inputs, runs, events.

No I/O here: every function maps models to the dict the API server receives, so each can be tested
table-style.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Any

from kubestep.api.base import API_VERSION, ObjectMeta
from kubestep.api.event import Event
from kubestep.api.run import ParentRef, RunEvent, WorkflowRef, WorkflowRun, WorkflowRunSpec, WorkflowRunStatus
from kubestep.api.workflow import Workflow
from kubestep.engine.actions import AnnounceEnd, Note, StartChild, StartExecution, StartRerun
from kubestep.engine.decide import runner_state

Obj = dict[str, Any]

#: Where the run's state is mounted in a step pod (the runner's default ``--state`` directory).
STATE_DIR = "/var/run/kubestep/state"
STATE_KEY = "state.json"
#: A runner state up to this many bytes of JSON travels in its pod's own annotation, read through the
#: downward API; a larger one in a Secret of its own. The annotation saves a write, an object and the
#: kubelet's read per step. Whoever may read pods may read the run (`view`), whose spec and status hold
#: the same event and outputs; the pod shows them where pods are shown, though (`kubectl describe pod`,
#: log collectors that copy pod annotations into records). The bound keeps pods small (every watcher of
#: pods receives each of their updates whole), far below the API server's 256 KiB for annotations.
INLINE_STATE_BYTES = 16 * 1024
#: The container that runs the step.
CONTAINER = "step"
#: How much longer than the step timeout the Job itself lives: long enough for a pod to wait for a node
#: (the pod's own deadline counts from its start), short enough that a pod never created ends the attempt.
JOB_DEADLINE_GRACE_SECONDS = 600
#: An unprivileged user for step pods; images built FROM the runner image can read their code as it.
STEP_UID = 65532

LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_RUN = "kubestep.dev/run"
LABEL_WORKFLOW = "kubestep.dev/workflow"
LABEL_EVENT = "kubestep.dev/event"
LABEL_PARENT = "kubestep.dev/parent"
LABEL_STEP = "kubestep.dev/step"
ANNOTATION_STEP = "kubestep.dev/step"
ANNOTATION_ATTEMPT = "kubestep.dev/attempt"
ANNOTATION_STATE = "kubestep.dev/state"
MANAGER = "kubestep"
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def owner_reference(obj: Obj) -> Obj:
    """An owner reference to ``obj``: deleting it deletes what it owns."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _run_owner(run: WorkflowRun) -> Obj:
    return owner_reference(
        {"apiVersion": API_VERSION, "kind": "WorkflowRun", "metadata": run.metadata.model_dump()}
    )


def _label_value(value: str) -> str:
    # Label values hold at most 63 characters; names of runs and workflows fit, others are cut.
    return value[:63].rstrip("-_.")


def run_label(run: str) -> str:
    """The value of the run label (``kubestep.dev/run``) on the Jobs, pods and Secrets of run ``run``."""
    return _label_value(run)


def workflow_label(workflow: str) -> str:
    """The value of the workflow label its runs carry (to select them)."""
    return _label_value(workflow)


def step_label(step_id: str) -> str:
    """The value of the ``kubestep.dev/step`` label for a step: its id when that is a valid label value.

    Other ids (``fetch:1``, non-ASCII, longer than 63 characters) get their invalid characters replaced
    and a short hash of the id, so two steps never share a value; the exact id is in the annotation.
    """
    if _LABEL_VALUE.fullmatch(step_id):
        return step_id
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", step_id)[:50].strip("-_.")
    return f"{cleaned}-{hashlib.sha256(step_id.encode()).hexdigest()[:8]}".lstrip("-")


def execution_labels(run: WorkflowRun) -> dict[str, str]:
    """Labels of a run's Jobs, Secrets and pods."""
    return {
        LABEL_MANAGED: MANAGER,
        LABEL_RUN: run_label(run.metadata.name),
        LABEL_WORKFLOW: _label_value(run.spec.workflow_ref.name),
    }


def state_json(action: StartExecution) -> str:
    """An execution's input (event and memoized outputs) as the runner reads it."""
    return action.state.model_dump_json(by_alias=True)


def state_in_secret(state: str) -> bool:
    """Whether an execution's input (``state_json``) is too large for its pod's annotation."""
    return len(state.encode()) > INLINE_STATE_BYTES


def may_have_state_secrets(run: WorkflowRun, status: WorkflowRunStatus) -> bool:
    """Whether an execution of ``run`` may have been given a Secret, judged from what ``status`` recorded.

    The input of an execution past the last recorded step is the largest the run has had, but for what
    shrinks as steps advance: a retry's target step and attempt, and a few bytes per step as a pending
    step's `"done":false,"output":null` turns into its result. Those are allowed for, so that a run which
    had a Secret is never taken for one that had none.
    """
    largest = len(runner_state(run, status).model_dump_json(by_alias=True).encode())
    slack = 1024 + 8 * len(status.steps) + max((len(s.id.encode()) for s in status.steps), default=0)
    return largest + slack > INLINE_STATE_BYTES


def state_secret(run: WorkflowRun, action: StartExecution, state: str | None = None) -> Obj | None:
    """The Secret carrying an execution's input (``state``: its ``state_json``, if already made), owned by
    the run; None when its pod carries it."""
    state = state_json(action) if state is None else state
    if not state_in_secret(state):
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": action.name,
            "namespace": run.metadata.namespace,
            "labels": execution_labels(run),
            "ownerReferences": [_run_owner(run)],
        },
        "stringData": {STATE_KEY: state},
        "immutable": True,
    }


def step_job(run: WorkflowRun, action: StartExecution, state: str | None = None) -> Obj:
    """The Job of one execution: one pod, never restarted, no API credentials, restricted-compliant.

    ``state``: the execution's ``state_json``, if already made."""
    spec = run.spec.workflow
    template = spec.pod_template
    labels = execution_labels(run)
    annotations = {ANNOTATION_ATTEMPT: str(action.attempt)}
    if action.step is not None:
        annotations[ANNOTATION_STEP] = action.step
        labels[LABEL_STEP] = step_label(action.step)
    state = state_json(action) if state is None else state
    pod_annotations = dict(annotations)
    if state_in_secret(state):
        volume: Obj = {"secret": {"secretName": action.name, "defaultMode": 0o444}}
    else:
        pod_annotations[ANNOTATION_STATE] = state
        item = {"path": STATE_KEY, "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_STATE}']"}}
        volume = {"downwardAPI": {"items": [item], "defaultMode": 0o444}}
    container: Obj = {
        "name": CONTAINER,
        # Pinned by digest once the run's first pod ran, so a tag pushed again never changes a run in flight.
        "image": action.image or spec.image,
        "command": ["python", "-m", "kubestep.runner"],
        "env": [
            {"name": "KUBESTEP_STATE", "value": f"{STATE_DIR}/{STATE_KEY}"},
            *(var.to_dict() for var in template.env),
        ],
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR, "readOnly": True}],
        # A runner that dies before writing its report still leaves its last log lines as the message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if template.env_from:
        container["envFrom"] = [source.to_dict() for source in template.env_from]
    resources = template.resources.to_dict() if template.resources else {}
    pod = action.pod
    if pod is not None:
        # The step's own settings (`spec.steps`), merged by resource name over the template's.
        for kind, amounts in pod.resources.items():
            resources[kind] = {**resources.get(kind, {}), **amounts}
    if resources:
        container["resources"] = resources
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": STEP_UID,
            "runAsGroup": STEP_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "state", **volume}],
    }
    if action.timeout_seconds is not None:
        # On the pod, not the Job: the pod and its log are kept when the step times out.
        pod_spec["activeDeadlineSeconds"] = max(1, math.ceil(action.timeout_seconds))
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    node_selector = {**template.node_selector, **(pod.node_selector if pod else {})}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = [toleration.to_dict() for toleration in template.tolerations]
    tolerations += [t for t in (pod.tolerations if pod else []) if t not in tolerations]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if template.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [secret.to_dict() for secret in template.image_pull_secrets]
    job_spec: Obj = {
        # kubestep owns retries: every attempt is its own Job.
        "backoffLimit": 0,
        "template": {"metadata": {"labels": labels, "annotations": pod_annotations}, "spec": pod_spec},
    }
    if action.timeout_seconds is not None:
        job_spec["activeDeadlineSeconds"] = pod_spec["activeDeadlineSeconds"] + JOB_DEADLINE_GRACE_SECONDS
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": action.name,
            "namespace": run.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [_run_owner(run)],
        },
        "spec": job_spec,
    }


def _run_object(
    name: str, namespace: str | None, workflow: Workflow, event: RunEvent, parent: ParentRef | None = None
) -> WorkflowRun:
    return WorkflowRun.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": WorkflowRunSpec(
                workflow_ref=WorkflowRef(name=workflow.metadata.name),
                workflow=workflow.spec,
                event=event,
                parent=parent,
            ),
        }
    )


def event_run(workflow: Workflow, event: Event, name: str, ts: datetime) -> Obj:
    """The run an event starts for ``workflow``; it keeps the event's name as its source.

    An event without ``spec.id`` gets the object's uid, one without ``spec.ts`` the time ``ts`` (when it
    was created): the function always sees both.
    """
    spec = event.spec.completed(event.metadata.uid or event.metadata.name, ts)
    run_event = RunEvent.model_validate({**spec.model_dump(), "source": event.metadata.name})
    body = _run_object(name, event.metadata.namespace, workflow, run_event).to_dict()
    body["metadata"]["labels"] = {
        LABEL_MANAGED: MANAGER,
        LABEL_WORKFLOW: _label_value(workflow.metadata.name),
        LABEL_EVENT: _label_value(event.metadata.name),
    }
    body.pop("status", None)
    return body


def rerun_run(original: WorkflowRun, workflow: Workflow | None, action: StartRerun) -> Obj:
    """A rerun of ``original``'s event: the Workflow's current spec (the original's copy when the Workflow
    is gone), the same event, and the recorded steps it reuses. Not owned by the original: deleting one
    run leaves the other."""
    spec = original.spec.model_copy(
        update={
            "workflow": workflow.spec if workflow is not None else original.spec.workflow,
            "rerun": action.rerun,
            "rerun_requests": [],
            "cancel": False,
            "cancel_reason": None,
        }
    )
    body = WorkflowRun(
        metadata=ObjectMeta(name=action.name, namespace=original.metadata.namespace), spec=spec
    ).to_dict()
    body["metadata"]["labels"] = {
        key: value for key, value in original.metadata.labels.items() if key != LABEL_PARENT
    } or {LABEL_MANAGED: MANAGER, LABEL_WORKFLOW: _label_value(original.spec.workflow_ref.name)}
    body.pop("status", None)
    return body


def tick_run(workflow: Workflow, event: RunEvent, name: str) -> Obj:
    """The run a tick of a `cron` trigger starts; its name comes from the workflow and the tick's time."""
    body = _run_object(name, workflow.metadata.namespace, workflow, event).to_dict()
    body["metadata"]["labels"] = {
        LABEL_MANAGED: MANAGER,
        LABEL_WORKFLOW: _label_value(workflow.metadata.name),
    }
    body.pop("status", None)
    return body


def child_run(parent: WorkflowRun, workflow: Workflow, action: StartChild, now: datetime) -> Obj:
    """The run an invoke step starts; the parent owns it, so deleting the parent deletes the child.

    Its event's id is the child's (deterministic) name, its time ``now``.
    """
    event = RunEvent(
        name="kubestep/function.invoked",
        data=action.data,
        id=action.name,
        ts=now,
        source=parent.metadata.name,
    )
    ref = ParentRef(run=parent.metadata.name, step=action.step)
    body = _run_object(action.name, parent.metadata.namespace, workflow, event, ref).to_dict()
    body["metadata"]["labels"] = {
        LABEL_MANAGED: MANAGER,
        LABEL_WORKFLOW: _label_value(workflow.metadata.name),
        LABEL_PARENT: _label_value(parent.metadata.name),
    }
    owner = _run_owner(parent)
    owner["controller"] = False
    body["metadata"]["ownerReferences"] = [owner]
    body.pop("status", None)
    return body


def sent_event(run: WorkflowRun, name: str, payload: dict[str, Any]) -> Obj:
    """An Event published by a ``send_event`` step; its object name is deterministic."""
    spec: Obj = {"name": payload["name"], "data": payload.get("data") or {}}
    if payload.get("user"):
        spec["user"] = payload["user"]
    spec["id"] = payload.get("id") or name
    return {
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {
            "name": name,
            "namespace": run.metadata.namespace,
            "labels": {LABEL_MANAGED: MANAGER, LABEL_RUN: _label_value(run.metadata.name)},
        },
        "spec": spec,
    }


def end_event(run: WorkflowRun, action: AnnounceEnd) -> Obj:
    """The Event telling that ``run`` ended (``kubestep/run.failed``, ...), under its deterministic name."""
    payload = action.payload
    spec: Obj = {"name": payload["name"], "data": payload["data"], "id": payload["id"]}
    if payload.get("user"):
        spec["user"] = payload["user"]
    if run.status.finished_at is not None:
        spec["ts"] = run.status.finished_at.isoformat()
    return {
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {
            "name": action.name,
            "namespace": run.metadata.namespace,
            "labels": {
                LABEL_MANAGED: MANAGER,
                LABEL_RUN: run_label(run.metadata.name),
                LABEL_WORKFLOW: _label_value(run.spec.workflow_ref.name),
            },
        },
        "spec": spec,
    }


def event_stamp(when: datetime) -> str:
    """A time as Kubernetes Events hold it (``firstTimestamp``, ``lastTimestamp``): whole seconds, UTC."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_message(note: Note) -> str:
    """A note's message, cut to what an Event shows."""
    return note.message[:1024]


def note_event(
    obj: Obj, note: Note, now: datetime, component: str = "kubestep-operator", name: str | None = None
) -> Obj:
    """A Kubernetes Event about ``obj`` telling what the engine noted (shown by ``kubectl describe``).

    Named ``name`` when given (see :mod:`kubestep.controller.recorder`), else by the API server.
    """
    meta = obj["metadata"]
    stamp = event_stamp(now)
    metadata = {"name": name} if name else {"generateName": f"{meta['name'][:200]}."}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {**metadata, "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": note.reason,
        "message": event_message(note),
        "type": "Warning" if note.warning else "Normal",
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
