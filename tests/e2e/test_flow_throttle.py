"""`spec.throttle` end to end: run starts spaced as the rule says, none dropped; bad input refused."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path

from test_flow_concurrency import all_finished, events, flow_workflow, phases

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for


def admitted_at(run: dict[str, object]) -> datetime:
    value = run["status"]["admission"]["admittedAt"]  # type: ignore[index]
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def test_throttled_starts_are_spaced_and_none_is_dropped(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    manifest = flow_workflow("flow-work", tmp_path, [], seconds=0.2)
    del manifest["spec"]["concurrency"]
    manifest["spec"]["throttle"] = {"limit": 2, "period": "10s"}
    cluster.apply(manifest)
    cluster.apply(*events("burst", "acme", 10))
    waiting = wait_for(
        lambda: (
            [
                r
                for r in cluster.runs()
                if (r.get("status") or {}).get("admission", {}).get("waitingFor") == "Throttled"
            ]
            or None
        ),
        timeout=60,
        interval=0.3,
        what="a throttled run",
    )
    condition = next(c for c in waiting[0]["status"]["conditions"] if c["type"] == "Admitted")
    assert condition["reason"] == "Throttled" and "one every 5s" in condition["message"]
    assert phases(cluster)["Queued"] >= 5
    runs = all_finished(cluster, 10, timeout=240)
    assert [r["status"]["phase"] for r in runs] == ["Succeeded"] * 10
    starts = sorted(admitted_at(r) for r in runs)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # One start every period / limit = 5 s: never sooner, and late by less than a second.
    assert all(4.95 <= gap <= 6.0 for gap in gaps), gaps
    # In the order the runs were queued (their creation, to the second the API server keeps).
    in_order = sorted(runs, key=admitted_at)
    created = [r["metadata"]["creationTimestamp"] for r in in_order]
    assert created == sorted(created)
    assert_clean_log(operator)


def test_the_api_server_refuses_a_throttle_period_under_a_second(cluster: Cluster, tmp_path: Path) -> None:
    manifest = flow_workflow("flow-work", tmp_path, [])
    manifest["spec"]["throttle"] = {"limit": 2, "period": "500ms"}
    manifest["spec"]["concurrency"] = [{"limit": 1}, {"limit": 2}]
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0
    assert "throttle.period is shorter than 1s" in proc.stderr
    assert "concurrency lists the same scope and key twice" in proc.stderr
