"""`spec.paused` and `spec.timeouts.start` on the real control plane, the operator as a process.

A paused workflow still takes events: their runs wait `Queued` (`Admitted` False, `WorkflowPaused`); a run
in flight finishes the step it is running and then waits the same way; resuming starts them where they
were. A run held past `spec.timeouts.start` ends `Cancelled` saying so. The workflow lives in
``tests/e2e/flows/pause_flows.py``; its steps leave timed traces, which give the order of what ran.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for

WORKFLOW = "pause-flow"


def pause_workflow(data_dir: Path, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": WORKFLOW},
        "spec": {
            "triggers": [{"event": "test/pause"}],
            "image": "example.invalid/pause-flows:1.0",
            "function": "pause_flows:two_steps",
            "retries": {"limit": 0},
            "podTemplate": {"env": [{"name": "PAUSE_DATA_DIR", "value": str(data_dir)}]},
            **spec,
        },
    }


def an_event(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": "test/pause", "data": {}},
    }


def traces(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "trace.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def started(data_dir: Path, run: str, step: str) -> list[float]:
    return [
        t["t"] for t in traces(data_dir) if t["run"] == run and t["step"] == step and t["what"] == "start"
    ]


def run_of(cluster: Cluster, event: str) -> dict[str, Any] | None:
    """The run the Event ``event`` started, once it says so."""
    names = cluster.get("kse", event).get("status", {}).get("started") or []
    return cluster.get("ksr", names[0]["run"]) if names else None


def admitted(run: dict[str, Any]) -> dict[str, Any]:
    status = run.get("status", {})
    return next((c for c in status.get("conditions") or [] if c["type"] == "Admitted"), {})


def set_paused(cluster: Cluster, paused: bool) -> None:
    patch = json.dumps({"spec": {"paused": paused}})
    cluster.kubectl("patch", "ksw", WORKFLOW, "--type=merge", "-p", patch)


def test_a_paused_workflow_queues_new_runs_holds_runs_between_steps_and_resuming_starts_them(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    # A generous start limit: a run that waits within it is not touched.
    cluster.apply(pause_workflow(tmp_path, timeouts={"start": "30m"}))
    cluster.apply(an_event("early"))
    early = wait_for(lambda: run_of(cluster, "early"), timeout=60, interval=0.3, what="the early run")
    early_name = early["metadata"]["name"]
    wait_for(
        lambda: started(tmp_path, early_name, "first") or None,
        timeout=120,
        interval=0.2,
        what="the early run's first step to start",
    )

    set_paused(cluster, True)
    ready = wait_for(
        lambda: next(
            (
                c
                for c in cluster.get("ksw", WORKFLOW).get("status", {}).get("conditions") or []
                if c["type"] == "Ready" and c["reason"] == "Paused"
            ),
            None,
        ),
        timeout=60,
        interval=0.3,
        what="the workflow to say it is paused",
    )
    assert ready["status"] == "True" and "spec.paused" in ready["message"]
    assert "true" in cluster.kubectl("get", "ksw", WORKFLOW).stdout  # the Paused column
    # Told while its step runs; the step goes on.
    wait_for(
        lambda: admitted(cluster.get("ksr", early_name)).get("reason") == "WorkflowPaused" or None,
        timeout=60,
        interval=0.3,
        what="the running run to be told of the pause",
    )
    assert cluster.get("ksr", early_name)["status"]["phase"] == "Running"

    # Events still start runs, which wait.
    cluster.apply(an_event("late"))
    # Queued by its own pass, then told why by the workflow's admission pass.
    late = wait_for(
        lambda: (
            (r := run_of(cluster, "late"))
            and r.get("status", {}).get("phase") == "Queued"
            and admitted(r)
            and r
        ),
        timeout=60,
        interval=0.3,
        what="the late run, queued and told why",
    )
    late_name = late["metadata"]["name"]
    condition = admitted(late)
    assert (condition["status"], condition["reason"]) == ("False", "WorkflowPaused"), condition
    assert "paused" in condition["message"]

    # The step in flight finishes; the next one does not start.
    (tmp_path / "gate").touch()
    held = wait_for(
        lambda: (
            (r := cluster.get("ksr", early_name))["status"].get("progress") == "1 done"
            and r["status"]["phase"] == "Queued"
            and r
        ),
        timeout=120,
        interval=0.3,
        what="the early run to finish its step and wait",
    )
    assert admitted(held)["reason"] == "WorkflowPaused"
    assert held["status"]["admission"]["waitingFor"] == "WorkflowPaused"
    table = cluster.kubectl("get", "ksr").stdout
    assert table.count("Queued") == 2 and table.count("WorkflowPaused") == 2, table
    time.sleep(3)  # a step that started now would be a step started while paused (checked by the traces)
    assert not started(tmp_path, early_name, "second")
    assert not started(tmp_path, late_name, "first")
    assert not cluster.items("jobs", f"kubestep.dev/run={late_name}")

    resumed_at = time.time()
    set_paused(cluster, False)

    def both_finished() -> list[dict[str, Any]] | None:
        runs = [cluster.get("ksr", n) for n in (early_name, late_name)]
        phases = [r.get("status", {}).get("phase") for r in runs]
        return runs if all(p in ("Succeeded", "Failed", "Cancelled") for p in phases) else None

    runs = wait_for(both_finished, timeout=180, interval=0.5, what="both runs to finish")
    assert [r["status"]["phase"] for r in runs] == ["Succeeded", "Succeeded"], [r["status"] for r in runs]
    assert runs[0]["status"]["output"] == ["first", "second"]
    # Where they were: the early run's first step ran once, both later steps only after the resume.
    assert len(started(tmp_path, early_name, "first")) == 1
    (second,) = started(tmp_path, early_name, "second")
    (late_first,) = started(tmp_path, late_name, "first")
    assert second >= resumed_at and late_first >= resumed_at
    for run in runs:
        assert admitted(run)["status"] == "True"
        assert run["status"]["admission"].get("paused") is not True
    ready = next(c for c in cluster.get("ksw", WORKFLOW)["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "Valid"
    assert_clean_log(operator)


def test_resumed_while_a_step_runs_the_run_is_told_at_once(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(pause_workflow(tmp_path))
    cluster.apply(an_event("busy"))
    busy = wait_for(lambda: run_of(cluster, "busy"), timeout=60, interval=0.3, what="the run")
    name = busy["metadata"]["name"]
    wait_for(
        lambda: started(tmp_path, name, "first") or None, timeout=120, interval=0.2, what="its first step"
    )
    set_paused(cluster, True)
    wait_for(
        lambda: admitted(cluster.get("ksr", name)).get("reason") == "WorkflowPaused" or None,
        timeout=60,
        interval=0.3,
        what="the run to be told of the pause",
    )
    set_paused(cluster, False)
    # Not only once its step ends: the step is still held at the gate.
    wait_for(
        lambda: admitted(cluster.get("ksr", name)).get("status") == "True" or None,
        timeout=60,
        interval=0.3,
        what="the run to be told of the resume",
    )
    assert not [t for t in traces(tmp_path) if t["what"] == "end"]
    (tmp_path / "gate").touch()
    run = cluster.wait_run(timeout=120)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert [t["step"] for t in traces(tmp_path) if t["what"] == "start"] == ["first", "second"]
    assert_clean_log(operator)


def test_a_run_held_past_its_start_timeout_is_cancelled_saying_why(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(pause_workflow(tmp_path, paused=True, timeouts={"start": "5s"}))
    cluster.apply(an_event("held"))
    run = cluster.wait_run(timeout=120)
    status = run["status"]
    assert status["phase"] == "Cancelled", status
    assert status["error"]["type"] == "StartTimeout"
    assert "spec.timeouts.start (5s)" in status["error"]["message"]
    assert "WorkflowPaused" in status["error"]["message"]
    assert "startedAt" not in status
    created = run["metadata"]["creationTimestamp"]
    waited = _seconds(status["finishedAt"]) - _seconds(created)
    assert waited >= 4, (created, status["finishedAt"])  # creation times are whole seconds
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "Cancelled")
    assert not traces(tmp_path)  # no step of it ever ran
    assert not cluster.items("jobs", f"kubestep.dev/run={run['metadata']['name']}")
    assert_clean_log(operator)


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
