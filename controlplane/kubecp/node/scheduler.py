"""The scheduler of a one-node cluster: bind every pending pod to the process node.

It runs with the scheduler's identity (``system:kube-scheduler``), which RBAC
allows to create ``pods/binding``; the kubelet identity may not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from kubecp.node.api import Api, Obj, describe_error, is_status

log = logging.getLogger("kubecp.node")

UNSCHEDULED = "spec.nodeName="
DEFAULT_SCHEDULER = "default-scheduler"


def schedulable(pod: Obj, node_labels: Mapping[str, str]) -> bool:
    """Whether this scheduler should bind ``pod`` to the node (labels as its nodeSelector asks)."""
    meta, spec = pod["metadata"], pod["spec"]
    if spec.get("nodeName") or meta.get("deletionTimestamp"):
        return False
    if (spec.get("schedulerName") or DEFAULT_SCHEDULER) != DEFAULT_SCHEDULER:
        return False
    if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
        return False
    if spec.get("schedulingGates"):
        return False
    return all(node_labels.get(key) == value for key, value in (spec.get("nodeSelector") or {}).items())


class Scheduler:
    """Watches unscheduled pods and binds them to ``node_name``."""

    def __init__(
        self, api: Api, node_name: str, node_labels: Callable[[], Mapping[str, str]], stop: threading.Event
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.node_labels = node_labels
        self.stop = stop
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        """Start binding in a background thread."""
        self._thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                pods, version = self.api.list_pods(UNSCHEDULED)
                for pod in pods:
                    self._consider(pod)
                for kind, pod in self.api.watch_pods(UNSCHEDULED, version, timeout=60):
                    if self.stop.is_set():
                        return
                    if kind in ("ADDED", "MODIFIED"):
                        self._consider(pod)
            except Exception as error:
                if self.stop.is_set():
                    return
                if is_status(error, 410):
                    # The resourceVersion expired (compaction): list again at once.
                    log.info("scheduler: %s; listing again", describe_error(error))
                else:
                    log.warning("scheduler: %s; listing again", describe_error(error))
                    self.stop.wait(1.0)

    def _consider(self, pod: Obj) -> None:
        if not schedulable(pod, self.node_labels()):
            return
        meta = pod["metadata"]
        try:
            self.api.bind(meta["namespace"], meta["name"], meta["uid"], self.node_name)
        except Exception as error:
            # 409: bound meanwhile; 404: deleted meanwhile.
            if not is_status(error, 404, 409):
                log.warning(
                    "scheduler: binding %s/%s failed: %s",
                    meta["namespace"],
                    meta["name"],
                    describe_error(error),
                )
            return
        log.info("scheduler: bound %s/%s to %s", meta["namespace"], meta["name"], self.node_name)
        self.api.event(
            pod,
            "Pod",
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.node_name}",
            "default-scheduler",
        )
