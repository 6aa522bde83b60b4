"""Deterministic names of the objects a run creates, so that creating them twice is harmless."""

from __future__ import annotations

import hashlib

# Job names become the `job-name` label of their pods: 63 characters at most.
_MAX_NAME = 63


def short_hash(text: str, size: int = 8) -> str:
    """A short, stable hex digest of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _join(prefix: str, *parts: str) -> str:
    tail = "-" + "-".join(parts)
    return prefix[: _MAX_NAME - len(tail)].rstrip("-.") + tail


def execution_name(run: str, key: str, attempt: int) -> str:
    """``<run>-<hash of step or position>-<attempt>``."""
    return _join(run, short_hash(key), str(attempt))


def child_run_name(run: str, step_id: str) -> str:
    """The run started by invoke step ``step_id``."""
    return _join(run, short_hash("invoke:" + step_id))


def sent_event_name(run: str, step_id: str, index: int) -> str:
    """The ``index``-th event published by send step ``step_id``."""
    return _join(run, short_hash("send:" + step_id), str(index))


def run_name(workflow: str, event_uid: str) -> str:
    """The run an event starts for a workflow: one per (event, workflow), whatever happens."""
    return _join(workflow, short_hash(f"{event_uid}/{workflow}", 10))
