"""`make demo`: the contacts example on a local control plane, with the operator, from apply to the end.

Starts etcd, kube-apiserver, kube-controller-manager and a process node on loopback, installs the CRDs,
runs `kubestep operator` for a namespace that enforces the `restricted` Pod Security profile, applies
`workflow.yaml` and then `event.yaml` with kubectl, and prints the run's progress until it ends. Every
process is stopped afterwards. `CONTACTS_ENRICH_FAILURES=N make demo` makes enrichment fail N times first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubecp.cluster import ControlPlane, NodeOptions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAMESPACE = "contacts-demo"
WORK = ROOT / ".kubestep" / "demo"


def say(message: str) -> None:
    print(message, flush=True)


def run_json(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl("-n", NAMESPACE, *args, "-o", "json").stdout)


def progress_lines(run: dict[str, Any], seen: dict[str, tuple[str, int]], started: float) -> list[str]:
    """One line per change of the run's phase or of a step's phase or attempts."""
    status = run.get("status") or {}
    stamp = f"  {time.monotonic() - started:6.1f}s  "
    lines = []
    phase = status.get("phase", "Pending")
    if seen.get("") != (phase, 0):
        seen[""] = (phase, 0)
        lines.append(f"{stamp}run {phase} ({status.get('progress') or '0/0'} steps)")
    for step in status.get("steps") or []:
        key = (step.get("phase", ""), step.get("attemptCount", 0))
        if seen.get(step["id"]) == key:
            continue
        seen[step["id"]] = key
        line = f"{stamp}  {step['id']}: {step.get('phase')}"
        attempts = step.get("attempts") or []
        if step.get("phase") == "Running" and status.get("currentStep") == step["id"]:
            line += f" (attempt {status.get('currentAttempt')})"
        elif attempts:
            last = attempts[-1]
            line += f" (attempt {last.get('number')}: {last.get('result') or 'running'})"
            if last.get("message") and last.get("result") not in (None, "Succeeded"):
                line += f" {last.get('reason', '')}: {last['message'][:80]}"
        if step.get("nextAttemptAt"):
            line += f", next attempt at {step['nextAttemptAt']}"
        lines.append(line)
    return lines


def summary(run: dict[str, Any]) -> None:
    status = run["status"]
    say(f"\nrun {run['metadata']['name']}: {status['phase']}")
    for step in status.get("steps", []):
        attempts = step.get("attempts") or []
        results = ", ".join(a.get("result", "?") for a in attempts) or step.get("type", "")
        say(f"  {step['phase']:<10} {step['id']:<36} {results}")
    if status.get("output") is not None:
        say(f"output: {json.dumps(status['output'])}")
    if status.get("error"):
        say(f"error: {status['error'].get('type')}: {status['error'].get('message')}")


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.rmtree(HERE / ".demo", ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {"CONTACTS_DATA_DIR": str(HERE / ".demo")}
    if os.environ.get("CONTACTS_ENRICH_FAILURES"):
        env["CONTACTS_ENRICH_FAILURES"] = os.environ["CONTACTS_ENRICH_FAILURES"]
    say("starting a local control plane (etcd, kube-apiserver, kube-controller-manager, process node) ...")
    plane = ControlPlane(
        WORK / "cluster", node=NodeOptions(pythonpath=[str(HERE)], env=env), keep_workdir=True
    )
    operator: subprocess.Popen[bytes] | None = None
    try:
        plane.start()
        say(f"  ready in {plane.startup_seconds:.1f}s: {plane.server}")
        say("kubectl apply -f crds/")
        plane.kubectl("apply", "-f", str(ROOT / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        say(f"kubectl create namespace {NAMESPACE}   (enforcing the restricted Pod Security profile)")
        plane.kubectl("create", "namespace", NAMESPACE)
        plane.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
        log = WORK / "operator.log"
        say(f"kubestep operator --namespace {NAMESPACE}   (log: {log.relative_to(ROOT)})")
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [sys.executable, "-m", "kubestep.cli.main", "operator", "--namespace", NAMESPACE],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(plane.kubeconfig), "PYTHONUNBUFFERED": "1"},
            )
        for manifest in ("workflow.yaml", "event.yaml"):
            say(f"kubectl apply -f examples/contacts/{manifest}")
            plane.kubectl("-n", NAMESPACE, "apply", "-f", str(HERE / manifest))
        started = time.monotonic()
        seen: dict[str, tuple[str, int]] = {}
        deadline = started + 600
        while time.monotonic() < deadline:
            if operator.poll() is not None:
                say(f"the operator stopped (exit {operator.returncode}); see {log}")
                return 1
            runs = run_json(plane, "get", "workflowruns.kubestep.dev")["items"]
            if runs:
                for line in progress_lines(runs[0], seen, started):
                    say(line)
                if (runs[0].get("status") or {}).get("phase") in ("Succeeded", "Failed", "Cancelled"):
                    summary(runs[0])
                    say(f"\ncontacts in the CRM: {HERE / '.demo' / 'crm.sqlite3'}")
                    return 0 if runs[0]["status"]["phase"] == "Succeeded" else 1
            time.sleep(0.5)
        say("the run did not end within 10 minutes")
        return 1
    finally:
        if operator is not None and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        plane.stop()


if __name__ == "__main__":
    sys.exit(main())
