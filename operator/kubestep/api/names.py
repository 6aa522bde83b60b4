"""Deterministic names of the objects a run creates, so that creating them twice is harmless.

Every name hashes the *whole* run name together with what the object is for, so names stay unique per
run even when a long run name has to be cut to fit, and keys of different kinds (a step id, a discovery
position) can never collide.
"""

from __future__ import annotations

import hashlib

# Job names become the `job-name` label of their pods: 63 characters at most.
_MAX_NAME = 63
_HASH = 12


def short_hash(*parts: str, size: int = _HASH) -> str:
    """A short, stable hex digest of ``parts``."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:size]


def _join(prefix: str, digest: str, suffix: str = "") -> str:
    tail = f"-{digest}" + (f"-{suffix}" if suffix else "")
    return prefix[: _MAX_NAME - len(tail)].rstrip("-.") + tail


def step_execution_name(run: str, step_id: str, attempt: int) -> str:
    """The execution of attempt ``attempt`` of step ``step_id``: ``<run>-<hash>-<attempt>``."""
    return _join(run, short_hash(run, "step", step_id), str(attempt))


def discovery_execution_name(run: str, finished: int, attempt: int) -> str:
    """The execution that looks for the next step once ``finished`` steps have their result."""
    return _join(run, short_hash(run, "next", str(finished)), str(attempt))


def child_run_name(run: str, step_id: str) -> str:
    """The run started by invoke step ``step_id``."""
    return _join(run, short_hash(run, "invoke", step_id))


def sent_event_name(run: str, step_id: str, index: int) -> str:
    """The ``index``-th event published by send step ``step_id``."""
    return _join(run, short_hash(run, "send", step_id), str(index))


def run_name(workflow: str, event_uid: str) -> str:
    """The run an event starts for a workflow: one per (event, workflow), whatever happens."""
    return _join(workflow, short_hash(event_uid, workflow, size=10))


def rerun_name(run: str, index: int) -> str:
    """The run started for the ``index``-th entry of ``spec.rerunRequests`` of ``run``."""
    return _join(run, short_hash(run, "rerun", str(index), size=6), f"rerun{index + 1}")
