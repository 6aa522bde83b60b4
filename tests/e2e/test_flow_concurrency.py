"""`spec.concurrency` end to end: the operator as a process on the real control plane.

The step pods of ``flow_flows`` write timed traces (start and end of every step execution) into the test's
data directory; a sampler thread lists the step pods every 100 ms. Both must agree that no more work ran
at once than the limit allows.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for

FINISHED = ("Succeeded", "Failed", "Cancelled")


def flow_workflow(
    name: str, data_dir: Path, concurrency: list[dict[str, Any]], seconds: float = 1.0, gated: bool = False
) -> dict[str, Any]:
    function = "flow_flows:nap" if name == "flow-nap" else "flow_flows:work"
    event = "test/nap" if name == "flow-nap" else "test/flow"
    env = [
        {"name": "FLOW_DATA_DIR", "value": str(data_dir)},
        {"name": "FLOW_STEP_SECONDS", "value": str(seconds)},
        {"name": "FLOW_GATED", "value": "1" if gated else "0"},
    ]
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "triggers": [{"event": event}],
            "image": "example.invalid/flow-flows:1.0",
            "function": function,
            "retries": {"limit": 1, "backoff": {"initial": "1s", "jitter": "0s"}},
            "podTemplate": {"env": env},
            "concurrency": concurrency,
        },
    }


def events(
    prefix: str, tenant: str, count: int, event: str = "test/flow", start: int = 0
) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "kubestep.dev/v1alpha1",
            "kind": "Event",
            "metadata": {"name": f"{prefix}-{i:02}"},
            "spec": {"name": event, "data": {"tenant": tenant, "n": i}},
        }
        for i in range(start, start + count)
    ]


def traces(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "trace.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def max_overlap(lines: list[dict[str, Any]], tenant: str | None = None) -> int:
    """The most step executions (of ``tenant``) that ran at the same time, from their traces."""
    marks = sorted(
        (line["t"], 1 if line["what"] == "start" else -1)
        for line in lines
        if tenant is None or line["tenant"] == tenant
    )
    # At equal times an end is counted before a start: they did not overlap.
    marks.sort(key=lambda m: (m[0], m[1]))
    level = peak = 0
    for _, delta in marks:
        level += delta
        peak = max(peak, level)
    return peak


class PodSampler:
    """Lists the namespace's step pods every 100 ms and keeps the most alive at once, per tenant."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.peak: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._tenants: dict[str, str] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tenant(self, run: str) -> str:
        if run not in self._tenants:
            runs = self.custom.list_namespaced_custom_object(
                "kubestep.dev", "v1alpha1", self.namespace, "workflowruns"
            )["items"]
            for item in runs:
                self._tenants[item["metadata"]["name"]] = item["spec"]["event"]["data"].get("tenant", "")
        return self._tenants.get(run, "?")

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector="app.kubernetes.io/managed-by=kubestep"
            ).items
            alive: Counter[str] = Counter()
            for pod in pods:
                if pod.status.phase in ("Succeeded", "Failed"):
                    continue
                alive[self._tenant(pod.metadata.labels.get("kubestep.dev/run", ""))] += 1
                alive["*"] += 1
            for tenant, count in alive.items():
                self.peak[tenant] = max(self.peak[tenant], count)
            self.samples += 1

    @contextmanager
    def running(self) -> Iterator[PodSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)


def all_finished(cluster: Cluster, count: int, timeout: float = 300.0) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        runs = cluster.runs()
        if len(runs) == count and all(r.get("status", {}).get("phase") in FINISHED for r in runs):
            return runs
        return None

    return wait_for(probe, timeout=timeout, interval=1.0, what=f"{count} runs to finish")


def waiting_runs(cluster: Cluster) -> list[dict[str, Any]]:
    """Queued runs whose Admitted condition says why they wait."""
    return [
        r
        for r in cluster.runs()
        if r.get("status", {}).get("phase") == "Queued"
        and any(
            c["type"] == "Admitted" and c["status"] == "False" for c in r["status"].get("conditions") or []
        )
    ]


def phases(cluster: Cluster) -> Counter[str]:
    return Counter(r.get("status", {}).get("phase", "") for r in cluster.runs())


