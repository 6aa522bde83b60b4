"""The operator's metrics: counted once per saved transition (a pass that loses its save counts nothing), and
served over HTTP with ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import pytest
from test_controller_reconcilers import NS, World, a_run, a_running_run, report
from test_engine import Sim, err, make_run, ok

from kubestep.api.report import Report, ReportKind
from kubestep.controller.kube import Conflict
from kubestep.controller.metrics import METRICS, Metrics, Server, verb_of
from kubestep.controller.queue import WorkQueue


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_run_with_one_failed_attempt_is_counted_by_class_once() -> None:
    metrics = Metrics()
    sim = Sim(make_run())
    metrics.run_saved(make_run(), sim.status, sim.now)
    steps = [err("enrich"), ok("enrich", 1), ok("store", 2)]
    for report_ in steps:
        before = sim.run
        sim.finish(report_)
        metrics.run_saved(before, sim.status, sim.now)
        if sim.status.steps[-1].next_attempt_at:
            before = sim.run
            sim.step(at=sim.status.steps[-1].next_attempt_at)
            metrics.run_saved(before, sim.status, sim.now)
    before = sim.run
    sim.finish(Report(kind=ReportKind.COMPLETED, output={"imported": 5}))
    metrics.run_saved(before, sim.status, sim.now)
    # Saving the same status again (a pass that changed nothing) adds nothing.
    metrics.run_saved(sim.run, sim.status, sim.now)
    assert value(metrics, "kubestep_runs_started_total", workflow="main") == 1
    assert value(metrics, "kubestep_runs_finished_total", workflow="main", phase="Succeeded") == 1
    assert value(metrics, "kubestep_step_attempts_total", workflow="main", **{"class": "Error"}) == 1
    assert value(metrics, "kubestep_step_attempts_total", workflow="main", **{"class": "Succeeded"}) == 2
    assert value(metrics, "kubestep_step_duration_seconds_count", workflow="main") == 3
    # Every execution was started when due: the retry after its backoff, the others at once.
    assert value(metrics, "kubestep_step_queue_seconds_count", workflow="main") >= 3
    assert value(metrics, "kubestep_step_queue_seconds_sum", workflow="main") == 0
    assert value(metrics, "kubestep_runs_active", phase="Running") == 0


def test_an_active_run_is_shown_by_phase_until_it_ends_or_goes() -> None:
    metrics = Metrics()
    sim = Sim(make_run())
    metrics.run_saved(make_run(), sim.status, sim.now)
    assert value(metrics, "kubestep_runs_active", phase="Running") == 1
    assert value(metrics, "kubestep_runs_active", phase="Sleeping") == 0
    metrics.run_gone("", "main-run")
    assert value(metrics, "kubestep_runs_active", phase="Running") == 0


def test_a_pass_that_loses_its_save_counts_nothing_and_the_next_one_counts_once() -> None:
    world = World()
    job = a_running_run(world)
    errors = ("kubestep_step_attempts_total", {"workflow": "contacts", "class": "Error"})
    before = METRICS.registry.get_sample_value(*errors) or 0.0
    failed = report(
        ReportKind.STEP_FAILED,
        "enrich",
        error={"type": "ConnectionError", "message": "down", "retriable": True},
    )
    world.kube.end_job(NS, job, failed, exit_code=1)
    world.kube.fail("replace_status", Conflict("the object has been modified", 409))
    world.reconcile()
    assert (METRICS.registry.get_sample_value(*errors) or 0.0) == before
    world.reconcile()
    world.reconcile()
    assert (METRICS.registry.get_sample_value(*errors) or 0.0) == before + 1


def test_reconciles_and_api_requests_are_counted_by_kind_and_verb() -> None:
    world = World()
    a_run(world)
    passes = METRICS.registry.get_sample_value("kubestep_reconcile_duration_seconds_count", {"kind": "run"})
    sample = ("kubestep_api_requests_total", {"verb": "get", "result": "ok"})
    gets = METRICS.registry.get_sample_value(*sample)
    world.reconcile()
    after = METRICS.registry.get_sample_value("kubestep_reconcile_duration_seconds_count", {"kind": "run"})
    assert after == (passes or 0.0) + 1
    # The fake API module sends nothing: only the real one counts its requests.
    assert METRICS.registry.get_sample_value(*sample) == gets


@pytest.mark.parametrize(
    ("call", "verb"),
    [
        ("read_namespaced_job", "get"),
        ("list_namespaced_pod", "list"),
        ("create_namespaced_event", "create"),
        ("patch_namespaced_event", "patch"),
        ("replace_namespaced_custom_object_status", "update"),
        ("delete_namespaced_secret", "delete"),
        ("get_namespaced_custom_object", "get"),
    ],
)
def test_verbs_of_client_calls(call: str, verb: str) -> None:
    assert verb_of(call) == verb


def test_the_work_queue_depth_is_read_at_each_scrape() -> None:
    metrics = Metrics()

    async def fill() -> None:
        queue = WorkQueue()
        metrics.track_queue(lambda: queue.depth)
        for name in ("a", "b", "a"):
            queue.add(name)
        assert value(metrics, "kubestep_workqueue_depth") == 2

    asyncio.run(fill())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_server_answers_metrics_health_and_readiness() -> None:
    metrics = Metrics()
    metrics.runs_started.labels("contacts").inc()
    ready = {"yes": False}
    port = _free_port()

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    async def scenario() -> None:
        server = Server(metrics, ready=lambda: ready["yes"], health=lambda: {"leader": {"leading": True}})
        await server.start("127.0.0.1", port)
        try:
            loop = asyncio.get_running_loop()
            status, body = await loop.run_in_executor(None, get, "/metrics")
            assert status == 200
            assert 'kubestep_runs_started_total{workflow="contacts"} 1.0' in body
            assert "# HELP kubestep_step_attempts_total" in body
            assert await loop.run_in_executor(None, get, "/readyz") == (503, "starting\n")
            ready["yes"] = True
            assert await loop.run_in_executor(None, get, "/readyz") == (200, "ok\n")
            status, body = await loop.run_in_executor(None, get, "/healthz")
            assert (status, body) == (200, '{"ok": true, "leader": {"leading": true}}')
        finally:
            await server.stop()

    asyncio.run(scenario())
