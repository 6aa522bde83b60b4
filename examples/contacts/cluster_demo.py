"""`make demo`: the contacts example installed as a user would, on a local control plane, apply to end.

The steps of README.md's "Install on a cluster", with buildah and a registry on loopback in place of
Docker and a cluster's registry:

1. build kubestep's runner and operator images (`make images`) and the example's image FROM the runner
   (`examples/contacts/Dockerfile`, as `contacts:1.0`), and push them to a registry on 127.0.0.1;
2. start etcd, kube-apiserver, kube-controller-manager and a process node on loopback;
3. `helm install` the chart (the operator runs in a pod, from the operator image), managing a namespace
   that enforces the `restricted` Pod Security profile;
4. `kubectl apply` `workflow.yaml` (its image: the example's, as pushed) and `event.yaml`, and print the
   run's progress until it ends. Every process is stopped afterwards.

The first run builds what the images need (helm and a registry from their Go modules, the Debian base,
the images) and caches it in ~/.cache/kubestep; it says so, and how long each part took.
`CONTACTS_ENRICH_FAILURES=N make demo` makes enrichment fail its first N attempts (the variable is set
on the Workflow's pods).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kubecp.cluster import ControlPlane, NodeOptions
from kubecp.gotools import ensure_tool, tool_path
from kubecp.images import ensure_image_from_runner, ensure_images, images_root
from kubecp.loopback import no_proxy_env
from kubecp.processes import free_ports
from kubecp.registry import Registry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHART = ROOT / "charts" / "kubestep"
RELEASE = "kubestep"
OPERATOR_NAMESPACE = "kubestep-system"
NAMESPACE = "contacts-demo"
#: The example's image as users tag it (workflow.yaml names it).
EXAMPLE_IMAGE = "contacts:1.0"
WORK = ROOT / ".kubestep" / "demo"
T = TypeVar("T")


def say(message: str) -> None:
    print(message, flush=True)


def timed(what: str, build: Callable[[], T]) -> T:
    """Run ``build``; say how long it took when that was more than a moment (i.e. it built something)."""
    started = time.monotonic()
    result = build()
    took = time.monotonic() - started
    if took >= 5:
        say(f"  {what}: {took:.0f}s")
    return result


def first_run_notice() -> None:
    """Say what the first run builds and how long that takes, when something is not built yet."""
    missing = [name for name in ("helm", "registry") if not tool_path(name).exists()]
    if missing or not (images_root() / "base").is_dir():
        say(
            "first run: building helm and a container registry from their Go modules (about 5 minutes on 2 "
            "cores), a Debian base image with mmdebstrap (about a minute) and kubestep's images with "
            "buildah (about 4 minutes); all cached in ~/.cache/kubestep, later runs take about a minute"
        )


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
        lines.append(f"{stamp}run {phase} (steps: {status.get('progress') or '0 done'})")
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


def helm(plane: ControlPlane, binary: Path, *args: str) -> str:
    env = {
        **no_proxy_env(os.environ),
        "KUBECONFIG": str(plane.kubeconfig),
        "HELM_CACHE_HOME": str(WORK / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(WORK / "helm" / "config"),
        "HELM_DATA_HOME": str(WORK / "helm" / "data"),
    }
    result = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed:\n{result.stderr}{result.stdout}")
    return result.stdout


def operator_pod(plane: ControlPlane) -> dict[str, Any] | None:
    pods = json.loads(
        plane.kubectl(
            "-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=kubestep", "-o", "json"
        ).stdout
    )["items"]
    return next((p for p in pods if (p.get("status") or {}).get("phase") == "Running"), None)


def workflow_manifest(image: str) -> str:
    """workflow.yaml with the image as pushed (and the flaky service's setting, when asked for)."""
    workflow = yaml.safe_load((HERE / "workflow.yaml").read_text())
    workflow["spec"]["image"] = image
    if failures := os.environ.get("CONTACTS_ENRICH_FAILURES"):
        workflow["spec"]["podTemplate"] = {"env": [{"name": "CONTACTS_ENRICH_FAILURES", "value": failures}]}
    return json.dumps(workflow)


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    first_run_notice()

    say("building the images (make images: runner and operator; then the example's, FROM the runner) ...")
    helm_binary = timed("helm", lambda: ensure_tool("helm"))
    timed("registry", lambda: ensure_tool("registry"))
    images = timed("kubestep's images", ensure_images)
    example = timed(
        "the example's image",
        lambda: ensure_image_from_runner("contacts", HERE / "Dockerfile", HERE, images),
    )
    images.buildah.run("tag", example, f"localhost/{EXAMPLE_IMAGE}", what=f"tagging {EXAMPLE_IMAGE}")
    say(f"  {images.name('runner')}, {images.name('operator')}, {EXAMPLE_IMAGE}")

    registry = Registry(WORK / "registry")
    plane = ControlPlane(
        WORK / "cluster", node=NodeOptions(image_dir=images_root() / "roots"), keep_workdir=True
    )
    try:
        registry.start()
        say(f"a registry on {registry.host}; pushing (docker push) ...")
        pushed = timed("push", lambda: images.push(registry.host))
        example_ref = f"{registry.host}/{EXAMPLE_IMAGE}"
        images.buildah.push(f"localhost/{EXAMPLE_IMAGE}", example_ref)
        for reference in (*pushed.values(), example_ref):
            say(f"  {reference}")

        say(
            "starting a local control plane (etcd, kube-apiserver, kube-controller-manager, process node) ..."
        )
        plane.start()
        say(f"  ready in {plane.startup_seconds:.1f}s: {plane.server}")
        say(f"kubectl create namespace {NAMESPACE}   (enforcing the restricted Pod Security profile)")
        plane.kubectl("create", "namespace", NAMESPACE)
        plane.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
        plane.kubectl("create", "namespace", OPERATOR_NAMESPACE)
        plane.kubectl(
            "label", "namespace", OPERATOR_NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
        )
        repository, tag = pushed["operator"].rsplit(":", 1)
        (port,) = free_ports(1)
        # One operator pod, its health endpoint on a free port of loopback: the process node runs pods in
        # this machine's network, where two pods on one port would collide.
        settings = {
            "image.repository": repository,
            "image.tag": tag,
            "watchNamespaces": "{" + NAMESPACE + "}",
            "replicaCount": "1",
            "health.address": "127.0.0.1",
            "health.port": str(port),
        }
        say(
            f"helm install {RELEASE} charts/kubestep -n {OPERATOR_NAMESPACE} --wait "
            + " ".join(f"--set {key}={value}" for key, value in settings.items())
        )
        started = time.monotonic()
        helm(
            plane,
            helm_binary,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            OPERATOR_NAMESPACE,
            "--wait",
            "--timeout",
            "180s",
            *(arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")),
        )
        pod = operator_pod(plane)
        if pod is None:
            say("the operator pod is not running")
            return 1
        [container] = pod["status"]["containerStatuses"]
        took = time.monotonic() - started
        say(f"  installed in {took:.1f}s; the operator runs in pod {pod['metadata']['name']}")
        say(f"  image {container['imageID']}")

        say(f"kubectl apply -f examples/contacts/workflow.yaml   (image: {example_ref})")
        plane.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=workflow_manifest(example_ref))
        say("kubectl apply -f examples/contacts/event.yaml")
        plane.kubectl("-n", NAMESPACE, "apply", "-f", str(HERE / "event.yaml"))
        return follow(plane)
    finally:
        plane.stop()
        registry.stop()


def follow(plane: ControlPlane) -> int:
    """Print the run's progress until it ends; its exit status."""
    started = time.monotonic()
    seen: dict[str, tuple[str, int]] = {}
    deadline = started + 600
    while time.monotonic() < deadline:
        runs = run_json(plane, "get", "workflowruns.kubestep.dev")["items"]
        if runs:
            for line in progress_lines(runs[0], seen, started):
                say(line)
            if (runs[0].get("status") or {}).get("phase") in ("Succeeded", "Failed", "Cancelled"):
                summary(runs[0])
                say(
                    "\n(each step ran in its own pod of the example's image: the CRM and the outbox were in "
                    "those pods' own file systems; `make demo-local` keeps them in examples/contacts/.demo)"
                )
                return 0 if runs[0]["status"]["phase"] == "Succeeded" else 1
        time.sleep(0.5)
    say("the run did not end within 10 minutes; the operator's log:")
    say(
        plane.kubectl(
            "-n", OPERATOR_NAMESPACE, "logs", f"deployment/{RELEASE}", "--tail=40", check=False
        ).stdout
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
