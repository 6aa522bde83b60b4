"""A run keeps the image it started with: its tag pushed again mid-run changes runs started afterwards only.

Two builds of one small image (``tests/e2e/images/pinned``, FROM the runner image) differ in an
environment variable their steps return. The first build is pushed under ``:latest``; a run's first step
runs it, then the run waits for an event. The second build is pushed under the same tag, a new run starts,
and the event lets both go on: the first run's later step still runs the first build, by digest, while
the new run runs the second. Then the first run is moved to the new code on purpose: cancelled, and rerun
from its later step, which runs the second build.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log, step
from kubecp.images import ensure_image_from_runner
from kubecp.pytest_images import PushedImages
from kubecp.testing import wait_for

CONTEXT = Path(__file__).resolve().parent / "images" / "pinned"
RUNS = "workflowruns.kubestep.dev"
KUBESTEP = Path(sys.executable).parent / "kubestep"
#: Pulling and unpacking a new build on a busy machine takes a while.
TIMEOUT = 240.0


def push(images: PushedImages, build: str, reference: str) -> None:
    """Build (unless cached) one build of the image and push it under ``reference``."""
    local = ensure_image_from_runner(
        f"kubestep-tests/pinned-{build}", CONTEXT / f"Dockerfile.{build}", CONTEXT, images.local
    )
    images.local.buildah.push(local, reference)


def kubestep(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubestep ARGS`` in the test's namespace, as a user types it."""
    return subprocess.run(
        [str(KUBESTEP), *args, "-n", cluster.namespace, "--kubeconfig", str(cluster.cp.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def event(name: str, event_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": event_name, "data": {}},
    }


def run_where(cluster: Cluster, what: str, holds: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The one run for which ``holds`` is true, once there is one."""

    def found() -> dict[str, Any] | None:
        matching = [r for r in cluster.runs() if holds(r)]
        assert len(matching) <= 1, [r["metadata"]["name"] for r in matching]
        return matching[0] if matching else None

    return wait_for(found, timeout=TIMEOUT, interval=0.5, what=what)


def waiting_after(step_id: str) -> Callable[[dict[str, Any]], bool]:
    """A run that waits for an event after ``step_id`` succeeded."""

    def holds(run: dict[str, Any]) -> bool:
        status = run.get("status", {})
        done = [s["id"] for s in status.get("steps", []) if s["phase"] == "Succeeded"]
        return status.get("phase") == "Waiting" and step_id in done

    return holds


def named(name: str, phase: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda run: (
        run["metadata"]["name"] == name and (phase is None or run.get("status", {}).get("phase") == phase)
    )


def ran(cluster: Cluster, run: dict[str, Any], step_id: str) -> tuple[str, str]:
    """The image the Job of ``step_id``'s last attempt names, and the image its pod ran (``imageID``)."""
    job_name = step(run, step_id)["attempts"][-1]["job"]
    job = cluster.get("jobs", job_name)
    [pod] = cluster.items("pods", f"job-name={job_name}")
    [status] = pod["status"]["containerStatuses"]
    return job["spec"]["template"]["spec"]["containers"][0]["image"], status["imageID"]


def test_a_tag_pushed_again_mid_run_changes_new_runs_only(
    operator: Operator, cluster: Cluster, kubestep_images: PushedImages
) -> None:
    # `:latest` is pulled again for every pod (imagePullPolicy Always): a tag as teams move it.
    repository = f"{kubestep_images.registry.host}/kubestep-tests/pinned"
    tag = f"{repository}:latest"
    push(kubestep_images, "first", tag)
    cluster.apply(
        {
            "apiVersion": "kubestep.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "pinned"},
            "spec": {
                "triggers": [{"event": "test/pinned.requested"}],
                "image": tag,
                "function": "pinned_flows:pinned",
            },
        }
    )
    cluster.apply(event("start-1", "test/pinned.requested"))
    old = run_where(cluster, "run 1 to wait after its first step", waiting_after("first"))
    old_name = old["metadata"]["name"]
    pinned = old["status"]["image"]
    assert pinned.startswith(f"{repository}@sha256:"), old["status"]
    assert step(old, "first")["output"] == "first"
    # The pin is the digest its first pod ran (that pod's Job named the tag).
    assert ran(cluster, old, "first") == (tag, pinned)
    events = cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={old_name}").stdout
    assert "ImagePinned" in events, events

    # The tag moves to the second build; a run started now takes it.
    push(kubestep_images, "second", tag)
    cluster.apply(event("start-2", "test/pinned.requested"))
    new = run_where(
        cluster,
        "run 2 to wait after its first step",
        lambda r: r["metadata"]["name"] != old_name and waiting_after("first")(r),
    )
    new_name = new["metadata"]["name"]
    assert step(new, "first")["output"] == "second"
    moved = new["status"]["image"]
    assert moved.startswith(f"{repository}@sha256:") and moved != pinned, (moved, pinned)

    # Both go on: run 1's later step runs its pinned digest, not the one the tag names now.
    cluster.apply(event("go-ahead", "test/pinned.go"))
    old = run_where(
        cluster,
        "run 1 to finish its second step",
        lambda r: named(old_name)(r) and waiting_after("second")(r),
    )
    new = run_where(
        cluster,
        "run 2 to finish its second step",
        lambda r: named(new_name)(r) and waiting_after("second")(r),
    )
    assert step(old, "second")["output"] == "first"
    assert step(new, "second")["output"] == "second"
    assert ran(cluster, old, "second") == (pinned, pinned)
    assert ran(cluster, new, "second") == (moved, moved)
    # `kubectl get ksr -o wide` shows each run's image.
    wide = cluster.kubectl("get", RUNS, "-o", "wide").stdout
    assert pinned in wide and moved in wide, wide

    # Moving run 1 to the new code on purpose, as the README says: cancel it, rerun it from a step. The
    # rerun reuses the outputs before that step and runs the rest in the image the tag names now.
    kubestep(cluster, "cancel", old_name)
    run_where(cluster, "run 1 to be cancelled", named(old_name, "Cancelled"))
    started = kubestep(cluster, "rerun", old_name, "--from", "second").stdout
    assert "from step second" in started, started
    rerun = run_where(
        cluster,
        "the rerun to finish its second step",
        lambda r: r.get("status", {}).get("rerunOf") == old_name and waiting_after("second")(r),
    )
    assert step(rerun, "second")["output"] == "second"
    assert rerun["status"]["image"] == moved

    cluster.apply(event("finish", "test/pinned.finish"))
    new = run_where(cluster, "run 2 to succeed", named(new_name, "Succeeded"))
    rerun = run_where(cluster, "the rerun to succeed", named(rerun["metadata"]["name"], "Succeeded"))
    assert new["status"]["output"] == {"first": "second", "second": "second"}
    assert rerun["status"]["output"] == {"first": "first", "second": "second"}
    assert cluster.get(RUNS, old_name)["status"]["image"] == pinned
    assert_clean_log(operator)
