"""Two operator processes with ``--leader-elect`` on the real control plane: one reconciles, one stands by.

Each operator records its writes under its own field manager (``--field-manager``), so the objects'
``metadata.managedFields`` say which process created or last changed what, and when (to the second).
A watch records every Job ever created, by uid, so a Job re-created under an attempt's name cannot hide.
The runs are of ``leader_flows:chain_flow`` (three steps, each appending a trace line per execution).

Short durations (lease 4 s, renew deadline 3 s, retry 0.5 s) keep the tests quick; the bounds asserted
are generous and the ordering claims rest on the Lease's own record and the objects' history.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conftest import Cluster, JobRecorder, Operator, assert_clean_log, assert_no_attempt_has_two_jobs
from kubecp.cluster import ControlPlane
from kubecp.testing import wait_for

LEASE = "kubestep-operator"
LEASE_SECONDS = 4.0
TIMINGS = ["--leader-elect-lease-duration", "4s", "--leader-elect-renew-deadline", "3s"]
TIMINGS += ["--leader-elect-retry-period", "0.5s"]
#: How much later than its lease duration a standby may take over (the requirement's bound).
TAKEOVER_SLACK = 5.0
STEPS = ("one", "two", "three")
MANAGER_PREFIX = "kubestep-"


# The two operators --------------------------------------------------------------------------------------


@dataclass
class Pair:
    """Operators ``a`` and ``b`` on one Lease in the test's namespace."""

    a: Operator
    b: Operator
    namespace: str
    leases: client.CoordinationV1Api
    liveness: dict[str, str]

    def by_identity(self, identity: str) -> Operator:
        return {identity_of(self.a): self.a, identity_of(self.b): self.b}[identity]

    def lease(self) -> dict[str, Any] | None:
        """The Lease's spec and metadata (None before it exists)."""
        try:
            lease = self.leases.read_namespaced_lease(LEASE, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        plain: dict[str, Any] = self.leases.api_client.sanitize_for_serialization(lease)
        return plain

    def health(self, op: Operator) -> dict[str, Any]:
        """What ``op``'s health endpoint (``--liveness``) answers; it answers 200 once the operator is up."""
        with urllib.request.urlopen(self.liveness[identity_of(op)], timeout=5) as answer:
            assert answer.status == 200
            body: dict[str, Any] = json.loads(answer.read())
            return body

    def holder(self) -> str | None:
        lease = self.lease()
        return lease["spec"].get("holderIdentity") if lease is not None else None

    def wait_holder(self, identity: str, timeout: float) -> dict[str, Any]:
        """Wait until ``identity`` holds the Lease; return the Lease."""
        wait_for(lambda: self.holder() == identity, timeout=timeout, interval=0.1, what=f"{identity} to lead")
        lease = self.lease()
        assert lease is not None
        return lease


def identity_of(op: Operator) -> str:
    return op.env["POD_NAME"]


def manager_of(op: Operator) -> str:
    return f"{MANAGER_PREFIX}{identity_of(op)}"


@pytest.fixture
def pair(kubestep_crds: ControlPlane, restricted: str, tmp_path: Path) -> Iterator[Pair]:
    """Two operators, not started yet; both stopped after the test."""
    ops, liveness = [], {}
    for name in ("operator-a", "operator-b"):
        liveness[name] = f"http://127.0.0.1:{free_port()}/healthz"
        args = ["--leader-elect", *TIMINGS, "--leader-elect-namespace", restricted]
        args += ["--field-manager", f"{MANAGER_PREFIX}{name}", "--liveness", liveness[name]]
        ops.append(Operator(kubestep_crds, restricted, tmp_path / f"{name}.log", args, {"POD_NAME": name}))
    api = client.CoordinationV1Api(kubestep_crds.api_client())
    yield Pair(ops[0], ops[1], restricted, api, liveness)
    for op in ops:
        op.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_leader_then_standby(pair: Pair) -> None:
    """Start ``a``, wait until it leads; start ``b``, wait until it stands by."""
    pair.a.start()
    pair.wait_holder("operator-a", timeout=60)
    pair.b.start()
    wait_for(
        lambda: "standing by: Lease" in pair.b.log(), timeout=60, interval=0.2, what="operator-b to stand by"
    )


# Recording every Job ---------------------------------------------------------------------------------------


@pytest.fixture
def jobs(pair: Pair, kubestep_crds: ControlPlane) -> Iterator[JobRecorder]:
    recorder = JobRecorder(client.BatchV1Api(kubestep_crds.api_client()), pair.namespace)
    recorder.start()
    yield recorder
    recorder.stop()


# Manifests and checks -----------------------------------------------------------------------------------


def chain_workflow() -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "chain-flow"},
        "spec": {
            "triggers": [{"event": "test/chain.requested"}],
            "image": "example.invalid/leader-flows:1.0",
            "function": "leader_flows:chain_flow",
            "retries": {"limit": 2, "backoff": {"initial": "1s", "factor": 1, "max": "1s", "jitter": "0s"}},
            "timeouts": {"step": "3m", "run": "15m"},
        },
    }


