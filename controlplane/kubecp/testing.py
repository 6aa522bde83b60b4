"""Small helpers for tests against the control plane: waiting, and pods that run Python code."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Call ``probe`` until it returns something truthy, and return that; fail after ``timeout`` seconds.

    Exceptions from ``probe`` count as "not yet" until the time is up; then the
    last one is chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as error:
            last_error = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from last_error
        time.sleep(interval)


def python_pod(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A Pod manifest whose one container runs ``python -c code``; ``spec`` adds or overrides pod spec fields.

    The image is a placeholder: the process node runs the project's interpreter.
    """
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.11-slim",
        "command": ["python", "-c", code],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def python_job(name: str, code: str, backoff_limit: int = 0, **pod_spec: Any) -> dict[str, Any]:
    """A batch/v1 Job manifest whose pod runs ``python -c code``."""
    template = python_pod(name, code, **pod_spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"metadata": {}, "spec": template["spec"]},
        },
    }
