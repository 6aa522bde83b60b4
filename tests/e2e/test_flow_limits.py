"""`spec.rateLimit` and `spec.singleton` end to end: the operator as a process on the real control plane.

Steps of ``flow_flows`` (gated: a started step waits for the test's ``go`` file) make runs overlap for as
long as the test needs, so causality is asserted (which run started, which was told what), not wall time.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from test_flow_concurrency import FINISHED, events, flow_workflow, traces

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for


def limited_workflow(data_dir: Path, gated: bool = False, **spec: Any) -> dict[str, Any]:
    manifest = flow_workflow("flow-work", data_dir, [], seconds=0.2, gated=gated)
    del manifest["spec"]["concurrency"]
    manifest["spec"].update(spec)
    return manifest


def processed(cluster: Cluster, names: list[str], timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """The `Processed` condition of each named Event, once all have one."""

    def probe() -> dict[str, dict[str, Any]] | None:
        found = {}
        for item in cluster.items("kse"):
            condition = next(
                (c for c in (item.get("status") or {}).get("conditions") or [] if c["type"] == "Processed"),
                None,
            )
            if item["metadata"]["name"] in names and condition is not None:
                found[item["metadata"]["name"]] = condition
        return found if len(found) == len(names) else None

    return wait_for(probe, timeout=timeout, interval=0.3, what=f"events {names} processed")


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def finished_run(cluster: Cluster, name: str, timeout: float = 120.0) -> dict[str, Any]:
    """The run ``name`` once it has ended."""

    def probe() -> dict[str, Any] | None:
        run = cluster.get("workflowruns.kubestep.dev", name)
        return run if (run.get("status") or {}).get("phase") in FINISHED else None

    return wait_for(probe, timeout=timeout, interval=0.5, what=f"run {name} to end")


def step_started(data_dir: Path, count: int = 1) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (
            starts if len(starts := [t for t in traces(data_dir) if t["what"] == "start"]) >= count else None
        ),
        timeout=120,
        interval=0.2,
        what=f"{count} step(s) to start",
    )


def test_a_rate_limit_of_one_per_minute_lets_one_of_five_events_start_a_run(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    limit = {"limit": 1, "period": "1m", "key": "event.data.tenant"}
    cluster.apply(limited_workflow(tmp_path, rateLimit=limit))
    burst = events("acme", "acme", 5)
    cluster.apply(*burst)
    conditions = processed(cluster, [e["metadata"]["name"] for e in burst])
    runs = cluster.runs()
    assert len(runs) == 1, [r["metadata"]["name"] for r in runs]
    reasons = sorted(c["reason"] for c in conditions.values())
    assert reasons == ["RateLimited"] * 4 + ["RunsStarted"], conditions
    run = runs[0]["metadata"]["name"]
    for condition in conditions.values():
        if condition["reason"] == "RateLimited":
            message = condition["message"]
            assert "spec.rateLimit of workflow flow-work allows 1 run(s) per 1m" in message, message
            assert "for key event.data.tenant = 'acme'" in message and run in message, message
    # Another key has its own limit.
    cluster.apply(*events("globex", "globex", 1))
    (other,) = processed(cluster, ["globex-00"]).values()
    assert other["reason"] == "RunsStarted", other
    finished = wait_for(
        lambda: (
            runs
            if len(runs := cluster.runs()) == 2 and all(r["status"].get("phase") in FINISHED for r in runs)
            else None
        ),
        timeout=120,
        interval=0.5,
        what="both runs to finish",
    )
    assert [r["status"]["phase"] for r in finished] == ["Succeeded"] * 2
    assert_clean_log(operator)


def test_singleton_skip_drops_an_event_while_its_key_has_an_active_run(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    singleton = {"key": "event.data.tenant", "mode": "Skip"}
    cluster.apply(limited_workflow(tmp_path, gated=True, singleton=singleton))
    cluster.apply(*events("first", "acme", 1))
    step_started(tmp_path)  # the first run is in its step, held there by the gate
    (first,) = cluster.runs()
    cluster.apply(*events("second", "acme", 1))
    (condition,) = processed(cluster, ["second-00"]).values()
    assert condition["reason"] == "SingletonSkipped", condition
    assert f"run {first['metadata']['name']} is active" in condition["message"], condition
    assert "for key event.data.tenant = 'acme'" in condition["message"], condition
    assert len(cluster.runs()) == 1
    (tmp_path / "go").touch()
    done = finished_run(cluster, first["metadata"]["name"])
    assert done["status"]["phase"] == "Succeeded"
    # Once the run has ended its key is free again.
    cluster.apply(*events("third", "acme", 1))
    (condition,) = processed(cluster, ["third-00"]).values()
    assert condition["reason"] == "RunsStarted", condition
    assert len(cluster.runs()) == 2
    assert_clean_log(operator)


def test_singleton_cancel_replaces_the_active_run_and_never_runs_beside_it(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    singleton = {"key": "event.data.tenant", "mode": "Cancel"}
    cluster.apply(limited_workflow(tmp_path, gated=True, singleton=singleton))
    cluster.apply(*events("first", "acme", 1))
    step_started(tmp_path)
    (first,) = cluster.runs()
    old = first["metadata"]["name"]
    cluster.apply(*events("second", "acme", 1))
    (condition,) = processed(cluster, ["second-00"]).values()
    assert condition["reason"] == "RunsStarted", condition
    assert f"cancelled the active {old}" in condition["message"], condition
    cancelled = finished_run(cluster, old, timeout=60)
    assert cancelled["status"]["phase"] == "Cancelled"
    error = cancelled["status"]["error"]
    assert error["type"] == "Cancelled" and "cancelled by Event second-00" in error["message"], error
    (new,) = [r for r in cluster.runs() if r["metadata"]["name"] != old]
    # The new run's step starts (its first trace), held by the gate, only once the old one has ended.
    starts = step_started(tmp_path, 2)
    (tmp_path / "go").touch()
    new = finished_run(cluster, new["metadata"]["name"])
    assert new["status"]["phase"] == "Succeeded"
    assert when(new["status"]["admission"]["admittedAt"]) >= when(cancelled["status"]["finishedAt"])
    assert when(new["status"]["startedAt"]) >= when(cancelled["status"]["finishedAt"])
    assert [s["run"] for s in sorted(starts, key=lambda s: s["t"])] == [old, new["metadata"]["name"]]
    assert_clean_log(operator)


def test_the_api_server_refuses_bad_rate_limits_and_singletons(cluster: Cluster, tmp_path: Path) -> None:
    def refused(**flow: Any) -> str:
        proc = cluster.kubectl(
            "apply", "-f", "-", input=json.dumps(limited_workflow(tmp_path, **flow)), check=False
        )
        assert proc.returncode != 0, proc.stdout
        return proc.stderr

    out = refused(rateLimit={"limit": 0, "period": "1m"}, singleton={"mode": "Sometimes"})
    assert "spec.rateLimit.limit" in out and "spec.singleton.mode" in out, out
    # The API server checks the rules only once the schema holds.
    out = refused(rateLimit={"limit": 1, "period": "500ms"})
    assert "rateLimit.period is shorter than 1s" in out, out
    out = refused(rateLimit={"limit": 1, "period": "1 minute"})
    assert "'1 minute' is not a duration" in out, out
