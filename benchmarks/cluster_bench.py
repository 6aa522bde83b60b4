"""The operator on a local control plane, measured against what the cluster itself does without it.

Every figure is taken in one run: the control plane, the process node and the operator are started here.
Times of Jobs and pods come from watches of this process (wall clock when the change arrived); the API
cost comes from the API server itself (its ``/metrics`` for every client, its audit log for the
operator's own requests).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
BENCH_AGENT = "kubestep-bench"
FINISHED = ("Succeeded", "Failed", "Cancelled")
READS = ("get", "list")
WRITES = ("create", "update", "patch", "delete", "deletecollection")

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# Watching: when each Job, pod end and run end was seen -------------------------------------------------


@dataclass
class Timeline:
    """What the watches saw, by object name, as wall-clock seconds (``time.time()``)."""

    job_added: dict[str, float] = field(default_factory=dict)
    job_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    job_done: dict[str, float] = field(default_factory=dict)
    pod_ended: dict[str, float] = field(default_factory=dict)
    """By Job name: when its pod's container was first seen terminated (as the node recorded it)."""
    run_event: dict[str, str] = field(default_factory=dict)
    run_finished: dict[str, float] = field(default_factory=dict)
    run_status_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """By run: (status bytes, steps) once finished."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Watcher:
    """Watches Jobs, pods and runs of the bench namespace in threads until stopped."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.timeline = Timeline()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(kind,), name=f"watch-{kind}", daemon=True)
            for kind in ("jobs", "pods", "runs")
        ]

    def __enter__(self) -> Watcher:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()

    def _loop(self, kind: str) -> None:
        from kubernetes import client, watch

        from kubecp.loopback import api_client

        api = api_client(self.kubeconfig)
        api.user_agent = BENCH_AGENT
        batch, core, custom = client.BatchV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
        version = ""
        while not self.stopping.is_set():
            stream = watch.Watch()
            try:
                if kind == "jobs":
                    events = stream.stream(
                        batch.list_namespaced_job, NAMESPACE, resource_version=version, timeout_seconds=60
                    )
                elif kind == "pods":
                    events = stream.stream(
                        core.list_namespaced_pod, NAMESPACE, resource_version=version, timeout_seconds=60
                    )
                else:
                    events = stream.stream(
                        custom.list_namespaced_custom_object,
                        "kubestep.dev",
                        "v1alpha1",
                        NAMESPACE,
                        "workflowruns",
                        resource_version=version,
                        timeout_seconds=60,
                    )
                for event in events:
                    obj = event["object"]
                    obj = obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)
                    version = obj["metadata"].get("resourceVersion") or version
                    self._seen(kind, obj, time.time())
                    if self.stopping.is_set():
                        break
            except Exception as exc:
                if "410" in str(exc) or "Expired" in str(exc):
                    version = ""
                time.sleep(0.2)

    def _seen(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        timeline = self.timeline
        with timeline.lock:
            if kind == "jobs":
                timeline.job_added.setdefault(name, now)
                timeline.job_labels.setdefault(name, dict(meta.get("labels") or {}))
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(
                    c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
                ):
                    timeline.job_done.setdefault(name, now)
            elif kind == "pods":
                job = (meta.get("labels") or {}).get("job-name")
                statuses = (obj.get("status") or {}).get("containerStatuses") or []
                if job and any((s.get("state") or {}).get("terminated") for s in statuses):
                    timeline.pod_ended.setdefault(job, now)
            else:
                event = (meta.get("labels") or {}).get("kubestep.dev/event")
                if event:
                    timeline.run_event.setdefault(name, event)
                status = obj.get("status") or {}
                if status.get("phase") in FINISHED and name not in timeline.run_finished:
                    timeline.run_finished[name] = now
                    size = len(json.dumps(status, separators=(",", ":")))
                    timeline.run_status_bytes[name] = (size, len(status.get("steps") or []))


# The API server's own counts ----------------------------------------------------------------------------


def scrape_requests(plane: Any) -> Counter[str]:
    """``apiserver_request_total`` summed by verb (long-running WATCH and CONNECT left out)."""
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        verb = labels.split('verb="', 1)[1].split('"', 1)[0].lower() if 'verb="' in labels else "?"
        if verb not in ("watch", "connect"):
            counts[verb] += int(float(value))
    return counts


#: How ``apiserver_request_total`` names the verbs of writes (HTTP methods, lowercased here).
METRIC_WRITES = ("post", "put", "patch", "delete", "deletecollection", "apply")


def reads_writes(counts: Counter[str]) -> tuple[int, int]:
    """(reads, writes) of a count by verb, as ``apiserver_request_total`` names them."""
    return sum(counts[v] for v in READS), sum(counts[v] for v in METRIC_WRITES)


@dataclass
class AuditSlice:
    """The operator's requests between two instants, from the audit log."""

    reads: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)


