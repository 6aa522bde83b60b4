"""Seeing what a run does, as a user of the cluster: `kubectl get ksr` while it runs, `kubectl describe ksr`
after, the step pods by label, and the operator's metrics over HTTP — for the contacts example with one
failed enrichment attempt."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow
from kubecp.cluster import ControlPlane

WORKFLOW = "process-contacts-csv-upload"
ENRICH = "enrich-address-information"
STEPS = [
    "validate-upload-contents",
    ENRICH,
    "create-contacts-in-crm",
    "notify-user-of-successful-import",
    "announce-import-completed",
]
#: What `kubectl describe ksr` lists for the run, in order: every transition once.
TRANSITIONS = [
    ("Normal", "RunStarted", "run started by event 'api/contact_list.uploaded'"),
    ("Normal", "StepStarted", "step 'validate-upload-contents' attempt 1 started (execution "),
    ("Normal", "StepSucceeded", "step 'validate-upload-contents' succeeded (attempt 1, "),
    ("Normal", "StepStarted", f"step '{ENRICH}' attempt 1 started"),
    ("Warning", "AttemptFailed", f"step '{ENRICH}' attempt 1 failed (Error) EnrichmentUnavailableError: "),
    ("Normal", "RetryScheduled", f"step '{ENRICH}' attempt 2 at "),
    ("Normal", "StepStarted", f"step '{ENRICH}' attempt 2 started"),
    ("Normal", "StepSucceeded", f"step '{ENRICH}' succeeded (attempt 2, "),
    ("Normal", "StepStarted", "step 'create-contacts-in-crm' attempt 1 started"),
    ("Normal", "StepSucceeded", "step 'create-contacts-in-crm' succeeded (attempt 1, "),
    ("Normal", "StepStarted", "step 'notify-user-of-successful-import' attempt 1 started"),
    ("Normal", "StepSucceeded", "step 'notify-user-of-successful-import' succeeded (attempt 1, "),
    ("Normal", "StepSucceeded", "step 'announce-import-completed' succeeded (send_event)"),
    ("Normal", "RunSucceeded", "run succeeded"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def watched(kubestep_crds: ControlPlane, restricted: str, tmp_path: Path) -> Iterator[tuple[Operator, str]]:
    """An operator serving its metrics on a free loopback port, and that port's base URL."""
    port = _free_port()
    args = ["--metrics-port", str(port), "--metrics-address", "127.0.0.1"]
    op = Operator(kubestep_crds, restricted, tmp_path / "operator.log", args=args)
    op.start()
    yield op, f"http://127.0.0.1:{port}"
    op.stop()


class Sampler:
    """`kubectl get ksr` every moment until stopped: the rows a user watching would have seen."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.rows: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _sample(self) -> None:
        while not self._stop.is_set():
            out = self.cluster.kubectl("get", "ksr", check=False).stdout
            lines = out.splitlines()
            if len(lines) >= 2:
                starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
                header = lines[0].split()
                for line in lines[1:]:
                    cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
                    self.rows.append(dict(zip(header, cells, strict=True)))
            self._stop.wait(0.2)


def _events(describe: str) -> list[tuple[str, str, str]]:
    """The (type, reason, message) lines of `kubectl describe`'s Events section, in its order."""
    section = describe[describe.index("\nEvents:") :].splitlines()[3:]
    found = []
    for line in section:
        match = re.match(r"^\s+(Normal|Warning)\s+(\S+)\s+.+?\s+kubestep-operator\s+(.*)$", line)
        if match:
            found.append((match.group(1), match.group(2), match.group(3)))
    return found


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return int(answer.status)


def test_a_run_with_a_failed_attempt_is_visible_while_it_runs_and_after(
    watched: tuple[Operator, str], cluster: Cluster, tmp_path: Path
) -> None:
    operator, url = watched
    cluster.apply(contacts_workflow(tmp_path, enrich_failures=1))
    with Sampler(cluster) as sampler:
        cluster.apply(contacts_event())
        run = cluster.wait_run()
    name = run["metadata"]["name"]
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert [s["id"] for s in run["status"]["steps"]] == STEPS

    # `kubectl get ksr` showed the step running and its attempt while it ran, in the order they ran, and
    # progress as steps done: never a total that looks complete.
    rows = [r for r in sampler.rows if r.get("NAME") == name]
    shown = [(r["STEP"], r["ATTEMPT"]) for r in rows if r["PHASE"] == "Running"]
    assert (ENRICH, "1") in shown or (ENRICH, "2") in shown, rows
    order = [s for s, _ in shown if s in STEPS]
    assert order == sorted(order, key=STEPS.index), order
    assert all("/" not in r["PROGRESS"] for r in rows), rows
    assert rows[-1]["PHASE"] == "Succeeded" and rows[-1]["PROGRESS"] == "5 done", rows[-1]

    # `kubectl describe ksr` reads as the run's history: every transition once, in order, one Event per
    # operator pass (a step's end and the next one's start, an attempt's failure and its retry, ...).
    describe = cluster.kubectl("describe", "ksr", name).stdout
    print(describe)
    events = _events(describe)
    told = [(kind, reason, part) for kind, reason, message in events for part in message.split("; ")]
    assert len(told) == len(TRANSITIONS) and len(events) < len(TRANSITIONS), describe
    for (kind, _, part), (want_kind, _, want_start) in zip(told, TRANSITIONS, strict=True):
        assert part.startswith(want_start), (part, want_start, describe)
        # An Event is a Warning if it tells of one, and is named by one of the transitions it tells.
        assert want_kind == "Normal" or kind == "Warning", describe
    for kind, reason, message in events:
        parts = [t for t in TRANSITIONS if any(p.startswith(t[2]) for p in message.split("; "))]
        assert reason in {r for _, r, _ in parts}, (reason, message)
        assert kind == ("Warning" if any(k == "Warning" for k, _, _ in parts) else "Normal"), message

    # The step's pods carry its name as a label: the failed attempt's and its retry's.
    pods = cluster.kubectl("get", "pods", "-l", f"kubestep.dev/step={ENRICH}", "-o", "name").stdout.split()
    assert len(pods) == 2, pods
    phases = cluster.kubectl(
        "get", "pods", "-l", f"kubestep.dev/step={ENRICH}", "-o", "jsonpath={.items[*].status.phase}"
    ).stdout.split()
    assert sorted(phases) == ["Failed", "Succeeded"], phases

    # The metrics count the run's attempts by class, and its start and end.
    metrics = _scrape(url)

    def sample(metric: str, **labels: str) -> float:
        return metrics.get((metric, tuple(sorted(labels.items()))), 0.0)

    attempts = "kubestep_step_attempts_total"
    assert sample(attempts, workflow=WORKFLOW, **{"class": "Error"}) == 1
    assert sample(attempts, workflow=WORKFLOW, **{"class": "Succeeded"}) == 4
    assert sample("kubestep_runs_started_total", workflow=WORKFLOW) == 1
    assert sample("kubestep_runs_finished_total", workflow=WORKFLOW, phase="Succeeded") == 1
    assert sample("kubestep_step_duration_seconds_count", workflow=WORKFLOW) == 5
    assert sample("kubestep_runs_active", phase="Running") == 0
    assert sample("kubestep_reconcile_duration_seconds_count", kind="run") >= 5
    assert sample("kubestep_api_requests_total", verb="create", result="ok") >= 4
    assert ("kubestep_workqueue_depth", ()) in metrics, sorted(metrics)[:20]
    assert _status(f"{url}/healthz") == 200
    assert _status(f"{url}/readyz") == 200
    assert_clean_log(operator)
