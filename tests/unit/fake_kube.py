"""An in-memory stand-in for the API module (:class:`kubestep.controller.kube.Kube`), for reconciler tests.

It has the same asynchronous methods with the same signatures (a test checks), keeps objects with
``resourceVersion``s, ``uid``s and creation times, and answers as the API server does: ``NotFound``,
``AlreadyExists``, ``Conflict`` on a stale status write, ``NotLeading`` for a write when ``may_write``
says no. Every call is recorded, in order, so that tests can assert what a reconcile did and in what
order; faults can be injected for the next calls of a method.

The cluster's side (the Job controller finishing a Job, the node writing a pod's status) is played by
the test through the helpers at the end.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubestep.controller.kube import AlreadyExists, Conflict, KubeError, NotFound, NotLeading, Obj

#: Object kinds kept besides the kubestep plurals (``workflowruns``, ``events``, ``workflows``).
JOBS, PODS, SECRETS, NOTES, LEASES = "jobs", "pods", "secrets", "core-events", "leases"

#: The calls that write: refused when not leading (the Lease calls decide leadership and are exempt).
WRITES = frozenset(
    {
        "create",
        "replace",
        "replace_status",
        "merge_patch",
        "create_job",
        "delete_job",
        "delete_pod",
        "create_secret",
        "delete_secret",
        "delete_secrets",
        "delete_jobs",
        "delete_object",
        "post_event",
        "patch_event",
    }
)


@dataclass(frozen=True)
class Call:
    """One API call: the method and the name of the object it concerned (``kind/name`` for kubestep kinds)."""

    method: str
    name: str

    def __repr__(self) -> str:
        return f"{self.method}({self.name})"


@dataclass
class _Fault:
    method: str
    error: KubeError
    times: int
    name: str | None


class FakeKube:
    """The API module's methods over an in-memory store."""

    def __init__(self, may_write: Callable[[], bool] | None = None) -> None:
        self.may_write = may_write
        self.store: dict[tuple[str, str, str], Obj] = {}
        self.calls: list[Call] = []
        self.logs: dict[tuple[str, str], str] = {}
        """Pod logs by (namespace, pod name)."""
        self._faults: list[_Fault] = []
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)
        self.now = "2026-03-01T12:00:00Z"
        """The creation time stamped on new objects."""

    # Test controls ---------------------------------------------------------------------------------

    def fail(self, method: str, error: KubeError, times: int = 1, name: str | None = None) -> None:
        """Make the next ``times`` calls of ``method`` (on the object ``name``, if given) raise ``error``."""
        self._faults.append(_Fault(method, error, times, name))

    def writes(self) -> list[Call]:
        """The write calls made so far, in order."""
        return [call for call in self.calls if call.method in WRITES]

    def methods(self, *only: str) -> list[str]:
        """The methods called so far, in order (only those named, if any)."""
        return [call.method for call in self.calls if not only or call.method in only]

    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every stored object of ``kind`` (copies), by name."""
        found = [
            copy.deepcopy(obj)
            for (k, ns, _), obj in sorted(self.store.items())
            if k == kind and namespace in (None, ns)
        ]
        return found

    def put(self, kind: str, body: Obj) -> Obj:
        """Store ``body`` as the cluster would have it (no call recorded, no fault)."""
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("creationTimestamp", self.now)
        meta["resourceVersion"] = str(next(self._versions))
        self.store[(kind, meta["namespace"], meta["name"])] = body
        return copy.deepcopy(body)

    def peek(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The stored object (a copy), or None; no call recorded."""
        obj = self.store.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def touch(self, kind: str, namespace: str, name: str, **changes: Any) -> None:
        """Change a stored object as another writer would (its ``resourceVersion`` moves on)."""
        obj = self.store[(kind, namespace, name)]
        for field, value in changes.items():
            obj[field] = value
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    # The machinery of every call ---------------------------------------------------------------------

    def _enter(self, method: str, name: str) -> None:
        self.calls.append(Call(method, name))
        if method in WRITES and self.may_write is not None and not self.may_write():
            raise NotLeading("not sent: this operator does not hold the leader lease")
        for fault in self._faults:
            if fault.method == method and fault.times > 0 and fault.name in (None, name):
                fault.times -= 1
                raise fault.error

    def _get(self, kind: str, namespace: str, name: str) -> Obj:
        obj = self.store.get((kind, namespace, name))
        if obj is None:
            raise NotFound(f'{kind} "{name}" not found', 404)
        return copy.deepcopy(obj)

    def _create(self, kind: str, namespace: str, body: Obj) -> Obj:
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if "name" not in meta and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._uids):05d}"
        meta["namespace"] = namespace
        if (kind, namespace, meta["name"]) in self.store:
            raise AlreadyExists(f'{kind} "{meta["name"]}" already exists', 409)
        meta.pop("resourceVersion", None)
        meta.pop("uid", None)
        meta.pop("creationTimestamp", None)
        return self.put(kind, body)

    def _delete(self, kind: str, namespace: str, name: str) -> None:
        if self.store.pop((kind, namespace, name), None) is None:
            raise NotFound(f'{kind} "{name}" not found', 404)

    @staticmethod
    def _labelled(obj: Obj, label: str, value: str) -> bool:
        return bool((obj.get("metadata", {}).get("labels") or {}).get(label) == value)

    # kubestep resources -------------------------------------------------------------------------------

    async def get(self, plural: str, namespace: str, name: str) -> Obj:
        """Read one kubestep object."""
        self._enter("get", f"{plural}/{name}")
        return self._get(plural, namespace, name)

    async def list_objects(self, plural: str, namespace: str) -> list[Obj]:
        """Read every kubestep object of one kind in a namespace."""
        self._enter("list_objects", plural)
        return self.objects(plural, namespace)

    async def list_runs(self, namespace: str, workflow_label: str, selector: str = "") -> list[Obj]:
        """The WorkflowRuns labelled as runs of a workflow (and matching ``selector``, ``a=b,c=d``)."""
        self._enter("list_runs", workflow_label)
        wanted = dict(p.split("=", 1) for p in selector.split(",") if p)
        wanted["kubestep.dev/workflow"] = workflow_label
        return [
            o
            for o in self.objects("workflowruns", namespace)
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def delete_object(self, plural: str, namespace: str, name: str) -> None:
        """Delete a kubestep object."""
        self._enter("delete_object", f"{plural}/{name}")
        self._delete(plural, namespace, name)

    async def create(self, plural: str, namespace: str, body: Obj) -> Obj:
        """Create a kubestep object."""
        self._enter("create", f"{plural}/{body['metadata'].get('name')}")
        return self._create(plural, namespace, body)

    async def replace(self, plural: str, obj: Obj) -> Obj:
        """Write ``obj``'s metadata and spec over the object, if it is still at the version read."""
        meta = obj["metadata"]
        self._enter("replace", f"{plural}/{meta['name']}")
        stored = self.store.get((plural, meta["namespace"], meta["name"]))
        if stored is None:
            raise NotFound(f'{plural} "{meta["name"]}" not found', 404)
        if stored["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {plural} "{meta["name"]}": the object has been modified',
                409,
            )
        stored["spec"] = copy.deepcopy(obj.get("spec", {}))
        stored["metadata"]["labels"] = copy.deepcopy(meta.get("labels") or {})
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(stored)

    async def replace_status(self, plural: str, obj: Obj, status: Obj) -> Obj:
        """Write ``status`` over the object's status, if the object is still at the version read."""
        meta = obj["metadata"]
        self._enter("replace_status", f"{plural}/{meta['name']}")
        stored = self.store.get((plural, meta["namespace"], meta["name"]))
        if stored is None:
            raise NotFound(f'{plural} "{meta["name"]}" not found', 404)
        if stored["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {plural} "{meta["name"]}": the object has been modified',
                409,
            )
        stored["status"] = copy.deepcopy(status)
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(stored)

    async def merge_patch(self, plural: str, namespace: str, name: str, patch: Obj) -> Obj:
        """Merge ``patch`` into a kubestep object (not its status)."""
        self._enter("merge_patch", f"{plural}/{name}")
        stored = self.store.get((plural, namespace, name))
        if stored is None:
            raise NotFound(f'{plural} "{name}" not found', 404)
        _merge(stored, {k: v for k, v in patch.items() if k != "status"})
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(stored)

    # Jobs, pods, Secrets --------------------------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> Obj:
        """Read a Job."""
        self._enter("get_job", name)
        return self._get(JOBS, namespace, name)

    async def create_job(self, namespace: str, body: Obj) -> None:
        """Create a Job."""
        self._enter("create_job", body["metadata"]["name"])
        self._create(JOBS, namespace, body)

    async def run_jobs(self, namespace: str, run: str) -> list[Obj]:
        """The Jobs labelled as the run's."""
        self._enter("run_jobs", run)
        return [job for job in self.objects(JOBS, namespace) if self._labelled(job, "kubestep.dev/run", run)]

    async def get_secret(self, namespace: str, name: str) -> Obj:
        """Read a Secret."""
        self._enter("get_secret", name)
        return self._get(SECRETS, namespace, name)

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job (its pods go with it, in the background: here, at once)."""
        self._enter("delete_job", name)
        self._delete(JOBS, namespace, name)
        for pod in self.objects(PODS, namespace):
            if self._labelled(pod, "batch.kubernetes.io/job-name", name):
                self.store.pop((PODS, namespace, pod["metadata"]["name"]), None)

    async def delete_jobs(self, namespace: str, label_selector: str) -> None:
        """Delete every Job with these labels (``key=value``, comma-separated), and their pods."""
        self._enter("delete_jobs", label_selector)
        wanted = dict(pair.split("=", 1) for pair in label_selector.split(","))
        for job in self.objects(JOBS, namespace):
            labels = job["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                await self.delete_job(namespace, job["metadata"]["name"])
                self.calls.pop()

    async def job_pods(self, namespace: str, job: str) -> list[Obj]:
        """The pods of a Job."""
        self._enter("job_pods", job)
        return [
            pod
            for pod in self.objects(PODS, namespace)
            if self._labelled(pod, "batch.kubernetes.io/job-name", job)
        ]

    async def job_events(self, namespace: str, job: str) -> list[Obj]:
        """The Kubernetes Events recorded about a Job."""
        self._enter("job_events", job)
        return [
            event
            for event in self.objects(NOTES, namespace)
            if event.get("involvedObject", {}).get("kind") == "Job"
            and event.get("involvedObject", {}).get("name") == job
        ]

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod."""
        self._enter("delete_pod", name)
        self._delete(PODS, namespace, name)

    async def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last ``lines`` lines a container printed."""
        self._enter("pod_log_tail", pod)
        if (PODS, namespace, pod) not in self.store:
            raise NotFound(f'pods "{pod}" not found', 404)
        return "\n".join(self.logs.get((namespace, pod), "").splitlines()[-lines:])

    async def create_secret(self, namespace: str, body: Obj) -> None:
        """Create a Secret."""
        self._enter("create_secret", body["metadata"]["name"])
        self._create(SECRETS, namespace, body)

    async def delete_secret(self, namespace: str, name: str) -> None:
        """Delete a Secret."""
        self._enter("delete_secret", name)
        self._delete(SECRETS, namespace, name)

    async def delete_secrets(self, namespace: str, label_selector: str) -> None:
        """Delete every Secret with these labels (``key=value``, comma-separated)."""
        self._enter("delete_secrets", label_selector)
        wanted = dict(pair.split("=", 1) for pair in label_selector.split(","))
        for (kind, ns, name), obj in list(self.store.items()):
            labels = obj["metadata"].get("labels") or {}
            if kind == SECRETS and ns == namespace and all(labels.get(k) == v for k, v in wanted.items()):
                del self.store[(kind, ns, name)]

    async def post_event(self, namespace: str, body: Obj) -> None:
        """Record a Kubernetes Event."""
        self._enter("post_event", str(body.get("reason")))
        self._create(NOTES, namespace, body)

    async def patch_event(self, namespace: str, name: str, patch: Obj) -> None:
        """Merge ``patch`` into a Kubernetes Event."""
        self._enter("patch_event", name)
        stored = self.store.get((NOTES, namespace, name))
        if stored is None:
            raise NotFound(f'events "{name}" not found', 404)
        stored.update(copy.deepcopy(patch))

    # Leases ----------------------------------------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str, timeout: float) -> Obj:
        """Read a Lease."""
        self._enter("get_lease", name)
        return self._get(LEASES, namespace, name)

    async def create_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        """Create a Lease."""
        self._enter("create_lease", body["metadata"]["name"])
        return self._create(LEASES, namespace, body)

    async def replace_lease(self, namespace: str, name: str, body: Obj, timeout: float) -> Obj:
        """Replace a Lease if it is still at ``body``'s ``resourceVersion``."""
        self._enter("replace_lease", name)
        stored = self._get(LEASES, namespace, name)
        if stored["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise Conflict(f'Operation cannot be fulfilled on leases "{name}"', 409)
        body = copy.deepcopy(body)
        body["metadata"] = {**stored["metadata"], **body["metadata"]}
        return self.put(LEASES, body)

    # The cluster's side -------------------------------------------------------------------------------

    def run_job(self, namespace: str, name: str) -> Obj:
        """The Job controller created the Job's pod, and the node started its container."""
        job = self.store[(JOBS, namespace, name)]
        job["status"] = {"active": 1}
        labels = {"batch.kubernetes.io/job-name": name, **(job["metadata"].get("labels") or {})}
        return self.put(
            PODS,
            {
                "metadata": {"name": f"{name}-pod", "namespace": namespace, "labels": labels},
                "status": {
                    "phase": "Running",
                    "containerStatuses": [{"name": "step", "state": {"running": {"startedAt": self.now}}}],
                },
            },
        )

    def end_job(self, namespace: str, name: str, message: str, exit_code: int = 0, log: str = "") -> None:
        """The Job's container exited with ``message`` as its termination message; the Job finished."""
        if (PODS, namespace, f"{name}-pod") not in self.store:
            self.run_job(namespace, name)
        pod = self.store[(PODS, namespace, f"{name}-pod")]
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "step",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "startedAt": self.now,
                            "finishedAt": self.now,
                        }
                    },
                }
            ],
        }
        self.logs[(namespace, f"{name}-pod")] = log
        finished = "Complete" if exit_code == 0 else "Failed"
        self.touch(
            JOBS,
            namespace,
            name,
            status={"conditions": [{"type": finished, "status": "True", "lastTransitionTime": self.now}]},
        )


def _merge(target: Obj, patch: Obj) -> None:
    """JSON merge patch (RFC 7386): ``None`` removes a field."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