def chain_event(number: int, data_dir: Path, seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": f"chain-{number}"},
        "spec": {"name": "test/chain.requested", "data": {"dir": str(data_dir), "seconds": seconds}},
    }


def start_runs(cluster: Cluster, data_dir: Path, count: int, seconds: float) -> None:
    cluster.apply(chain_workflow(), *(chain_event(n, data_dir, seconds) for n in range(count)))


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def now() -> datetime:
    return datetime.now(UTC)


def creator(obj: dict[str, Any]) -> str | None:
    """The kubestep field manager that created ``obj`` (the one owning its metadata, not the status)."""
    for entry in obj["metadata"].get("managedFields") or []:
        if entry["manager"].startswith(MANAGER_PREFIX) and not entry.get("subresource"):
            return str(entry["manager"])
    return None


def writes(obj: dict[str, Any]) -> list[tuple[str, datetime]]:
    """``(manager, time)`` of every kubestep field manager's entry on ``obj``."""
    return [
        (e["manager"], stamp(e["time"]))
        for e in obj["metadata"].get("managedFields") or []
        if e["manager"].startswith(MANAGER_PREFIX)
    ]


def with_managed_fields(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    """All objects of a kind, with their ``managedFields`` (which kubectl leaves out unless asked)."""
    listed = cluster.kubectl("get", kind, "-o", "json", "--show-managed-fields").stdout
    return list(json.loads(listed)["items"])


def everything_written(cluster: Cluster) -> list[dict[str, Any]]:
    """Every object a kubestep operator writes in the namespace (deleted Secrets aside)."""
    kinds = ["workflowruns.kubestep.dev", "events.kubestep.dev", "workflows.kubestep.dev"]
    kinds += ["jobs", "secrets", "events", "leases.coordination.k8s.io"]
    return [obj for kind in kinds for obj in with_managed_fields(cluster, kind)]


def wait_all_succeeded(cluster: Cluster, count: int, timeout: float) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        runs = cluster.runs()
        finished = [
            r for r in runs if r.get("status", {}).get("phase") in ("Succeeded", "Failed", "Cancelled")
        ]
        return runs if len(runs) == count and len(finished) == count else None

    return wait_for(done, timeout=timeout, interval=1.0, what=f"{count} runs to finish")


def assert_every_run_succeeded_once_per_step(runs: list[dict[str, Any]], data_dir: Path) -> None:
    """Every run succeeded and each step's body ran once (its trace), as its one Succeeded attempt.

    A leader killed between saving a run's status and creating the Job it records leaves an attempt
    whose Job never existed: the next leader records it ``Lost`` and starts the next attempt, spending
    no budget. Such an attempt never ran a body, which the trace shows.
    """
    for run in runs:
        name, status = run["metadata"]["name"], run["status"]
        assert status["phase"] == "Succeeded", (name, status)
        trace = (data_dir / f"{name}.log").read_text().splitlines()
        ran = {line.split()[0]: int(line.split()[1]) for line in trace if line.endswith(" start")}
        assert trace == [f"{s} {ran[s]} {what}" for s in STEPS for what in ("start", "ok")], (name, trace)
        assert status["output"] == {s: {"step": s, "attempt": ran[s]} for s in STEPS}, (
            name,
            status["output"],
        )
        for recorded in status["steps"]:
            results = [a.get("result") for a in recorded.get("attempts") or []]
            assert results == ["Lost"] * (ran[recorded["id"]] - 1) + ["Succeeded"], (name, recorded)
            assert recorded["failures"] == 0, (name, recorded)


def assert_wrote_nothing_after(op: Operator, since: datetime, objects: list[dict[str, Any]]) -> None:
    """``op``'s field manager has no entry newer than ``since`` (entries are stamped to the second)."""
    late = [
        (obj["kind"], obj["metadata"]["name"], when.isoformat())
        for obj in objects
        for manager, when in writes(obj)
        if manager == manager_of(op) and when > since
    ]
    assert not late, f"{identity_of(op)} wrote after {since.isoformat()}: {late}"


# The tests ------------------------------------------------------------------------------------------------


def test_only_the_leader_reconciles_and_a_killed_leader_is_replaced_within_its_lease(
    pair: Pair, cluster: Cluster, jobs: JobRecorder, tmp_path: Path
) -> None:
    data_dir = tmp_path / "traces"
    data_dir.mkdir()
    start_leader_then_standby(pair)
    start_runs(cluster, data_dir, count=10, seconds=1.0)

    # Mid-load: every run has started a Job, and only the leader has written anything.
    wait_for(lambda: len(jobs.jobs) >= 12, timeout=120, interval=0.2, what="the runs' first Jobs")
    assert pair.holder() == "operator-a"
    written = everything_written(cluster)
    assert {m for obj in written for m, _ in writes(obj)} == {manager_of(pair.a)}
    assert "leading:" not in pair.b.log()
    # The standby is up (its health endpoint answers) and says it is not leading.
    assert pair.health(pair.b)["leader"] == {
        "identity": "operator-b",
        "lease": f"{pair.namespace}/{LEASE}",
        "leading": False,
        "holder": "operator-a",
    }
    assert pair.health(pair.a)["leader"]["leading"] is True

    killed = now()
    pair.a.kill()
    lease = pair.wait_holder("operator-b", timeout=LEASE_SECONDS + TAKEOVER_SLACK + 30)
    takeover = (stamp(lease["spec"]["acquireTime"]) - killed).total_seconds()
    print(f"takeover after SIGKILL: {takeover:.2f}s")
    assert takeover <= LEASE_SECONDS + TAKEOVER_SLACK, f"operator-b took {takeover:.1f}s to take over"
    assert lease["spec"]["leaseTransitions"] == 1, lease["spec"]
    assert "operator-a did not renew it" in pair.b.log()
    # kopf evaluates probes at most every 10 s.
    wait_for(
        lambda: pair.health(pair.b)["leader"]["leading"],
        timeout=30,
        interval=1,
        what="operator-b's health to say so",
    )

    runs = wait_all_succeeded(cluster, 10, timeout=300)
    assert_every_run_succeeded_once_per_step(runs, data_dir)
    assert_no_attempt_has_two_jobs(jobs, cluster)
    # Each Job was created by whoever led at that moment, and the new leader finished the load.
    creators: dict[str, list[datetime]] = {}
    for job in jobs.jobs.values():
        created = stamp(job["metadata"]["creationTimestamp"])
        creators.setdefault(str(creator(job)), []).append(created)
    assert set(creators) == {manager_of(pair.a), manager_of(pair.b)}, creators
    assert max(creators[manager_of(pair.a)]) <= killed
    acquired = stamp(lease["spec"]["acquireTime"]).replace(microsecond=0)
    assert min(creators[manager_of(pair.b)]) >= acquired
    assert pair.holder() == "operator-b"
    assert_clean_log(pair.b)
    assert not re.search(r"(?m)^Traceback", pair.a.log())


def test_a_leader_frozen_past_its_lease_is_replaced_and_writes_nothing_when_continued(
    pair: Pair, cluster: Cluster, jobs: JobRecorder, tmp_path: Path
) -> None:
    data_dir = tmp_path / "traces"
    data_dir.mkdir()
    start_leader_then_standby(pair)
    start_runs(cluster, data_dir, count=4, seconds=3.0)
    wait_for(lambda: len(jobs.jobs) >= 4, timeout=120, interval=0.2, what="the runs' first Jobs")

    frozen = now()
    pair.a.send(signal.SIGSTOP)
    try:
        lease = pair.wait_holder("operator-b", timeout=LEASE_SECONDS + TAKEOVER_SLACK + 30)
        takeover = (stamp(lease["spec"]["acquireTime"]) - frozen).total_seconds()
        print(f"takeover after SIGSTOP: {takeover:.2f}s")
        assert takeover <= LEASE_SECONDS + TAKEOVER_SLACK, f"operator-b took {takeover:.1f}s to take over"
        # Let the new leader work while the old one is frozen with what it was doing.
        wait_for(
            lambda: any(
                m == manager_of(pair.b)
                for o in with_managed_fields(cluster, "workflowruns.kubestep.dev")
                for m, _ in writes(o)
            ),
            timeout=60,
            interval=0.5,
            what="operator-b to write a run's status",
        )
    finally:
        pair.a.send(signal.SIGCONT)
    continued = now()

    # Continued, the old leader notices that it lost the Lease, and stays a candidate.
    wait_for(
        lambda: "stopped leading" in pair.a.log(), timeout=30, interval=0.2, what="operator-a to stop leading"
    )
    transitions = lease["spec"]["leaseTransitions"]
    watch_until = time.monotonic() + 3 * LEASE_SECONDS
    while time.monotonic() < watch_until:
        current = pair.lease()
        assert current is not None
        assert current["spec"]["holderIdentity"] == "operator-b", current["spec"]
        assert current["spec"]["leaseTransitions"] == transitions, current["spec"]
        time.sleep(0.2)
    assert pair.a.alive and "standing by: Lease" in pair.a.log().split("stopped leading")[-1]

    runs = wait_all_succeeded(cluster, 4, timeout=300)
    assert_every_run_succeeded_once_per_step(runs, data_dir)
    assert_no_attempt_has_two_jobs(jobs, cluster)
    # Nothing of operator-a's is newer than the moment it was frozen: not while frozen, not once continued.
    assert_wrote_nothing_after(pair.a, frozen, everything_written(cluster))
    assert continued > frozen
    assert not re.search(r"(?m)^Traceback", pair.a.log())

    # A graceful stop of the leader hands the Lease over at once (released, not expired).
    terminated = now()
    pair.b.stop()
    assert pair.b.process is not None and pair.b.process.returncode == 0, pair.b.log()[-3000:]
    assert "released Lease" in pair.b.log()
    lease = pair.wait_holder("operator-a", timeout=LEASE_SECONDS + TAKEOVER_SLACK)
    handover = (stamp(lease["spec"]["acquireTime"]) - terminated).total_seconds()
    print(f"takeover after SIGTERM: {handover:.2f}s")
    # Taken because nobody held it, not because operator-b's renewals stopped for a whole lease.
    assert "(nobody holds it: take it)" in pair.a.log().split("stopped leading")[-1]
    assert handover <= LEASE_SECONDS + TAKEOVER_SLACK
    assert_clean_log(pair.a)
