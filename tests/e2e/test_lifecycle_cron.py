"""Cron triggers on the real control plane, with a seconds-resolution schedule: each tick starts exactly
one run (named from the workflow and the tick); an operator killed across a tick starts the missed tick
once on restart (within `startingDeadline`) and never twice. The workflow lives in
``tests/e2e/flows/lifecycle_flows.py``."""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for

#: Every 10 seconds: a tick is due often enough for a test, rarely enough that a busy machine keeps up.
EVERY = 10


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def ticking_workflow(marker: Path, **trigger: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "ticking-flow"},
        "spec": {
            "triggers": [{"cron": f"*/{EVERY} * * * * *", **trigger}],
            "image": "ghcr.io/example/lifecycle-flows:test",
            "function": "lifecycle_flows:ticking_flow",
            "podTemplate": {"env": [{"name": "TICK_MARKER", "value": str(marker)}]},
        },
    }


def scheduled(run: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(run["spec"]["event"]["data"]["scheduledAt"])


def tick_runs(cluster: Cluster) -> list[dict[str, Any]]:
    return sorted(cluster.runs(), key=scheduled)


def test_each_tick_starts_exactly_one_run_and_a_missed_tick_starts_once_after_a_restart(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "ticks.txt"
    cluster.apply(ticking_workflow(marker))
    wait_for(lambda: len(tick_runs(cluster)) >= 3, timeout=120, interval=0.5, what="three ticks' runs")
    workflow = cluster.get("workflows.kubestep.dev", "ticking-flow")
    assert workflow["status"]["nextTick"], workflow["status"]

    # The operator is down across at least two ticks, and comes back just after a tick, so that the tick
    # just before is missed and still within its deadline (5 minutes) when the operator looks.
    operator.kill()
    down_at = time.time()
    before = {r["metadata"]["name"]: scheduled(r) for r in tick_runs(cluster)}
    time.sleep(EVERY * 2.5)
    while not 0.5 <= time.time() % EVERY <= 1.5:
        time.sleep(0.05)
    operator.start()
    restarted_at = time.time()

    def caught_up() -> list[dict[str, Any]] | None:
        runs = tick_runs(cluster)
        return runs if any(r["metadata"]["name"] not in before for r in runs) else None

    runs = wait_for(caught_up, timeout=120, interval=0.2, what="a run after the restart")
    first_late = next(r for r in runs if r["metadata"]["name"] not in before)
    missed_tick = scheduled(first_late)
    created = when(first_late["metadata"]["creationTimestamp"])
    print(
        f"down {restarted_at - down_at:.1f}s; first run after the restart: tick {missed_tick.isoformat()}, "
        f"created {(created - missed_tick).total_seconds():.0f}s after it"
    )
    # It was started by the restarted operator, for the most recent tick due then: the missed one.
    assert created.timestamp() >= restarted_at - 1, (created, restarted_at)
    assert 0 <= (created - missed_tick).total_seconds() < EVERY + 1, (created, missed_tick)
    # The older missed ticks started nothing and are counted.
    skipped = int((missed_tick - max(before.values())).total_seconds()) // EVERY - 1
    assert skipped >= 1
    status = cluster.get("workflows.kubestep.dev", "ticking-flow")["status"]
    assert status["skippedTicks"] == skipped, (status, skipped)

    # Exactly one run per tick, on the schedule: no tick twice, none between.
    times = [scheduled(r) for r in runs]
    assert len(set(times)) == len(times), times
    assert all(t.second % EVERY == 0 and t.microsecond == 0 for t in times), times
    for a, b in itertools.pairwise(times):
        if b != missed_tick:  # the gap of the outage
            assert (b - a).total_seconds() == EVERY, (a, b)
    # Every run did its step, once, for its own tick.
    wait_for(
        lambda: all(
            (r.get("status") or {}).get("phase") == "Succeeded" for r in tick_runs(cluster)[: len(runs)]
        ),
        timeout=180,
        interval=0.5,
        what="the ticks' runs to succeed",
    )
    lines = marker.read_text().splitlines()
    noted = [datetime.fromisoformat(line) for line in lines]
    assert len(noted) == len(set(noted)), lines
    assert set(times) <= set(noted), (times, lines)
    assert_clean_log(operator)


def test_the_api_server_refuses_malformed_cron_triggers(cluster: Cluster, tmp_path: Path) -> None:
    import json

    cases = [
        ({"cron": "every hour"}, "is not a cron schedule"),
        ({"cron": "0 * * * *", "if": "true"}, "belongs to an `event` trigger"),
        ({"cron": "0 * * * *", "event": "app/go"}, "set exactly one of them"),
        ({"event": "app/go", "timezone": "UTC"}, "belong to a `cron` trigger"),
    ]
    for trigger, problem in cases:
        manifest = ticking_workflow(tmp_path / "never.txt")
        manifest["spec"]["triggers"] = [trigger]
        result = cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
        assert result.returncode != 0 and problem in result.stderr, (trigger, result.stderr)