def test_keyed_concurrency_caps_step_pods_per_tenant(
    operator: Operator, cluster: Cluster, api_client: ApiClient, tmp_path: Path
) -> None:
    cluster.apply(flow_workflow("flow-work", tmp_path, [{"limit": 3, "key": "event.data.tenant"}]))
    with PodSampler(api_client, cluster.namespace).running() as sampler:
        cluster.apply(*events("acme", "acme", 15), *events("globex", "globex", 15))
        # While work waits, `kubectl get ksr` shows the queue and what each run waits for.
        queued = wait_for(
            lambda: waiting_runs(cluster) or None, timeout=60, interval=0.3, what="a queued run"
        )
        table = cluster.kubectl("get", "ksr").stdout
        assert "Queued" in table and "ConcurrencyLimited event.data.tenant=" in table, table
        condition = next(c for c in queued[0]["status"]["conditions"] if c["type"] == "Admitted")
        assert condition["reason"] == "ConcurrencyLimited"
        assert "allows 3 step attempts at once for key event.data.tenant" in condition["message"]
        runs = all_finished(cluster, 30)
    assert [r["status"]["phase"] for r in runs] == ["Succeeded"] * 30
    assert sampler.samples > 50
    assert sampler.peak["acme"] <= 3 and sampler.peak["globex"] <= 3, sampler.peak
    lines = traces(tmp_path)
    assert Counter(line["what"] for line in lines) == {"start": 30, "end": 30}  # each step ran once
    assert max_overlap(lines, "acme") <= 3 and max_overlap(lines, "globex") <= 3
    assert max_overlap(lines) >= 4, "the two tenants did not run side by side"
    assert_clean_log(operator)


