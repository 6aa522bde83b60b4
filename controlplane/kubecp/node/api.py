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

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

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


def _json(response: Any) -> Any:
    return json.loads(response.data)


class Api:
    """An API connection with one identity (a kubeconfig)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client = cast(Any, config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]
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
        """Pod events after ``resource_version`` (raises ApiException 410 when it is too old)."""
        watcher = watch.Watch()  # type: ignore[no-untyped-call]
        for event in watcher.stream(  # type: ignore[no-untyped-call]
            self.core.list_pod_for_all_namespaces,
            field_selector=field_selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            deserialize=False,
        ):
            yield str(event["type"]), cast(Obj, event["object"])

    def patch_pod_status(self, namespace: str, name: str, patch: Obj) -> None:
        """Strategic-merge-patch a pod's status (conditions merge by type, container statuses by name)."""
        self.core.patch_namespaced_pod_status(
            name, namespace, patch, _content_type=_STRATEGIC, _preload_content=False
        )

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """Remove a pod whose containers are gone, as the kubelet does (grace 0, same uid only)."""
        self.core.delete_namespaced_pod(
            name,
            namespace,
            body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
            ),
            _preload_content=False,
        )

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Bind a pod to ``node`` through the pods/binding subresource."""
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        self.core.create_namespaced_pod_binding(
            name, namespace, client.V1Binding.model_validate(body), _preload_content=False
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
            self.core.create_namespaced_event(
                namespace, client.CoreV1Event.model_validate(body), _preload_content=False
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
        self.core.patch_node_status(name, patch, _content_type=_STRATEGIC, _preload_content=False)

    def renew_lease(self, node: Obj, duration_seconds: int) -> None:
        """Create or renew the node's Lease in kube-node-lease (the node's heartbeat)."""
        name = node["metadata"]["name"]
        moment = micro_time(now())
        try:
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
        self.coordination.create_namespaced_lease(
            "kube-node-lease", client.V1Lease.model_validate(body), _preload_content=False
        )
