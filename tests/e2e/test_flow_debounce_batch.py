"""`spec.debounce` and `spec.batch` end to end: events held in a queued run, released by time or size.

The workflow (``gather_flows``) returns the data of the events it received, so each run's output shows
which events it got. Times are the API server's (Events' creation, runs' admission), in whole seconds for
creation: the bounds below allow a second either way.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for

FINISHED = ("Succeeded", "Failed", "Cancelled")


def ready(cluster: Cluster, manifest: dict[str, Any]) -> None:
    """Apply the Workflow and wait until the operator has read it: events sent from now on are taken in
    as they are sent (held times count from when the operator takes an event in)."""
    cluster.apply(manifest)

    def probe() -> bool:
        found = cluster.get("workflows.kubestep.dev", manifest["metadata"]["name"])
        conditions = (found.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(probe, timeout=60, interval=0.3, what="the workflow Ready")


def gather_workflow(**flow: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "gather-events"},
        "spec": {
            "triggers": [{"event": "test/gather"}],
            "image": "example.invalid/gather-flows:1.0",
            "function": "gather_flows:collect",
            "retries": {"limit": 1, "backoff": {"initial": "1s", "jitter": "0s"}},
            **flow,
        },
    }


def event(name: str, n: int, ts: datetime | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "test/gather", "data": {"n": n}}
    if ts is not None:
        spec["ts"] = ts.isoformat()
    return {"apiVersion": "kubestep.dev/v1alpha1", "kind": "Event", "metadata": {"name": name}, "spec": spec}


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def admitted_at(run: dict[str, Any]) -> datetime:
    return stamp(run["status"]["admission"]["admittedAt"])


def processed(cluster: Cluster, name: str) -> dict[str, Any]:
    found = cluster.get("events.kubestep.dev", name)
    return next(c for c in found["status"]["conditions"] if c["type"] == "Processed")


def finished_runs(cluster: Cluster, count: int, timeout: float = 180) -> list[dict[str, Any]]:
    """The namespace's runs once there are ``count``, all finished, by generation (the order they opened)."""

    def probe() -> list[dict[str, Any]] | None:
        runs = cluster.runs()
        assert len(runs) <= count, [r["spec"].get("gather") for r in runs]
        if len(runs) == count and all(r.get("status", {}).get("phase") in FINISHED for r in runs):
            return sorted(runs, key=lambda r: r["spec"]["gather"]["generation"])
        return None

    return wait_for(probe, timeout=timeout, interval=0.5, what=f"{count} finished runs")


def send_spaced(cluster: Cluster, prefix: str, count: int, every: float) -> list[float]:
    """Publish ``count`` Events ``every`` seconds apart; the wall-clock time of each."""
    sent = []
    start = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, start + i * every - time.monotonic()))
        cluster.apply(event(f"{prefix}-{i:02}", i))
        sent.append(time.time())
    return sent


