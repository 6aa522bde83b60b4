"""The few API calls the process node makes, through the official client, on plain JSON objects.

The node works on the objects as the API serves them (camelCase dicts), like
the manifests users write, rather than on generated model classes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kubecp.loopback import api_client

Obj = dict[str, Any]
log = logging.getLogger("kubecp.node")

_STRATEGIC = "application/strategic-merge-patch+json"
_MERGE = "application/merge-patch+json"


def now() -> dt.datetime:
    """The current time, UTC."""
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """A ``metav1.Time`` (seconds precision)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(moment: dt.datetime) -> str:
    """A ``metav1.MicroTime``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> dt.datetime:
    """Parse a ``metav1.Time`` or ``MicroTime``."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def is_status(error: BaseException, *codes: int) -> bool:
    """Whether ``error`` is an API error with one of the HTTP ``codes``."""
    return isinstance(error, ApiException) and error.status in codes


def pod_replaced(error: BaseException) -> bool:
    """Whether a pod status patch failed on its uid precondition: the pod was deleted and re-created.

    The apiserver rejects a uid that differs from the object's as an immutable
    field (422) rather than as a failed precondition (409); both are recognised.
    Other conflicts (e.g. "the object has been modified") are not: they pass.
    """
    if not isinstance(error, ApiException):
        return False
    body = _error_body(error)
    if error.status == 409:
        message = str(body.get("message", "")).lower()
        return "precondition" in message and "uid" in message
    if error.status != 422:
        return False
    causes = (body.get("details") or {}).get("causes") or []
    return any(isinstance(cause, dict) and cause.get("field") == "metadata.uid" for cause in causes)


def retryable(error: BaseException) -> bool:
    """Whether a failed API call may succeed later: any API error but 404, or a connection problem."""
    if isinstance(error, ApiException):
        return bool(error.status != 404)
    return isinstance(error, (urllib3.exceptions.HTTPError, OSError))


def _error_body(error: ApiException) -> Obj:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def describe_error(error: BaseException) -> str:
    """A one-line description of a failed API call: the server's message (no headers), or the exception."""
    if isinstance(error, ApiException):
        message = _error_body(error).get("message")
        return str(message) if message else f"({error.status}) {error.reason}"
    return f"{type(error).__name__}: {error}"


def _read(response: Any) -> bytes:
    """Read all of a raw (``_preload_content=False``) response and give its connection back to the pool.

    Unread, the connection stays checked out: every call would open a new TLS
    connection, and the abandoned ones fill the apiserver's log with aborts.
    """
    try:
        return bytes(response.data)
    finally:
        response.release_conn()


def _json(response: Any) -> Any:
    return json.loads(_read(response))


def watch_event(line: str) -> tuple[str, Obj] | None:
    """One line of a watch stream as (type, object); an ERROR event is raised as the ApiException it carries.

    (The client's own ``Watch(deserialize=False)`` fails on ERROR events with a
    KeyError, hiding a 410 Gone.)
    """
    if not line.strip():
        return None
    event = json.loads(line)
    kind, obj = str(event.get("type")), event.get("object") or {}
    if kind == "ERROR":
        raise ApiException(
            status=int(obj.get("code") or 500), reason=f"{obj.get('reason')}: {obj.get('message')}"
        )
    return kind, cast(Obj, obj)


