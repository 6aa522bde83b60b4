"""Pod status fields as the kubelet writes them (conditions, container states)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubecp.node.api import Obj, now, rfc3339

# Reasons of pkg/kubelet/status/generate.go.
POD_COMPLETED = "PodCompleted"
POD_FAILED = "PodFailed"
CONTAINERS_NOT_READY = "ContainersNotReady"
CONTAINERS_NOT_INITIALIZED = "ContainersNotInitialized"

NODE_IP = "127.0.0.1"


@dataclass
class ConditionMemory:
    """Keeps ``lastTransitionTime`` of each condition until its status changes, as the kubelet does."""

    seen: dict[str, tuple[str, str]] = field(default_factory=dict)

    def condition(
        self,
        kind: str,
        status: bool,
        generation: int | None,
        reason: str | None = None,
        message: str | None = None,
    ) -> Obj:
        """A condition; ``reason`` and ``message`` are sent as null when absent, to clear old ones."""
        value = "True" if status else "False"
        previous = self.seen.get(kind)
        if previous is None or previous[0] != value:
            self.seen[kind] = (value, rfc3339(now()))
        condition: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": self.seen[kind][1],
            "reason": reason,
            "message": message,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        return condition


def unready_message(kind: str, names: list[str]) -> str:
    """The kubelet's message listing containers, e.g. ``containers with unready status: [a b]``."""
    return f"containers with {kind} status: [{' '.join(names)}]"


def terminal_reason(phase: str) -> str:
    """Reason of the Ready/ContainersReady conditions of a finished pod."""
    return POD_FAILED if phase == "Failed" else POD_COMPLETED


def waiting(reason: str, message: str | None = None) -> Obj:
    """A container ``state`` (or ``lastState``) that is waiting; the other states are cleared."""
    return {"waiting": {"reason": reason, "message": message}, "running": None, "terminated": None}


def running(started_at: str) -> Obj:
    """A container ``state`` that is running."""
    return {"running": {"startedAt": started_at}, "waiting": None, "terminated": None}


def terminated(
    exit_code: int,
    reason: str,
    started_at: str | None,
    finished_at: str,
    message: str | None,
    container_id: str,
) -> Obj:
    """A container ``state`` that is terminated (without ``signal``: the kubelet never sets it)."""
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason,
        "message": message or None,
        "startedAt": started_at,
        "finishedAt": finished_at,
        "containerID": container_id,
    }
    return {"terminated": state, "waiting": None, "running": None}


def no_state() -> Obj:
    """An empty ``lastState``."""
    return {"terminated": None, "waiting": None, "running": None}


def network_status() -> Obj:
    """The pod's addresses: every pod shares the node's (loopback) network."""
    return {
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": NODE_IP,
        "podIPs": [{"ip": NODE_IP}],
    }