def operator_requests(audit_log: Path, start: float, end: float, operator_user: str) -> AuditSlice:
    """Requests of the operator (the admin user, neither kubectl nor this benchmark) in ``[start, end]``."""
    found = AuditSlice()
    if not audit_log.exists():
        return found
    with audit_log.open() as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("stage") != "ResponseComplete":
                continue
            agent = str(entry.get("userAgent") or "")
            if (entry.get("user") or {}).get("username") != operator_user or agent.startswith(
                (BENCH_AGENT, "kubectl")
            ):
                continue
            when = datetime.fromisoformat(
                entry["requestReceivedTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if not start <= when <= end:
                continue
            verb = entry.get("verb", "")
            ref = entry.get("objectRef") or {}
            # kubestep's Events and Kubernetes' Events share a resource name: told apart by their group.
            resource = ref.get("resource", "?")
            if resource == "events" and ref.get("apiGroup"):
                resource = f"events.{ref['apiGroup']}"
            what = resource + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            if verb in READS:
                found.reads[f"{verb} {what}"] += 1
            elif verb in WRITES:
                found.writes[f"{verb} {what}"] += 1
    return found


def process_usage(pid: int) -> tuple[int, int, float]:
    """(peak RSS bytes, RSS bytes, CPU seconds) of a live process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024, cpu


# The benchmark ------------------------------------------------------------------------------------------


class Bench:
    """One control plane, one namespace, and the phases measured on it."""

    def __init__(self, plane: Any, workdir: Path, audit_log: Path, scale: float, say: Callable[[str], None]):
        from kubernetes import client

        self.plane = plane
        self.workdir = workdir
        self.audit_log = audit_log
        self.scale = scale
        self.say = say
        self.api = plane.api_client()
        self.api.user_agent = BENCH_AGENT
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.pool = ThreadPoolExecutor(8)
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_user = self._admin_user()
        self.figures: dict[str, Any] = {}

    def count(self, full: int, least: int = 5) -> int:
        """``full`` scaled by BENCH_SCALE, at least ``least``."""
        return max(least, round(full * self.scale))

    def _admin_user(self) -> str:
        from kubernetes import client

        review = client.AuthenticationV1Api(self.api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        return str(review.status.user_info.username)

    # Operator -------------------------------------------------------------------------------------------

    def start_operator(self, *args: str) -> None:
        log = (self.workdir / "operator.log").open("ab")
        env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)}
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "kubestep.cli.main", "operator", "-n", NAMESPACE, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def start_to_first_reconcile(self) -> float:
        """Start the operator with an Event already waiting; seconds until it has processed that Event (a
        Python process importing kopf and the Kubernetes client, then its first watch lists)."""
        body = {
            "apiVersion": "kubestep.dev/v1alpha1",
            "kind": "Event",
            "metadata": {"name": "first-reconcile"},
            "spec": {"name": "bench/nothing-listens"},
        }
        self.custom.create_namespaced_custom_object("kubestep.dev", "v1alpha1", NAMESPACE, "events", body)
        launched = time.monotonic()
        self.start_operator()
        deadline = launched + 300
        while time.monotonic() < deadline:
            event = self.custom.get_namespaced_custom_object(
                "kubestep.dev", "v1alpha1", NAMESPACE, "events", "first-reconcile"
            )
            if any(c.get("type") == "Processed" for c in (event.get("status") or {}).get("conditions") or []):
                took = time.monotonic() - launched
                self.say(f"operator start to first reconcile (an Event processed): {took:.2f} s")
                return took
            time.sleep(0.05)
        raise TimeoutError("the operator processed no Event within 300 s of its start")

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
            self.operator = None

    def usage(self) -> tuple[int, int, float]:
        assert self.operator is not None
        return process_usage(self.operator.pid)

    # Objects ----------------------------------------------------------------------------------------------

    def apply_workflow(self, name: str, function: str, chained: bool = False) -> None:
        workflow: dict[str, Any] = {
            "apiVersion": "kubestep.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": name},
            "spec": {"triggers": [{"event": f"bench/{name}"}], "image": "bench", "function": function},
        }
        if chained:
            workflow["spec"]["execution"] = {"mode": "Chained", "maxStepsPerPod": 10}
        self.plane.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=yaml.safe_dump(workflow))

    def publish(self, workflow: str, names: list[str]) -> dict[str, float]:
        """Create one Event per name at once; when each was sent."""

        def one(name: str) -> tuple[str, float]:
            sent = time.time()
            body = {
                "apiVersion": "kubestep.dev/v1alpha1",
                "kind": "Event",
                "metadata": {"name": name},
                "spec": {"name": f"bench/{workflow}"},
            }
            self.custom.create_namespaced_custom_object("kubestep.dev", "v1alpha1", NAMESPACE, "events", body)
            return name, sent

        return dict(self.pool.map(one, names))

    def wait_runs(self, timeline: Timeline, events: dict[str, float], timeout: float) -> list[str]:
        """The runs of these events, once all of them finished."""
        deadline = time.monotonic() + timeout
        while True:
            with timeline.lock:
                runs = [r for r, e in timeline.run_event.items() if e in events]
                done = [r for r in runs if r in timeline.run_finished]
            if len(done) == len(events):
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {len(events)} runs finished within {timeout:.0f} s")
            time.sleep(0.5)

    # Phases ------------------------------------------------------------------------------------------------

    def ceiling(self, watcher: Watcher, label: str, command: list[str]) -> float:
        """Bare Jobs (one Python container each) created at once and completed, per minute."""
        n = self.count(300)
        self.say(f"{label}: {n} bare Jobs at once running {' '.join(command)!r}, no operator running")

        def job(i: int) -> str:
            name = f"{label}-{i}"
            body = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "labels": {"bench": "bare"}},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "bench", "command": command}],
                        }
                    },
                },
            }
            self.batch.create_namespaced_job(NAMESPACE, body)
            return name

        start = time.time()
        names = list(self.pool.map(job, range(n)))
        deadline = time.monotonic() + 1800
        while True:
            with watcher.timeline.lock:
                done = [watcher.timeline.job_done[j] for j in names if j in watcher.timeline.job_done]
            if len(done) == n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        per_minute = len(done) / (max(done) - start) * 60
        self.figures[label] = {
            "jobs": n,
            "jobs_per_min": per_minute,
            "seconds": max(done) - start,
            "command": command,
        }
        self.say(f"  {per_minute:.0f} Jobs/min ({max(done) - start:.1f} s)")
        return per_minute

    def runs_phase(self, watcher: Watcher, label: str, workflow: str, n: int, steps: int) -> dict[str, Any]:
        """``n`` runs started by Events at once; throughput, handoff, event to first Job, API cost."""
        self.say(f"{label}: {n} runs of {workflow} started at once")
        before = scrape_requests(self.plane)
        _, _, cpu_before = self.usage()
        start = time.time()
        events = self.publish(workflow, [f"{label}-{i}" for i in range(n)])
        runs = self.wait_runs(watcher.timeline, events, timeout=1800)
        end = time.time()
        _, _, cpu_after = self.usage()
        time.sleep(1)  # the last requests of the pass that finished the run
        after = scrape_requests(self.plane)
        t = watcher.timeline
        with t.lock:
            jobs_by_run: dict[str, list[str]] = {}
            for job, labels in t.job_labels.items():
                run = labels.get("kubestep.dev/run")
                if run in runs:
                    jobs_by_run.setdefault(run, []).append(job)
            handoffs, first_jobs, sizes = [], [], []
            mine = [j for jobs in jobs_by_run.values() for j in jobs]
            lags = [t.job_done[j] - t.pod_ended[j] for j in mine if j in t.job_done and j in t.pod_ended]
            durations = [t.run_finished[r] - events[t.run_event[r]] for r in runs]
            for run in runs:
                jobs = sorted(jobs_by_run.get(run, []), key=lambda j: t.job_added[j])
                if jobs:
                    first_jobs.append(t.job_added[jobs[0]] - events[t.run_event[run]])
                for earlier, later in itertools.pairwise(jobs):
                    if earlier in t.pod_ended:
                        handoffs.append(t.job_added[later] - t.pod_ended[earlier])
                size, count = t.run_status_bytes[run]
                sizes.append(size / max(1, count))
            finished = max(t.run_finished[r] for r in runs)
        attempts = sum(len(j) for j in jobs_by_run.values())
        seconds = finished - start
        cluster = Counter(after)
        cluster.subtract(before)
        reads, writes = reads_writes(cluster)
        audit = operator_requests(self.audit_log, start, end + 1, self.operator_user)
        figures = {
            "runs": n,
            "steps_per_run": steps,
            "jobs": attempts,
            "jobs_per_run": attempts / n,
            "seconds": seconds,
            "runs_per_min": n / seconds * 60,
            "steps_per_min": n * steps / seconds * 60,
            "jobs_per_min": attempts / seconds * 60,
            "run_seconds": {p: percentile(durations, p) for p in (50, 99)},
            "handoff_s": {p: percentile(handoffs, p) for p in (50, 95, 99)},
            "job_controller_lag_s": {p: percentile(lags, p) for p in (50, 99)},
            "event_to_first_job_s": {p: percentile(first_jobs, p) for p in (50, 99)},
            "cluster_requests_per_attempt": {"reads": reads / attempts, "writes": writes / attempts},
            "operator_requests_per_attempt": {
                "reads": sum(audit.reads.values()) / attempts,
                "writes": sum(audit.writes.values()) / attempts,
            },
            "operator_reads": dict(audit.reads.most_common()),
            "operator_writes": dict(audit.writes.most_common()),
            "operator_cpu_s_per_1000_steps": (cpu_after - cpu_before) / attempts * 1000,
            "status_bytes_per_step": sum(sizes) / len(sizes),
        }
        self.figures[label] = figures
        self.say(
            f"  {figures['runs_per_min']:.0f} runs/min, {figures['steps_per_min']:.0f} steps/min, "
            f"{figures['jobs_per_run']:.2f} Jobs per run; handoff p50/p99 "
            f"{_fmt(figures['handoff_s'][50])}/{_fmt(figures['handoff_s'][99])} s; operator "
            f"{figures['operator_requests_per_attempt']['reads']:.1f} reads, "
            f"{figures['operator_requests_per_attempt']['writes']:.1f} writes per attempt"
        )
        return figures

    def caches(self, finished: int, live: int) -> dict[str, Any]:
        """Operator RSS once it holds ``finished`` finished and ``live`` sleeping runs in its caches."""
        self.say(f"caches: {finished} finished and {live} live (sleeping) runs, operator restarted")
        self.stop_operator()
        bodies = [_run_body(f"done-{i}", finished=True) for i in range(finished)]
        bodies += [_run_body(f"live-{i}", finished=False) for i in range(live)]

        def create(body: tuple[dict[str, Any], dict[str, Any]]) -> None:
            obj, status = body
            made = self.custom.create_namespaced_custom_object(
                "kubestep.dev", "v1alpha1", NAMESPACE, "workflowruns", obj
            )
            made["status"] = status
            self.custom.replace_namespaced_custom_object_status(
                "kubestep.dev", "v1alpha1", NAMESPACE, "workflowruns", obj["metadata"]["name"], made
            )

        list(self.pool.map(create, bodies))
        self.start_operator()
        # Settled once its CPU time stops growing (every run listed, indexed and reconciled once).
        time.sleep(5)
        last = -1.0
        for _ in range(240):
            _, rss, cpu = self.usage()
            if cpu - last < 0.05:
                break
            last = cpu
            time.sleep(2)
        peak, rss, _ = self.usage()
        figures = {"finished_runs": finished, "live_runs": live, "rss_bytes": rss, "peak_rss_bytes": peak}
        self.figures["caches"] = figures
        self.say(f"  operator RSS {rss / 2**20:.0f} MiB (peak {peak / 2**20:.0f} MiB)")
        return figures

    def settled_usage(self) -> tuple[int, int, float]:
        """The operator's usage once its CPU time stops growing (what it was given is all handled)."""
        last = -1.0
        for _ in range(240):
            _, _, cpu = self.usage()
            if cpu - last < 0.05:
                break
            last = cpu
            time.sleep(2)
        return self.usage()

    def events(self) -> int:
        found = self.custom.list_namespaced_custom_object("kubestep.dev", "v1alpha1", NAMESPACE, "events")
        return len(found.get("items", []))

    def collected_events(self, n: int, rounds: int = 2, window: int = 5) -> dict[str, Any]:
        """Operator RSS before and after rounds of ``n`` Events (no workflow listens to them) that it
        handles and, past its dedupe window (``window`` seconds), deletes: flat if nothing of them stays."""
        self.say(f"collected events: {rounds} rounds of {n} Events, dedupe window {window} s")
        self.stop_operator()
        self.start_operator("--dedupe-window", f"{window}s")
        time.sleep(5)
        # What earlier phases left (their Events, past this window now) goes first.
        self.wait_events_gone(600)
        _, before, _ = self.settled_usage()
        after: list[int] = []
        took: list[float] = []
        for r in range(rounds):
            began = time.monotonic()
            names = [f"collect-{r}-{i}" for i in range(n)]
            self.publish("nothing-listens", names)
            self.wait_events_gone(600)
            took.append(time.monotonic() - began)
            _, rss, _ = self.settled_usage()
            after.append(rss)
            self.say(
                f"  round {r + 1}: {n} Events handled and deleted in {took[-1]:.1f} s, "
                f"RSS {rss / 2**20:.1f} MiB"
            )
        peak, _, _ = self.usage()
        figures = {
            "events_per_round": n,
            "rounds": rounds,
            "window_s": window,
            "rss_before_bytes": before,
            "rss_after_rounds_bytes": after,
            "peak_rss_bytes": peak,
            "round_seconds": took,
        }
        self.figures["collected_events"] = figures
        self.say(
            f"  operator RSS {before / 2**20:.1f} MiB before, "
            + ", ".join(f"{a / 2**20:.1f}" for a in after)
            + f" MiB after each round of {n} collected Events"
        )
        return figures

    def wait_events_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.events():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.events()} Events still there after {timeout:.0f} s")
            time.sleep(1)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _run_body(name: str, finished: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A WorkflowRun of the five-step workflow and a status: all five steps done, or asleep for a day."""
    from kubestep.api.base import ObjectMeta
    from kubestep.api.report import Report, ReportKind, StepRef
    from kubestep.api.run import RunEvent, StepType, WorkflowRef, WorkflowRun, WorkflowRunSpec
    from kubestep.api.workflow import Trigger, WorkflowSpec
    from kubestep.engine import ExitKind, Observed, Outcome, decide

    spec = WorkflowSpec(
        triggers=[Trigger(event="bench/none")], image="bench", function="bench_flows:five_steps"
    )
    run = WorkflowRun(
        metadata=ObjectMeta(name=name, namespace=NAMESPACE, uid="u"),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="cached"), workflow=spec, event=RunEvent(name="e")
        ),
    )
    now = datetime.now(UTC)
    run = run.model_copy(update={"status": decide(run, Observed(), now).status})
    reports = (
        [
            Report(kind=ReportKind.STEP_SUCCEEDED, step=StepRef(id=f"s{i}", name=f"s{i}"), output=i)
            for i in range(5)
        ]
        + [Report(kind=ReportKind.COMPLETED, output=10)]
        if finished
        else [
            Report(
                kind=ReportKind.SLEEP,
                step=StepRef(id="nap", name="nap", type=StepType.SLEEP),
                until=now + timedelta(days=1),
            )
        ]
    )
    for report in reports:
        (active,) = run.status.active
        now += timedelta(milliseconds=50)
        out = Outcome(active.name, ExitKind.EXITED, report, 0)
        run = run.model_copy(update={"status": decide(run, Observed(outcomes=[out]), now).status})
    body = run.to_dict()
    status = body.pop("status")
    body["metadata"] = {"name": name, "labels": {"kubestep.dev/workflow": "cached"}}
    return body, status


@contextlib.contextmanager
def control_plane(workdir: Path, say: Callable[[str], None]) -> Iterator[tuple[Any, Path]]:
    """A control plane whose API server keeps an audit log (every request's user, agent, verb, time)."""
    from kubecp.cluster import ControlPlane, NodeOptions

    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit_log = workdir / "audit.log"
    plane = ControlPlane(
        workdir / "cluster",
        node=NodeOptions(pythonpath=[str(REPO / "benchmarks")]),
        apiserver_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=batch",
            "--audit-log-maxsize=0",
        ],
        log=say,
    )
    with plane:
        plane.kubectl("apply", "-f", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        plane.kubectl("create", "namespace", NAMESPACE)
        yield plane, audit_log


def bench_cluster(workdir: Path, scale: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Every cluster figure, as a dict (also printed as it goes)."""
    with control_plane(workdir, say) as (plane, audit_log), Watcher(plane.kubeconfig) as watcher:
        bench = Bench(plane, workdir, audit_log, scale, say)
        bench.ceiling(watcher, "ceiling", ["python", "-c", "pass"])
        # A step pod's interpreter imports the runner (pydantic, ...): the same cost without the operator.
        bench.ceiling(watcher, "ceiling-runner", ["python", "-c", "import kubestep.runner.main"])
        bench.apply_workflow("one-step", "bench_flows:one_step")
        bench.apply_workflow("five-steps", "bench_flows:five_steps")
        bench.apply_workflow("five-steps-chained", "bench_flows:five_steps", chained=True)
        bench.figures["operator_start_to_first_reconcile_s"] = bench.start_to_first_reconcile()
        try:
            bench.runs_phase(watcher, "warmup", "one-step", 1, 1)
            big = bench.count(300)
            bench.runs_phase(watcher, "one-step", "one-step", big, 1)
            bench.runs_phase(watcher, "five-steps", "five-steps", big, 5)
            for concurrency in (10, 100):
                n = bench.count(concurrency, least=2)
                bench.runs_phase(watcher, f"handoff-{concurrency}", "five-steps", n, 5)
            # One pod per step against one pod for the five (the same function), a few runs each.
            few = bench.count(10, least=3)
            bench.runs_phase(watcher, "ratio-pod-per-step", "five-steps", few, 5)
            bench.runs_phase(watcher, "ratio-chained", "five-steps-chained", few, 5)
            peak, rss, _ = bench.usage()
            bench.figures["operator_after_runs"] = {"peak_rss_bytes": peak, "rss_bytes": rss}
            bench.caches(bench.count(5000, least=50), bench.count(1000, least=10))
            bench.collected_events(bench.count(1000, least=50))
        finally:
            bench.stop_operator()
        bench.figures["scale"] = scale
        return bench.figures