def test_debounced_events_start_one_run_with_the_last(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    ready(cluster, gather_workflow(debounce={"period": "3s"}))
    cluster.apply(event("d-00", 0))
    # The first event opens a run that waits, visibly, for the events to stop.
    waiting = wait_for(
        lambda: next(
            (
                r
                for r in cluster.runs()
                if (r.get("status") or {}).get("admission", {}).get("waitingFor") == "Debouncing"
            ),
            None,
        ),
        timeout=30,
        interval=0.2,
        what="a debouncing run",
    )
    assert waiting["status"]["phase"] in ("Queued", "Pending")
    condition = next(c for c in waiting["status"]["conditions"] if c["type"] == "Admitted")
    assert condition["status"] == "False" and condition["reason"] == "Debouncing"
    for i in range(1, 5):
        time.sleep(1.0)
        cluster.apply(event(f"d-{i:02}", i))
    (run,) = finished_runs(cluster, 1)
    assert run["status"]["phase"] == "Succeeded"
    assert run["status"]["output"] == {"event": {"n": 4}, "events": [{"n": 4}]}
    assert run["spec"]["event"]["source"] == "d-04"
    # Causality: it started only once the last event had been quiet for the period.
    last = stamp(cluster.get("events.kubestep.dev", "d-04")["metadata"]["creationTimestamp"])
    assert (admitted_at(run) - last).total_seconds() >= 2.0
    name = run["metadata"]["name"]
    for i in range(4):
        said = processed(cluster, f"d-{i:02}")
        assert said["reason"] == "Debounced", said
        assert name in said["message"] and "superseded by event d-" in said["message"]
    said = processed(cluster, "d-04")
    assert said["reason"] == "RunsStarted" and name in said["message"]
    # Nothing else starts afterwards.
    time.sleep(4)
    assert [r["metadata"]["name"] for r in cluster.runs()] == [name]
    assert_clean_log(operator)


def test_a_debounce_timeout_starts_a_run_under_a_constant_stream(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    ready(cluster, gather_workflow(debounce={"period": "3s", "timeout": "5s"}))
    send_spaced(cluster, "s", 12, 1.0)  # never 3 s quiet: only the timeout starts a run meanwhile
    last_created = stamp(cluster.get("events.kubestep.dev", "s-11")["metadata"]["creationTimestamp"])

    def stream_done() -> list[dict[str, Any]] | None:
        runs = cluster.runs()
        over = len(runs) >= 2 and all(r.get("status", {}).get("phase") in FINISHED for r in runs)
        last_in = any(r["spec"]["event"]["source"] == "s-11" for r in runs)
        return runs if over and last_in else None

    runs = wait_for(stream_done, timeout=120, interval=0.5, what="the stream's runs finished")
    runs.sort(key=lambda r: r["spec"]["gather"]["generation"])
    first = runs[0]
    # Admitted while events were still arriving, within the timeout of its first event.
    first_in = stamp(first["spec"]["gather"]["firstAt"])
    assert admitted_at(first) < last_created
    assert 4.5 <= (admitted_at(first) - first_in).total_seconds() <= 5 + 3
    assert first["status"]["output"]["event"]["n"] < 11
    # The last run ends the stream with its last event.
    assert runs[-1]["status"]["output"]["event"] == {"n": 11}
    assert all(r["status"]["phase"] == "Succeeded" for r in runs)
    assert_clean_log(operator)


def test_batches_of_five_and_the_rest_after_the_timeout(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    ready(cluster, gather_workflow(batch={"maxSize": 5, "timeout": "5s"}))
    # Sent at once, each with its own time (`ts`): a batch is ordered by it.
    now = datetime.now(UTC)
    cluster.apply(*[event(f"b-{i:02}", i, now + timedelta(milliseconds=10 * i)) for i in range(12)])
    runs = finished_runs(cluster, 3)
    outputs = [r["status"]["output"] for r in runs]
    sizes = [len(o["events"]) for o in outputs]
    assert sizes == [5, 5, 2], outputs
    numbers = [[e["n"] for e in o["events"]] for o in outputs]
    assert sorted(n for ns in numbers for n in ns) == list(range(12))
    assert all(ns == sorted(ns) for ns in numbers), numbers  # each batch in order
    assert all(o["event"] == o["events"][0] for o in outputs)  # ctx.event is the batch's first
    assert all(r["status"]["phase"] == "Succeeded" for r in runs)
    # The full batches start at once; the last one waits for its timeout.
    third = runs[2]
    waited = (admitted_at(third) - stamp(third["spec"]["gather"]["firstAt"])).total_seconds()
    assert waited >= 4.0, waited
    assert max(admitted_at(r) for r in runs[:2]) <= admitted_at(third)
    assert_clean_log(operator)


def test_the_api_server_refuses_debounce_with_batch_and_short_periods(cluster: Cluster) -> None:
    both = gather_workflow(debounce={"period": "3s"}, batch={"maxSize": 5, "timeout": "5s"})
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(both), check=False)
    assert proc.returncode != 0
    assert "spec.debounce and spec.batch are both set" in proc.stderr
    short = gather_workflow(debounce={"period": "500ms", "timeout": "200ms"})
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(short), check=False)
    assert proc.returncode != 0
    assert "debounce.period is shorter than 1s" in proc.stderr
    assert "debounce.timeout is shorter than debounce.period" in proc.stderr
    tiny = gather_workflow(batch={"maxSize": 0, "timeout": "5s"})
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(tiny), check=False)
    assert proc.returncode != 0 and "maxSize" in proc.stderr


def test_a_held_batch_survives_an_operator_crash(operator: Operator, cluster: Cluster) -> None:
    ready(cluster, gather_workflow(batch={"maxSize": 3, "timeout": "10m"}))
    # Their own times: two Events applied together share a creation second, which leaves their order open.
    base = datetime.now(UTC)
    cluster.apply(event("c-00", 0, base), event("c-01", 1, base + timedelta(seconds=1)))

    def holding(count: int, most: int = 1) -> dict[str, Any] | None:
        runs = cluster.runs()
        assert len(runs) <= most, [r["metadata"]["name"] for r in runs]
        for run in runs:
            status = run.get("status") or {}
            events = run["spec"]["gather"]["events"]
            if len(events) == count and status.get("admission", {}).get("waitingFor") == "Batching":
                return run
        return None

    held = wait_for(lambda: holding(2), timeout=60, interval=0.3, what="a batch holding two events")
    assert held["status"]["phase"] == "Queued"
    operator.kill()
    cluster.apply(event("c-02", 2, base + timedelta(seconds=2)))  # arrives while no operator runs
    operator.start()
    (run,) = finished_runs(cluster, 1, timeout=180)
    assert run["metadata"]["name"] == held["metadata"]["name"]
    assert [e["n"] for e in run["status"]["output"]["events"]] == [0, 1, 2]
    # The next event opens the next batch, which waits for its timeout.
    cluster.apply(event("c-03", 3))
    nxt = wait_for(lambda: holding(1, most=2), timeout=60, interval=0.3, what="the next batch")
    assert nxt["spec"]["gather"]["generation"] == 1
    assert_clean_log(operator)
