"""The one module that talks to the Kubernetes API.

Every call runs the official (synchronous) client in a worker thread so the operator's event loop never
blocks, and every client error leaves this module as one of the domain errors below.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubestep.api.base import GROUP, VERSION
from kubestep.controller.metrics import METRICS

Obj = dict[str, Any]

#: (connect, read) seconds of every API call.
REQUEST_TIMEOUT = (10, 60)

RUNS = "workflowruns"
EVENTS = "events"
WORKFLOWS = "workflows"


class KubeError(Exception):
    """An API call failed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    """The object does not exist."""


class AlreadyExists(KubeError):
    """An object of that name exists already."""


class Conflict(KubeError):
    """The object changed since it was read (optimistic concurrency)."""


class Rejected(KubeError):
    """The API server refused the object as invalid or forbidden; retrying the same request cannot help."""


class Unavailable(KubeError):
    """The API server could not be reached, timed out, throttled the call (429) or answered with a server
    error; retry later, and not before ``retry_after`` seconds when the server said so."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class TooLarge(KubeError):
    """The object is larger than the API server (or its storage) accepts; the same request cannot pass."""


#: How the API server and etcd word a request that is too large (413, or a 500 passed on from etcd or from
#: the API server's gRPC client to it, whose messages are capped at 2 MiB).
_TOO_LARGE = (
    "request is too large",
    "request entity too large",
    "too large",
    "too long",
    "larger than max",
)


class NotLeading(KubeError):
    """Not sent: this operator is not the leader (any more), and only the leader writes."""


#: The name the operator's writes are recorded under in ``metadata.managedFields``.
FIELD_MANAGER = "kubestep-operator"


def _domain_error(exc: Exception) -> KubeError:
    if not isinstance(exc, ApiException):
        return Unavailable(f"{type(exc).__name__}: {exc}")
    message = _api_message(exc)
    if exc.status == 413 or (
        exc.status in (400, 422, 500) and any(words in message.lower() for words in _TOO_LARGE)
    ):
        return TooLarge(message, exc.status)
    if exc.status == 404:
        return NotFound(message, 404)
    if exc.status == 409:
        reason = _api_reason(exc)
        kind = AlreadyExists if reason == "AlreadyExists" else Conflict
        return kind(message, 409)
    if exc.status in (400, 403, 422):
        return Rejected(message, exc.status)
    return Unavailable(message, exc.status, _retry_after(exc))


def _retry_after(exc: ApiException) -> float | None:
    """The delay a throttling (429) or unavailable (503) server asked for, in seconds, if it named one."""
    header = (exc.headers or {}).get("Retry-After")
    details = _api_status(exc).get("details")
    seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    for value in (header, seconds):
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            continue  # an HTTP date: the queue's own backoff applies
    return None


def _api_status(exc: ApiException) -> Obj:
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _api_message(exc: ApiException) -> str:
    return str(_api_status(exc).get("message") or exc.reason or exc.status)


def _api_reason(exc: ApiException) -> str:
    return str(_api_status(exc).get("reason") or "")


def load_configuration() -> None:
    """Use the in-cluster ServiceAccount when there is one, else the kubeconfig (``$KUBECONFIG``)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def _gate_writes(api_client: client.ApiClient, may_write: Callable[[], bool]) -> None:
    """Ask ``may_write`` again as the request goes onto the connection.

    The check in :meth:`Kube._call` runs before the client serialises the body and takes a connection; a
    process frozen (SIGSTOP, a starved VM) in between would send its write when it wakes, after another
    replica took the lease. Asking at the last moment before the socket leaves only the send itself.
    """
    pool = api_client.rest_client.pool_manager
    send = pool.urlopen

    def urlopen(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() not in _READS and not may_write():
            raise NotLeading("not sent: this operator does not hold the leader lease")
        return send(method, url, *args, **kwargs)

    pool.urlopen = urlopen  # type: ignore[method-assign]


class Kube:
    """Typed, asynchronous access to the objects the operator reads and writes.

    ``may_write`` is asked, in the thread that sends the request and right before sending it, whether
    this process may write at all (leader election); a write it refuses raises :class:`NotLeading`.
    ``executor`` runs the calls (default: the event loop's); the Lease calls get their own, so that a
    renewal never waits behind the reconcilers' requests.
    """

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        may_write: Callable[[], bool] | None = None,
        field_manager: str = FIELD_MANAGER,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.api_client = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.coordination = client.CoordinationV1Api(self.api_client)
        self.may_write = may_write
        self.field_manager = field_manager
        self._executor = executor
        if may_write is not None:
            _gate_writes(self.api_client, may_write)

    async def _call(self, fn: Callable[..., Any], *args: Any, write: bool = False, **kwargs: Any) -> Any:
        # Without a timeout a half-open connection would block a worker, and its key, forever.
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        may_write = self.may_write if write else None

        def call() -> Any:
            # Asked here, not before handing the call to the thread: a frozen or starved process
            # that wakes up after its lease lapsed must not send what it had queued.
            if may_write is not None and not may_write():
                raise NotLeading("not sent: this operator does not hold the leader lease")
            try:
                answer = fn(*args, **kwargs)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                METRICS.api_request(fn.__name__, ok=False)
                raise _domain_error(exc) from exc
            METRICS.api_request(fn.__name__, ok=True)
            return answer

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._call(fn, *args, write=True, **kwargs)

    async def _record(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A write that creates or changes fields: recorded under the operator's field manager."""
        return await self._write(fn, *args, field_manager=self.field_manager, **kwargs)

    # kubestep resources -----------------------------------------------------------------------------

    async def get(self, plural: str, namespace: str, name: str) -> Obj:
        """Read one kubestep object."""
        return cast(
            Obj,
            await self._call(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
            ),
        )

    async def list_objects(self, plural: str, namespace: str) -> list[Obj]:
        """Read every kubestep object of one kind in a namespace."""
        found: Obj = await self._call(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
        )
        return list(found.get("items", []))

    async def list_runs(self, namespace: str, workflow_label: str, selector: str = "") -> list[Obj]:
        """The WorkflowRuns labelled as runs of a workflow (and matching ``selector``, more labels), read
        from the API server (not a cache)."""
        found: Obj = await self._call(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "workflowruns",
            label_selector=",".join(filter(None, [f"kubestep.dev/workflow={workflow_label}", selector])),
        )
        return list(found.get("items", []))

    async def delete_object(self, plural: str, namespace: str, name: str) -> None:
        """Delete a kubestep object; what it owns (Jobs, Secrets, child runs) goes in the background."""
        await self._write(
            self.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            propagation_policy="Background",
        )

    async def create(self, plural: str, namespace: str, body: Obj) -> Obj:
        """Create a kubestep object."""
        return cast(
            Obj,
            await self._record(
                self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body
            ),
        )

    async def replace(self, plural: str, obj: Obj) -> Obj:
        """Write ``obj``'s metadata and spec over the object, if it is still at the version read."""
        meta = obj["metadata"]
        return cast(
            Obj,
            await self._record(
                self.custom.replace_namespaced_custom_object,
                GROUP,
                VERSION,
                meta["namespace"],
                plural,
                meta["name"],
                obj,
            ),
        )

    async def replace_status(self, plural: str, obj: Obj, status: Obj) -> Obj:
        """Write ``status`` over the object's status, if the object is still at the version read."""
        meta = obj["metadata"]
        body = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": obj.get("spec", {}),
            "status": status,
        }
        return cast(
            Obj,
            await self._record(
                self.custom.replace_namespaced_custom_object_status,
                GROUP,
                VERSION,
                meta["namespace"],
                plural,
                meta["name"],
                body,
            ),
        )

    async def merge_patch(self, plural: str, namespace: str, name: str, patch: Obj) -> Obj:
        """Merge ``patch`` into a kubestep object (not its status)."""
        return cast(
            Obj,
            await self._record(
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                patch,
                _content_type="application/merge-patch+json",
            ),
        )

    # Jobs, pods, Secrets --------------------------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> Obj:
        """Read a Job."""
        job = await self._call(self.batch.read_namespaced_job, name, namespace)
        return self._plain(job)

    async def create_job(self, namespace: str, body: Obj) -> None:
        """Create a Job."""
        await self._record(self.batch.create_namespaced_job, namespace, body)

    async def run_jobs(self, namespace: str, run: str) -> list[Obj]:
        """The Jobs labelled as the run's."""
        jobs = await self._call(
            self.batch.list_namespaced_job, namespace, label_selector=f"kubestep.dev/run={run}"
        )
        return [self._plain(j) for j in jobs.items]

    async def get_secret(self, namespace: str, name: str) -> Obj:
        """Read a Secret."""
        return self._plain(await self._call(self.core.read_namespaced_secret, name, namespace))

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods."""
        await self._write(self.batch.delete_namespaced_job, name, namespace, propagation_policy="Background")

    async def delete_jobs(self, namespace: str, label_selector: str) -> None:
        """Delete every Job with these labels, in one request; the garbage collector deletes their pods
        after them (Background: a Job's default for this call would orphan its pods)."""
        await self._write(
            self.batch.delete_collection_namespaced_job,
            namespace,
            label_selector=label_selector,
            propagation_policy="Background",
        )

    async def job_pods(self, namespace: str, job: str) -> list[Obj]:
        """The pods of a Job."""
        pods = await self._call(
            self.core.list_namespaced_pod, namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
        )
        return [self._plain(p) for p in pods.items]

    async def job_events(self, namespace: str, job: str) -> list[Obj]:
        """The Kubernetes Events recorded about a Job (the Job controller's ``FailedCreate``, ...)."""
        events = await self._call(
            self.core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.kind=Job,involvedObject.name={job}",
        )
        return [self._plain(e) for e in events.items]

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (its containers get their grace period)."""
        await self._write(self.core.delete_namespaced_pod, name, namespace)

    async def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last ``lines`` lines a container printed."""
        return cast(
            str,
            await self._call(
                self.core.read_namespaced_pod_log, pod, namespace, container=container, tail_lines=lines
            ),
        )

    async def create_secret(self, namespace: str, body: Obj) -> None:
        """Create a Secret."""
        await self._record(self.core.create_namespaced_secret, namespace, body)

    async def delete_secret(self, namespace: str, name: str) -> None:
        """Delete a Secret."""
        await self._write(self.core.delete_namespaced_secret, name, namespace)

    async def delete_secrets(self, namespace: str, label_selector: str) -> None:
        """Delete every Secret with these labels, in one request."""
        await self._write(
            self.core.delete_collection_namespaced_secret, namespace, label_selector=label_selector
        )

    async def post_event(self, namespace: str, body: Obj) -> None:
        """Record a Kubernetes Event (what ``kubectl describe`` shows)."""
        await self._record(self.core.create_namespaced_event, namespace, body)

    async def patch_event(self, namespace: str, name: str, patch: Obj) -> None:
        """Merge ``patch`` into a Kubernetes Event (a repeat: its count and last time)."""
        await self._record(
            self.core.patch_namespaced_event,
            name,
            namespace,
            patch,
            _content_type="application/merge-patch+json",
        )

    # Leases (leader election): never behind the write check, which they decide ------------------------

    async def get_lease(self, namespace: str, name: str, timeout: float) -> Obj:
        """Read a Lease (``coordination.k8s.io/v1``)."""
        lease = await self._call(
            self.coordination.read_namespaced_lease, name, namespace, _request_timeout=(timeout, timeout)
        )
        return self._plain(lease)

    async def create_lease(self, namespace: str, body: Obj, timeout: float) -> Obj:
        """Create a Lease."""
        lease = await self._call(
            self.coordination.create_namespaced_lease,
            namespace,
            body,
            field_manager=self.field_manager,
            _request_timeout=(timeout, timeout),
        )
        return self._plain(lease)

    async def replace_lease(self, namespace: str, name: str, body: Obj, timeout: float) -> Obj:
        """Replace a Lease if it is still at ``body``'s ``resourceVersion`` (else :class:`Conflict`)."""
        lease = await self._call(
            self.coordination.replace_namespaced_lease,
            name,
            namespace,
            body,
            field_manager=self.field_manager,
            _request_timeout=(timeout, timeout),
        )
        return self._plain(lease)

    def _plain(self, obj: Any) -> Obj:
        # The typed client objects become the same camelCase dicts the custom-object calls return.
        plain: Obj = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return plain