def test_a_late_tenant_is_served_before_a_burst_goes_on(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    # A shared limit of 2, with each tenant's work kept apart: freed slots go to the tenants in turn.
    concurrency = [{"limit": 2}, {"limit": 2, "key": "event.data.tenant"}]
    cluster.apply(flow_workflow("flow-work", tmp_path, concurrency, seconds=3))
    cluster.apply(*events("a", "a", 20))
    wait_for(
        lambda: phases(cluster)["Queued"] >= 18 or None, timeout=60, interval=0.3, what="A's runs queued"
    )
    cluster.apply(*events("b", "b", 1))
    all_finished(cluster, 21, timeout=400)
    starts = [line for line in traces(tmp_path) if line["what"] == "start"]
    starts.sort(key=lambda line: line["t"])
    a_starts = [line["t"] for line in starts if line["tenant"] == "a"]
    (b_start,) = [line["t"] for line in starts if line["tenant"] == "b"]
    # Granted in the same pass at the latest, so its pod may start a moment after A's third.
    assert b_start <= a_starts[2] + 1.0, (b_start, a_starts[:4])
    assert max_overlap(traces(tmp_path)) <= 2
    assert_clean_log(operator)


def test_runs_scope_holds_the_slot_through_a_sleep(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    concurrency = [{"limit": 1, "key": "event.data.tenant", "scope": "Runs"}]
    cluster.apply(flow_workflow("flow-nap", tmp_path, concurrency))
    cluster.apply(*events("first", "acme", 1, event="test/nap"))
    wait_for(
        lambda: any(line["step"] == "before" for line in traces(tmp_path)) or None,
        timeout=60,
        interval=0.2,
        what="the first run's first step",
    )
    cluster.apply(*events("second", "acme", 1, event="test/nap"))
    # While the first run sleeps (no pod alive), the second stays queued.
    wait_for(
        lambda: phases(cluster)["Sleeping"] == 1 or None, timeout=60, interval=0.2, what="a sleeping run"
    )
    assert phases(cluster)["Queued"] == 1
    runs = all_finished(cluster, 2, timeout=180)
    assert [r["status"]["phase"] for r in runs] == ["Succeeded"] * 2
    lines = traces(tmp_path)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_run.setdefault(line["run"], []).append(line)
    first, second = sorted(by_run.values(), key=lambda ls: min(line["t"] for line in ls))
    assert max(line["t"] for line in first) <= min(line["t"] for line in second)
    assert_clean_log(operator)


def held_slots(cluster: Cluster) -> int:
    """Slots the runs' statuses hold under a `Steps` limit: executions in flight plus unused tickets."""
    total = 0
    for run in cluster.runs():
        status = run.get("status") or {}
        if status.get("phase") in FINISHED:
            continue
        total += len(status.get("active") or []) + (status.get("admission") or {}).get("tickets", 0)
    return total


def test_slots_are_freed_by_cancel_delete_and_a_deleted_pod(
    operator: Operator, cluster: Cluster, api_client: ApiClient, tmp_path: Path
) -> None:
    cluster.apply(flow_workflow("flow-work", tmp_path, [{"limit": 2}], seconds=0.2, gated=True))
    with PodSampler(api_client, cluster.namespace).running() as sampler:
        cluster.apply(*events("e", "t", 6))
        wait_for(
            lambda: phases(cluster)["Queued"] == 4 or None, timeout=60, interval=0.3, what="2 in, 4 queued"
        )
        running = sorted(r["metadata"]["name"] for r in cluster.runs() if r["status"]["phase"] == "Running")
        assert len(running) == 2
        # Cancel one, delete the other: two queued runs take their slots.
        cluster.kubectl("patch", "ksr", running[0], "--type=merge", "-p", '{"spec":{"cancel":true}}')
        cluster.kubectl("delete", "ksr", running[1], "--wait=false")
        wait_for(
            lambda: phases(cluster)["Queued"] == 2 or None, timeout=60, interval=0.3, what="2 more admitted"
        )
        # A step pod deleted mid-step: its attempt is retried, within the limit, and frees its slot meanwhile.
        pods = wait_for(
            lambda: (
                [
                    p
                    for p in cluster.items("pods", "app.kubernetes.io/managed-by=kubestep")
                    if p["status"].get("phase") == "Running"
                ]
                or None
            ),
            timeout=60,
            interval=0.3,
            what="a running step pod",
        )
        cluster.kubectl("delete", "pod", pods[0]["metadata"]["name"], "--wait=false")
        (tmp_path / "go").touch()
        runs = all_finished(cluster, 5, timeout=240)
    assert Counter(r["status"]["phase"] for r in runs) == {"Succeeded": 4, "Cancelled": 1}
    assert sampler.peak["*"] <= 2, sampler.peak
    assert held_slots(cluster) == 0
    # The limit is whole again: two new runs run side by side.
    (tmp_path / "go").unlink()
    cluster.apply(*events("again", "t", 2))
    wait_for(
        lambda: phases(cluster)["Running"] == 2 or None,
        timeout=60,
        interval=0.3,
        what="both new runs running",
    )
    (tmp_path / "go").touch()
    all_finished(cluster, 7, timeout=120)
    assert_clean_log(operator)


def test_a_killed_operator_keeps_the_queue(
    operator: Operator, cluster: Cluster, api_client: ApiClient, tmp_path: Path
) -> None:
    cluster.apply(flow_workflow("flow-work", tmp_path, [{"limit": 2, "key": "event.data.tenant"}], seconds=2))
    with PodSampler(api_client, cluster.namespace).running() as sampler:
        cluster.apply(*events("acme", "acme", 6), *events("globex", "globex", 6))
        wait_for(lambda: phases(cluster)["Queued"] >= 4 or None, timeout=60, interval=0.3, what="runs queued")
        operator.kill()
        operator.start()
        wait_for(
            lambda: phases(cluster)["Succeeded"] >= 2 or None, timeout=120, interval=0.5, what="progress"
        )
        operator.kill()
        operator.start()
        runs = all_finished(cluster, 12, timeout=300)
    assert [r["status"]["phase"] for r in runs] == ["Succeeded"] * 12
    assert sampler.peak["acme"] <= 2 and sampler.peak["globex"] <= 2, sampler.peak
    lines = traces(tmp_path)
    # Nothing lost, nothing started twice: one start and one end per run.
    assert Counter(line["run"] for line in lines if line["what"] == "start") == {
        r["metadata"]["name"]: 1 for r in runs
    }
    assert max_overlap(lines, "acme") <= 2 and max_overlap(lines, "globex") <= 2
    assert_clean_log(operator)
