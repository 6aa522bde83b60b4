"""End to end: the operator as a process, the CRDs and kubectl, on the real control plane.

Every test gets a fresh namespace that enforces the ``restricted`` Pod Security profile and its own
operator process watching only that namespace, so a test can kill and restart "its" operator.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from kubecp.cluster import ControlPlane
from kubecp.testing import wait_for

ROOT = Path(__file__).resolve().parents[2]
CONTACTS = ROOT / "examples" / "contacts"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this directory's tests ``controlplane`` (``make test-unit`` deselects them)."""
    here = str(config.rootpath / "tests" / "e2e")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.controlplane)


@pytest.fixture
def restricted(control_plane: ControlPlane, namespace: str) -> str:
    """A fresh namespace enforcing the ``restricted`` Pod Security profile."""
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


class Operator:
    """``kubestep operator -n NAMESPACE [ARGS]`` as a child process, with its log in a file."""

    def __init__(
        self,
        control_plane: ControlPlane,
        namespace: str,
        log: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.namespace = namespace
        self.log_path = log
        self.args = list(args)
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start the operator (again)."""
        assert self.process is None or self.process.poll() is not None, "the operator is already running"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.control_plane.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- operator start #{self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubestep.cli.main",
                    "operator",
                    "--namespace",
                    self.namespace,
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye — a crash."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def send(self, signum: signal.Signals) -> None:
        """Send ``signum`` (SIGSTOP, SIGCONT, ...) to the operator's process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """SIGTERM and wait (a stopped process is continued first, or it could not exit)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        os.killpg(self.process.pid, signal.SIGCONT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace")

    def log_since_start(self) -> str:
        """What the operator printed since it was last started."""
        return self.log().rpartition(f"--- operator start #{self.starts}\n")[2]


@pytest.fixture
def operator(kubestep_crds: ControlPlane, restricted: str, tmp_path: Path) -> Iterator[Operator]:
    """A started operator for the test's namespace; stopped after the test (its log shown on failure)."""
    op = Operator(kubestep_crds, restricted, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


class Cluster:
    """kubectl in the test's namespace, with helpers for kubestep objects."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.cp = control_plane
        self.namespace = namespace

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl in the namespace."""
        return self.cp.kubectl("-n", self.namespace, *args, input=input, check=check)

    def apply(self, *manifests: dict[str, Any]) -> None:
        """``kubectl apply`` the manifests (as JSON: YAML 1.1 would read a key such as `n` as false)."""
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
        )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """One object as JSON."""
        return yaml.safe_load(self.kubectl("get", kind, name, "-o", "json").stdout)

    def items(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        """All objects of a kind (optionally with a label selector)."""
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return list(yaml.safe_load(self.kubectl(*args).stdout)["items"])

    def runs(self) -> list[dict[str, Any]]:
        """Every WorkflowRun in the namespace."""
        return self.items("workflowruns.kubestep.dev")

    def wait_run(
        self, timeout: float = 120.0, phases: tuple[str, ...] = ("Succeeded", "Failed", "Cancelled")
    ) -> dict[str, Any]:
        """The namespace's only run, once it reached one of ``phases``."""

        def finished() -> dict[str, Any] | None:
            runs = self.runs()
            assert len(runs) <= 1, f"more than one run: {[r['metadata']['name'] for r in runs]}"
            if runs and runs[0].get("status", {}).get("phase") in phases:
                return runs[0]
            return None

        return wait_for(finished, timeout=timeout, interval=0.5, what=f"a run in phase {phases}")


@pytest.fixture
def cluster(kubestep_crds: ControlPlane, restricted: str) -> Cluster:
    """kubectl in the test's restricted namespace."""
    return Cluster(kubestep_crds, restricted)


def contacts_workflow(data_dir: Path, enrich_failures: int = 0, **spec: Any) -> dict[str, Any]:
    """The example's Workflow, with the CRM/outbox in ``data_dir`` and a flaky enrichment service."""
    manifest = yaml.safe_load((CONTACTS / "workflow.yaml").read_text())
    env = [{"name": "CONTACTS_DATA_DIR", "value": str(data_dir)}]
    if enrich_failures:
        env.append({"name": "CONTACTS_ENRICH_FAILURES", "value": str(enrich_failures)})
    manifest["spec"]["podTemplate"] = {"env": env}
    manifest["spec"].update(spec)
    return manifest


def contacts_event(name: str = "contact-list-uploaded-1", **spec: Any) -> dict[str, Any]:
    """The example's Event (optionally renamed or changed)."""
    manifest = yaml.safe_load((CONTACTS / "event.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"].update(spec)
    return manifest


def step(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    """One step's status."""
    for candidate in run["status"]["steps"]:
        if candidate["id"] == step_id:
            return dict(candidate)
    raise AssertionError(f"no step {step_id!r} in {[s['id'] for s in run['status']['steps']]}")


def assert_clean_log(op: Operator) -> None:
    """The operator is alive and printed no traceback of its own (a step's, quoted in a note, is on the
    note's line)."""
    text = op.log()
    assert not re.search(r"(?m)^Traceback", text), text[-4000:]
    assert op.alive, text[-4000:]


def pause(seconds: float) -> None:
    """Let time pass (a test waiting for a real-time backoff)."""
    time.sleep(seconds)


# Recording every Job -------------------------------------------------------------------------------------


@dataclass
class JobRecorder:
    """A watch on the namespace's Jobs, recording every Job ever seen (by uid) until stopped."""

    batch: client.BatchV1Api
    namespace: str
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        version = ""
        while not self._stop.is_set():
            watcher = watch.Watch()
            try:
                for change in watcher.stream(
                    self.batch.list_namespaced_job,
                    self.namespace,
                    resource_version=version,
                    timeout_seconds=5,
                ):
                    job = self.batch.api_client.sanitize_for_serialization(change["object"])
                    self.jobs.setdefault(job["metadata"]["uid"], job)
                    version = job["metadata"]["resourceVersion"]
                    if self._stop.is_set():
                        break
            except Exception as exc:  # the test fails on it, with the reason
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def names(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.jobs.values()]


def assert_no_attempt_has_two_jobs(recorder: JobRecorder, cluster: Cluster) -> None:
    """No Job name was ever created twice, and no (run, step, attempt) has two Jobs."""
    assert not recorder.errors, recorder.errors
    listed = {j["metadata"]["uid"] for j in cluster.items("jobs")}
    assert listed <= set(recorder.jobs), "the watch missed Jobs"
    names = recorder.names()
    assert len(names) == len(set(names)), f"a Job name was created twice: {sorted(names)}"
    attempts = []
    for job in recorder.jobs.values():
        annotations = job["metadata"].get("annotations") or {}
        labels = job["metadata"].get("labels") or {}
        if "kubestep.dev/step" in annotations:
            key = (labels.get("kubestep.dev/run"), annotations["kubestep.dev/step"])
            attempts.append((*key, annotations.get("kubestep.dev/attempt")))
    assert len(attempts) == len(set(attempts)), f"an attempt has two Jobs: {sorted(attempts)}"
