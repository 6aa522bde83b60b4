"""The operator on a local control plane: how long a run of ten trivial steps takes, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def bench_operator() -> None:
    """Print the wall time of a 10-step run and the operator's reaction time between steps."""
    from kubecp.cluster import ControlPlane, NodeOptions

    with tempfile.TemporaryDirectory(prefix="kubestep-bench-") as tmp:
        plane = ControlPlane(Path(tmp) / "cluster", node=NodeOptions(pythonpath=[str(REPO / "benchmarks")]))
        with plane:
            plane.kubectl("apply", "-f", str(REPO / "crds"))
            plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            plane.kubectl("create", "namespace", "bench")
            env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
            workflow = {
                "apiVersion": "kubestep.dev/v1alpha1",
                "kind": "Workflow",
                "metadata": {"name": "ten-steps"},
                "spec": {
                    "triggers": [{"event": "bench/go"}],
                    "image": "bench",
                    "function": "bench_flows:ten_steps",
                },
            }
            event = {
                "apiVersion": "kubestep.dev/v1alpha1",
                "kind": "Event",
                "metadata": {"name": "go"},
                "spec": {"name": "bench/go"},
            }
            # Published before the operator starts: its first reconcile is what starts the run.
            plane.kubectl("-n", "bench", "apply", "-f", "-", input=yaml.safe_dump(workflow))
            plane.kubectl("-n", "bench", "apply", "-f", "-", input=yaml.safe_dump(event))
            log = (Path(tmp) / "operator.log").open("wb")
            launched = time.monotonic()
            operator = subprocess.Popen(
                [sys.executable, "-m", "kubestep.cli.main", "operator", "-n", "bench"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                _wait_processed(plane)
                first_reconcile = time.monotonic() - launched
                started = time.monotonic()
                run = _wait_finished(plane)
                wall = time.monotonic() - started
                jobs = len(
                    json.loads(plane.kubectl("-n", "bench", "get", "jobs", "-o", "json").stdout)["items"]
                )
            finally:
                operator.send_signal(signal.SIGTERM)
                operator.wait(timeout=20)
                log.close()
    steps = run["status"]["steps"]
    status_bytes = len(json.dumps(run["status"], separators=(",", ":")))
    print(
        f"operator start to first reconcile (the Event processed): {first_reconcile:5.2f} s "
        "(a Python process importing kopf and the Kubernetes client, then its first watch lists)"
    )
    print(
        f"operator, 10-step run on the local control plane: {wall:5.1f} s from the Event to "
        f"{run['status']['phase']} ({wall / jobs:.2f} s per Job, {jobs} Jobs for {len(steps)} steps; "
        "a step pod here is a Python process)"
    )
    print(
        f"WorkflowRun status of that run: {status_bytes} bytes, {status_bytes / len(steps):.0f} bytes per "
        "step with one attempt each"
    )


def _wait_processed(plane: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        event = json.loads(
            plane.kubectl("-n", "bench", "get", "events.kubestep.dev", "go", "-o", "json").stdout
        )
        if any(c.get("type") == "Processed" for c in (event.get("status") or {}).get("conditions") or []):
            return
        time.sleep(0.05)
    raise TimeoutError("the operator did not process the Event within 2 minutes")


def _wait_finished(plane: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        items = json.loads(
            plane.kubectl("-n", "bench", "get", "workflowruns.kubestep.dev", "-o", "json").stdout
        )
        for run in items["items"]:
            if (run.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Cancelled"):
                return dict(run)
        time.sleep(0.2)
    raise TimeoutError("the benchmark run did not finish within 5 minutes")