class Api:
    """An API connection with one identity (a kubeconfig)."""

    def __init__(self, kubeconfig: Path) -> None:
        # The apiserver is on loopback: never through a proxy from the environment.
        self.client = cast(Any, api_client(kubeconfig))
        self.core = client.CoreV1Api(self.client)
        self.coordination = client.CoordinationV1Api(self.client)
        self.server: str = self.client.configuration.host

    # -- pods ------------------------------------------------------------

    def list_pods(self, field_selector: str) -> tuple[list[Obj], str]:
        """Pods of every namespace matching ``field_selector``, and the list's resourceVersion."""
        data = _json(
            self.core.list_pod_for_all_namespaces(field_selector=field_selector, _preload_content=False)
        )
        return list(data.get("items") or []), str(data["metadata"]["resourceVersion"])

    def watch_pods(
        self, field_selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, Obj]]:
        """Pod events after ``resource_version`` (raises ApiException 410 when it is too old).

        The stream ends when the server ends the watch, after about ``timeout`` seconds.
        """
        response: Any = self.core.list_pod_for_all_namespaces(
            field_selector=field_selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            watch=True,
            _preload_content=False,
            # The server ends the watch after `timeout`; a connection gone silent must not hang us.
            _request_timeout=(10, timeout + 30),
        )
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                event = watch_event(line)
                if event is not None:
                    yield event
        finally:
            response.close()
            response.release_conn()

    def patch_pod_status(self, namespace: str, name: str, uid: str, status: Obj) -> None:
        """Strategic-merge-patch a pod's status (conditions merge by type, container statuses by name).

        The uid is a precondition, as the kubelet sends it: a pod deleted and
        re-created under the same name is refused (see :func:`pod_replaced`).
        """
        _read(
            self.core.patch_namespaced_pod_status(
                name,
                namespace,
                {"metadata": {"uid": uid}, "status": status},
                _content_type=_STRATEGIC,
                _preload_content=False,
            )
        )

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """Remove a pod whose containers are gone, as the kubelet does (grace 0, same uid only)."""
        _read(
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
                _preload_content=False,
            )
        )

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Bind a pod to ``node`` through the pods/binding subresource."""
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        _read(
            self.core.create_namespaced_pod_binding(
                name, namespace, client.V1Binding.model_validate(body), _preload_content=False
            )
        )

    # -- what pods refer to -------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        """A Secret, or None if it does not exist."""
        return self._get_or_none(
            lambda: self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        )

    def get_config_map(self, namespace: str, name: str) -> Obj | None:
        """A ConfigMap, or None if it does not exist."""
        return self._get_or_none(
            lambda: self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
        )

    @staticmethod
    def _get_or_none(call: Any) -> Obj | None:
        try:
            return cast(Obj, _json(call()))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def request_token(self, pod: Obj, audience: str | None, expiration_seconds: int) -> str:
        """A service-account token bound to ``pod``, from the TokenRequest API."""
        meta, spec = pod["metadata"], pod["spec"]
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        if audience:
            body["spec"]["audiences"] = [audience]
        account = spec.get("serviceAccountName") or "default"
        response = self.core.create_namespaced_service_account_token(
            account,
            meta["namespace"],
            client.AuthenticationV1TokenRequest.model_validate(body),
            _preload_content=False,
        )
        return str(_json(response)["status"]["token"])

    # -- events ----------------------------------------------------------

    def event(
        self, obj: Obj, kind: str, reason: str, message: str, component: str, warning: bool = False
    ) -> None:
        """Record an Event about ``obj`` (best effort: events are for humans)."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        moment = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": kind,
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": component},
            "firstTimestamp": rfc3339(moment),
            "lastTimestamp": rfc3339(moment),
            "count": 1,
            "reportingComponent": component,
        }
        try:
            _read(
                self.core.create_namespaced_event(
                    namespace, client.CoreV1Event.model_validate(body), _preload_content=False
                )
            )
        except Exception as error:
            log.debug("event %s for %s not recorded: %s", reason, meta["name"], error)

    # -- the node and its lease ------------------------------------------------

    def get_node(self, name: str) -> Obj | None:
        """The Node object, or None."""
        return self._get_or_none(lambda: self.core.read_node(name, _preload_content=False))

    def create_node(self, body: Obj) -> Obj:
        """Register a Node."""
        return cast(
            Obj, _json(self.core.create_node(client.V1Node.model_validate(body), _preload_content=False))
        )

    def patch_node_status(self, name: str, patch: Obj) -> None:
        """Strategic-merge-patch the node's status."""
        _read(self.core.patch_node_status(name, patch, _content_type=_STRATEGIC, _preload_content=False))

    def renew_lease(self, node: Obj, duration_seconds: int) -> None:
        """Create or renew the node's Lease in kube-node-lease (the node's heartbeat)."""
        name = node["metadata"]["name"]
        moment = micro_time(now())
        try:
            _read(
                self.coordination.patch_namespaced_lease(
                    name,
                    "kube-node-lease",
                    {
                        "spec": {
                            "holderIdentity": name,
                            "leaseDurationSeconds": duration_seconds,
                            "renewTime": moment,
                        }
                    },
                    _content_type=_MERGE,
                    _preload_content=False,
                )
            )
            return
        except ApiException as error:
            if error.status != 404:
                raise
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
                ],
            },
            "spec": {"holderIdentity": name, "leaseDurationSeconds": duration_seconds, "renewTime": moment},
        }
        _read(
            self.coordination.create_namespaced_lease(
                "kube-node-lease", client.V1Lease.model_validate(body), _preload_content=False
            )
        )
