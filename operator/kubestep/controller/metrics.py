"""The operator's Prometheus metrics, and the HTTP server that serves them with ``/healthz`` and ``/readyz``.

Runs and attempts are counted from what a saved status adds to the status before it (:func:`run_saved`):
a pass that loses a conflict saves nothing and counts nothing, and the pass that decides again counts the
transition once. Only the operator that leads reconciles, so only it counts; a new leader starts from zero,
which Prometheus' ``rate`` and ``increase`` take as a counter reset.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from kubestep.api.run import RunPhase, StepPhase, WorkflowRun, WorkflowRunStatus

log = logging.getLogger(__name__)

#: Buckets of step durations and delays, in seconds: from a quick step to a long batch job.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, float("inf"))
#: Buckets of one reconcile pass, in seconds.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
_ACTIVE = [p for p in RunPhase if not p.finished]


class _ActiveRuns(Collector):
    """``kubestep_runs_active``: unfinished runs by phase, as the last pass over each saw it."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], RunPhase] = {}
        self._lock = threading.Lock()  # scrapes are served from another thread than the reconcilers'

    def seen(self, namespace: str, name: str, phase: RunPhase) -> None:
        with self._lock:
            if phase.finished:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def gone(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def collect(self) -> Any:
        with self._lock:
            phases = list(self._phases.values())
        family = GaugeMetricFamily(
            "kubestep_runs_active", "Runs not finished yet, by phase.", labels=["phase"]
        )
        for phase in _ACTIVE:
            family.add_metric([phase.value], sum(1 for p in phases if p is phase))
        yield family


class Metrics:
    """Every metric of the operator, registered in ``registry`` (a fresh one per instance)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs_started = Counter(
            "kubestep_runs_started_total", "Runs started, by workflow.", ["workflow"], registry=r
        )
        self.runs_finished = Counter(
            "kubestep_runs_finished_total",
            "Runs finished, by workflow and phase (Succeeded, Failed, Cancelled).",
            ["workflow", "phase"],
            registry=r,
        )
        self.step_attempts = Counter(
            "kubestep_step_attempts_total",
            "Step attempts ended, by workflow and class (Succeeded, Error, NonRetriable, RetryAfter, "
            "Timeout, Disruption, Lost, Cancelled).",
            ["workflow", "class"],
            registry=r,
        )
        self.step_duration = Histogram(
            "kubestep_step_duration_seconds",
            "How long step attempts took, from their execution's start to their end, by workflow.",
            ["workflow"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.step_queue = Histogram(
            "kubestep_step_queue_seconds",
            "How long after it was due (its step reached, its retry backoff over) an attempt's execution "
            "was started, by workflow.",
            ["workflow"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "kubestep_reconcile_duration_seconds",
            "How long one reconcile pass took, by kind (run, event, workflow).",
            ["kind"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "kubestep_reconcile_errors_total",
            "Reconcile passes that failed (an API error, or a bug), by kind.",
            ["kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "kubestep_workqueue_depth", "Keys waiting in the work queue for a worker.", registry=r
        )
        self.api_requests = Counter(
            "kubestep_api_requests_total",
            "Requests of the operator's reconcilers to the Kubernetes API, by verb and result (ok, error).",
            ["verb", "result"],
            registry=r,
        )
        self.active_runs = _ActiveRuns()
        r.register(self.active_runs)

    # Where outcomes are known ---------------------------------------------------------------------------

    def run_seen(self, run: WorkflowRun) -> None:
        """A pass looked at ``run`` (its status as saved, or unchanged)."""
        self.active_runs.seen(run.metadata.namespace or "", run.metadata.name, run.status.phase)

    def run_gone(self, namespace: str, name: str) -> None:
        """The run was deleted."""
        self.active_runs.gone(namespace, name)

    def run_saved(self, before: WorkflowRun, after: WorkflowRunStatus, now: datetime) -> None:
        """Count what the status ``after``, just saved over ``before``'s, adds: a start, an end, attempts."""
        workflow = before.spec.workflow_ref.name
        old = before.status
        if old.started_at is None and after.started_at is not None:
            self.runs_started.labels(workflow).inc()
        if not old.phase.finished and after.phase.finished:
            self.runs_finished.labels(workflow, after.phase.value).inc()
        self.active_runs.seen(before.metadata.namespace or "", before.metadata.name, after.phase)
        for step in after.steps:
            previous = before.step(step.id)
            known = {a.job for a in previous.attempts} if previous is not None else set()
            for attempt in step.attempts:
                if attempt.job in known or attempt.result is None:
                    continue
                self.step_attempts.labels(workflow, attempt.result.value).inc()
                if attempt.started_at is not None and attempt.finished_at is not None:
                    took = (attempt.finished_at - attempt.started_at).total_seconds()
                    self.step_duration.labels(workflow).observe(max(0.0, took))
        started = {e.name for e in old.active}
        for execution in after.active:
            if execution.name in started:
                continue
            due = _due(before, execution.step) or execution.started_at
            self.step_queue.labels(workflow).observe(max(0.0, (execution.started_at - due).total_seconds()))

    def reconciled(self, kind: str, seconds: float, failed: bool) -> None:
        """One reconcile pass of a ``kind`` key ended."""
        self.reconcile_duration.labels(kind).observe(seconds)
        if failed:
            self.reconcile_errors.labels(kind).inc()

    def api_request(self, call: str, ok: bool) -> None:
        """The API module sent a request; ``call`` is the client method, e.g. ``create_namespaced_job``."""
        self.api_requests.labels(verb_of(call), "ok" if ok else "error").inc()

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the work queue's depth at every scrape."""
        self.queue_depth.set_function(lambda: float(depth()))


def _due(before: WorkflowRun, step_id: str | None) -> datetime | None:
    """When the attempt now started was due, as the status before the pass says; None: due in this pass."""
    if step_id is None:
        # A run's first execution is due when the run is created; a discovery retry after its backoff.
        first = before.status.started_at is None
        return before.status.retry_at or (before.metadata.creation_timestamp if first else None)
    step = before.step(step_id)
    if step is None:
        return None
    if step.phase is StepPhase.RETRYING:
        return step.next_attempt_at
    return step.finished_at or step.started_at


_VERBS = {"read": "get", "replace": "update"}


def verb_of(call: str) -> str:
    """The Kubernetes verb of a client method: ``read_namespaced_job`` -> ``get``."""
    word = call.split("_", 1)[0]
    return _VERBS.get(word, word)


#: The operator's metrics.
METRICS = Metrics()


# The HTTP server -------------------------------------------------------------------------------------------


class Server:
    """Serves ``/metrics``, ``/healthz`` (the operator's event loop answers) and ``/readyz`` (started)."""

    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], bool],
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.health = health
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The routes."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answered from the operator's event loop: an answer proves the loop is not stuck.
        details = {"ok": True, **(self.health() if self.health is not None else {})}
        return web.Response(text=json.dumps(details), content_type="application/json")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="starting\n")
