"""Failure modes through the operator, on the real control plane: what a user notices when things go wrong.

Retries with the workflow's backoff, pods the cluster takes away, duplicate events, unusable workflows and
functions, events nobody listens to, cancellation, sleeps and waits that hold no pod, and invoked child
runs. The workflows of these tests live in ``tests/e2e/flows/failure_flows.py``.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow, step
from kubecp.testing import wait_for

FLOWS = "failure_flows"
#: Scheduling slack allowed on top of a backoff delay (the operator's queue, the API server, kubectl).
SLACK_SECONDS = 3.0


# Helpers -----------------------------------------------------------------------------------------------


def flow_workflow(name: str, function: str, event: str, **spec: Any) -> dict[str, Any]:
    """A Workflow running ``failure_flows.<function>`` (or ``function`` if it has a colon) on ``event``."""
    manifest: dict[str, Any] = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "triggers": [{"event": event}],
            "image": "ghcr.io/example/failure-flows:test",
            "function": function if ":" in function else f"{FLOWS}:{function}",
            "retries": {"limit": 2, "backoff": {"initial": "1s", "factor": 2, "max": "10s", "jitter": "0s"}},
        },
    }
    manifest["spec"].update(spec)
    return manifest


def event(name: str, event_name: str, data: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """An Event object named ``name`` carrying event ``event_name``."""
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"name": name},
        "spec": {"name": event_name, "data": data or {}, **spec},
    }


def when(stamp: str) -> datetime:
    """An RFC 3339 time of a status."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The condition ``kind`` of an object's status, if set."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def run_pods(cluster: Cluster, run: str) -> list[dict[str, Any]]:
    """Every pod of a run's Jobs."""
    return cluster.items("pods", f"kubestep.dev/run={run}")


def running_pods(cluster: Cluster, run: str) -> list[str]:
    """Names of the run's pods that are not finished (Pending or Running)."""
    return [
        p["metadata"]["name"]
        for p in run_pods(cluster, run)
        if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    ]


def run_jobs(cluster: Cluster, run: str) -> list[dict[str, Any]]:
    """Every Job of a run."""
    return cluster.items("jobs", f"kubestep.dev/run={run}")


def the_run(cluster: Cluster, timeout: float = 60.0) -> dict[str, Any]:
    """The namespace's only run, once it exists."""

    def created() -> dict[str, Any] | None:
        runs = cluster.runs()
        assert len(runs) <= 1, f"more than one run: {[r['metadata']['name'] for r in runs]}"
        return runs[0] if runs else None

    return wait_for(created, timeout=timeout, interval=0.2, what="a run to be created")


def start_slow_step(cluster: Cluster, marker: Path, seconds: float) -> str:
    """Start ``slow_flow`` with a step of ``seconds``; return the run's name once the step is running."""
    cluster.apply(flow_workflow("slow-flow", "slow_flow", "test/slow.requested"))
    cluster.apply(event("slow-1", "test/slow.requested", {"marker": str(marker), "seconds": seconds}))
    name = str(the_run(cluster)["metadata"]["name"])
    wait_for(marker.exists, timeout=60, interval=0.1, what="the slow step to start")
    return name


def running_step_pods(cluster: Cluster, run: str) -> list[dict[str, Any]]:
    """The run's pods in phase Running, once there is one."""
    return wait_for(
        lambda: [p for p in run_pods(cluster, run) if p.get("status", {}).get("phase") == "Running"],
        timeout=10,
        interval=0.1,
        what="the slow step's pod to be Running",
    )


def wait_phase(
    cluster: Cluster, name: str, phases: tuple[str, ...], timeout: float = 60.0, interval: float = 0.2
) -> dict[str, Any]:
    """The run ``name`` once its phase is one of ``phases``; fail early if it ends in another phase."""

    def reached() -> dict[str, Any] | None:
        run = cluster.get("workflowruns.kubestep.dev", name)
        phase = (run.get("status") or {}).get("phase")
        if phase in phases:
            return run
        if phase in ("Succeeded", "Failed", "Cancelled"):
            raise AssertionError(f"run {name} ended {phase}, expected {phases}: {run['status']}")
        return None

    try:
        return wait_for(reached, timeout=timeout, interval=interval, what=f"run {name} in phase {phases}")
    except TimeoutError as exc:
        if isinstance(exc.__cause__, AssertionError):
            raise exc.__cause__ from None
        raise


def logs_of(cluster: Cluster, pods: list[dict[str, Any]]) -> dict[str, str]:
    """What each pod's step container printed."""
    return {
        p["metadata"]["name"]: cluster.kubectl("logs", p["metadata"]["name"], "-c", "step").stdout
        for p in pods
    }


def processed(cluster: Cluster, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """The Event ``name`` once its ``Processed`` condition is set."""

    def done() -> dict[str, Any] | None:
        obj = cluster.get("events.kubestep.dev", name)
        return obj if condition(obj, "Processed") else None

    return wait_for(done, timeout=timeout, interval=0.2, what=f"event {name} to be processed")


# 1. Retries with the workflow's backoff ------------------------------------------------------------------


def test_flaky_enrichment_is_retried_alone_with_the_workflow_backoff(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(contacts_workflow(tmp_path, enrich_failures=2))
    cluster.apply(contacts_event())

    run = cluster.wait_run()
    name = run["metadata"]["name"]

    assert run["status"]["phase"] == "Succeeded", run["status"]
    enrich = step(run, "enrich-address-information")
    attempts = enrich["attempts"]
    assert [a["result"] for a in attempts] == ["Error", "Error", "Succeeded"], attempts
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert enrich["attemptCount"] == 3
    assert enrich["failures"] == 2
    assert enrich["disruptions"] == 0
    assert all(a["reason"] == "EnrichmentUnavailableError" for a in attempts[:2]), attempts
    assert "HTTP 503" in attempts[0]["message"]
    assert len({a["job"] for a in attempts}) == 3, "every attempt ran in its own Job"

    # examples/contacts/workflow.yaml: initial 1s, factor 2, jitter up to 500ms.
    policy = [(1.0, 1.5), (2.0, 2.5)]
    for (low, high), before, after in zip(policy, attempts, attempts[1:], strict=False):
        gap = (when(after["startedAt"]) - when(before["finishedAt"])).total_seconds()
        assert low <= before["retryDelaySeconds"] <= high, before
        assert gap >= before["retryDelaySeconds"], (
            f"attempt {after['number']} started {gap:.3f}s after attempt {before['number']} ended, "
            f"before its backoff of {before['retryDelaySeconds']}s"
        )
        assert low <= gap <= high + SLACK_SECONDS, (
            f"attempt {after['number']} started {gap:.3f}s after attempt {before['number']} ended; "
            f"the policy asks for {low}-{high}s"
        )

    # Validation is not repeated when a later step fails.
    validate = step(run, "validate-upload-contents")
    assert validate["attemptCount"] == 1
    assert [a["result"] for a in validate["attempts"]] == ["Succeeded"]
    jobs = run_jobs(cluster, name)
    job_names = {j["metadata"]["name"] for j in jobs}
    validation_jobs = {
        j["metadata"]["name"]
        for j in jobs
        if j["metadata"].get("annotations", {}).get("kubestep.dev/step") == "validate-upload-contents"
    } | {validate["attempts"][0]["job"]}
    assert len(validation_jobs) == 1 and validation_jobs <= job_names, (validation_jobs, job_names)

    # What the pods printed: the CSV was read once; the address service was called three times.
    logs = logs_of(cluster, run_pods(cluster, name))
    readers = [pod for pod, text in logs.items() if "reading uploads/contacts.csv" in text]
    assert len(readers) == 1, logs
    calls = sorted(
        line for text in logs.values() for line in text.splitlines() if "address service call" in line
    )
    assert [call.split(":")[0] for call in calls] == [
        f"address service call (attempt {n})" for n in (1, 2, 3)
    ], calls

    # Each contact is in the CRM once.
    with sqlite3.connect(tmp_path / "crm.sqlite3") as db:
        total, distinct = db.execute("select count(*), count(distinct email) from contacts").fetchone()
    assert (total, distinct) == (5, 5)
    assert step(run, "create-contacts-in-crm")["attemptCount"] == 1
    assert_clean_log(operator)


# 2. A pod deleted while it runs --------------------------------------------------------------------------


def test_step_pod_deleted_while_running_is_retried_as_a_disruption(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "slow.marker"
    name = start_slow_step(cluster, marker, 5)
    victims = [p["metadata"]["name"] for p in running_step_pods(cluster, name)]
    assert len(victims) == 1, victims
    cluster.kubectl("delete", "pod", victims[0], "--wait=false")

    run = cluster.wait_run(timeout=90)

    status = run["status"]
    assert status["phase"] == "Succeeded", status
    slow = step(run, "slow-step")
    results = [(a["job"], a["result"], a.get("reason")) for a in slow["attempts"]]
    assert [r for _, r, _ in results] == ["Disruption", "Succeeded"], (
        f"the deleted pod is not recorded as the step's disrupted attempt: attempts {results}, "
        f"disruptions {slow['disruptions']}; operator log:\n{operator.log()[-3000:]}"
    )
    assert slow["disruptions"] == 1
    assert slow["failures"] == 0
    assert slow["attemptCount"] == 2
    assert slow["attempts"][0].get("retryDelaySeconds", 0) == 0, "a disruption is retried at once"
    assert slow["attempts"][0]["job"] != slow["attempts"][1]["job"]
    # The first attempt was interrupted: it started but never finished; the second one did both.
    lines = marker.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["started", "started", "finished"], lines
    assert status["output"]["slow"]["slept"] == 5
    assert_clean_log(operator)


# 3. Duplicate events ------------------------------------------------------------------------------------


def test_twenty_events_with_one_id_start_one_run(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("quick-flow", "quick_flow", "test/quick.requested"))
    names = [f"quick-{i:02d}" for i in range(20)]
    cluster.apply(*(event(n, "test/quick.requested", {"number": 21}, id="order-0001") for n in names))

    events = {n: processed(cluster, n) for n in names}

    starters = [n for n, e in events.items() if e["status"].get("started")]
    assert len(starters) == 1, {n: condition(e, "Processed") for n, e in events.items()}
    first = starters[0]
    run = cluster.wait_run(timeout=60)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert run["status"]["output"] == {"doubled": 42}
    assert events[first]["status"]["started"] == [{"workflow": "quick-flow", "run": run["metadata"]["name"]}]
    assert condition(events[first], "Processed")["reason"] == "RunsStarted"
    for n in names:
        if n == first:
            continue
        cond = condition(events[n], "Processed")
        assert cond is not None and cond["status"] == "True", (n, cond)
        assert cond["reason"] == "Duplicate", (n, cond)
        assert f"event {first} " in cond["message"], (n, first, cond["message"])
        assert run["metadata"]["name"] in cond["message"], (n, cond["message"])
        assert not events[n]["status"].get("started"), (n, events[n]["status"])
    assert len(cluster.runs()) == 1
    assert_clean_log(operator)


# 4. A trigger whose CEL does not compile ----------------------------------------------------------------


def test_workflow_with_uncompilable_trigger_is_not_ready(operator: Operator, cluster: Cluster) -> None:
    manifest = flow_workflow("quick-flow", "quick_flow", "test/quick.requested")
    manifest["spec"]["triggers"] = [
        {"event": "test/quick.requested", "if": "event.data.filename.endsWith("},
    ]
    cluster.apply(manifest)

    ready = wait_for(
        lambda: condition(cluster.get("workflows.kubestep.dev", "quick-flow"), "Ready"),
        timeout=30,
        interval=0.2,
        what="the workflow's Ready condition",
    )
    assert ready["status"] == "False", ready
    assert ready["reason"] == "InvalidExpression", ready
    assert "spec.triggers[0].if" in ready["message"], ready

    # An event on that trigger starts nothing, and its status says why.
    cluster.apply(event("quick-1", "test/quick.requested", {"filename": "a.csv"}))
    cond = condition(processed(cluster, "quick-1"), "Processed")
    assert cond is not None and cond["reason"] == "ExpressionFailed", cond
    assert "quick-flow" in cond["message"], cond
    assert cluster.runs() == []
    assert_clean_log(operator)


# 5. A function that cannot be imported -------------------------------------------------------------------


def test_run_whose_function_cannot_be_imported_fails_at_once(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("broken-flow", "no_such_module:process", "test/broken.requested"))
    cluster.apply(event("broken-1", "test/broken.requested"))

    run = cluster.wait_run(timeout=60)

    status = run["status"]
    assert status["phase"] == "Failed", status
    error = status["error"]
    assert error["type"] == "ModuleNotFoundError", error
    assert "no_such_module" in error["message"], error
    assert status.get("steps", []) == [], "no step was reached"
    assert (when(status["finishedAt"]) - when(status["startedAt"])).total_seconds() < 30, status
    assert condition(run, "Succeeded")["status"] == "False"
    # Not retried: one Job in all, and none comes later.
    name = run["metadata"]["name"]
    assert len(run_jobs(cluster, name)) == 1
    time.sleep(2)
    assert len(run_jobs(cluster, name)) == 1
    assert_clean_log(operator)


# 6. An event nobody listens to ---------------------------------------------------------------------------


def test_event_matching_no_trigger_says_so(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("quick-flow", "quick_flow", "test/quick.requested"))
    cluster.apply(event("orphan-1", "test/nobody.listens", {"number": 1}))

    cond = condition(processed(cluster, "orphan-1"), "Processed")

    assert cond is not None and cond["status"] == "True", cond
    assert cond["reason"] == "NoTriggerMatched", cond
    assert "test/nobody.listens" in cond["message"], cond
    assert cluster.runs() == []
    assert_clean_log(operator)


# 8. Cancellation -----------------------------------------------------------------------------------------


def test_cancelling_a_running_run_deletes_its_job(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "slow.marker"
    name = start_slow_step(cluster, marker, 120)
    running = wait_for(
        lambda: [
            j["metadata"]["name"]
            for j in run_jobs(cluster, name)
            if not j.get("status", {}).get("conditions")
        ],
        timeout=10,
        interval=0.1,
        what="the slow step's Job",
    )
    assert len(running) == 1, running
    active = cluster.get("workflowruns.kubestep.dev", name)["status"].get("active", [])
    assert [a["name"] for a in active] == running, active
    cluster.kubectl(
        "patch", "workflowruns.kubestep.dev", name, "--type", "merge", "-p", '{"spec":{"cancel":true}}'
    )

    run = cluster.wait_run(timeout=30)

    status = run["status"]
    assert status["phase"] == "Cancelled", status
    assert condition(run, "Succeeded")["status"] == "False"
    assert status.get("active", []) == []
    assert "finishedAt" in status
    # The running Job is deleted, and with it its pod: the step's process is stopped.
    wait_for(
        lambda: run_jobs(cluster, name) == [],
        timeout=30,
        interval=0.2,
        what=f"Job {running[0]} to be deleted",
    )
    wait_for(lambda: run_pods(cluster, name) == [], timeout=30, interval=0.2, what="the step's pod to go")
    time.sleep(1)
    assert run_jobs(cluster, name) == [], "a Job was started after the run was cancelled"
    assert "finished" not in marker.read_text(), "the cancelled step ran to its end"
    assert cluster.get("workflowruns.kubestep.dev", name)["status"]["phase"] == "Cancelled"
    assert_clean_log(operator)


# 9. Sleeping and waiting hold no pod ----------------------------------------------------------------------


def test_sleep_holds_no_pod_and_the_run_completes(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("nap-flow", "nap_flow", "test/nap.requested"))
    cluster.apply(event("nap-1", "test/nap.requested", {"nap": "3s"}))

    name = the_run(cluster)["metadata"]["name"]
    sleeping = wait_phase(cluster, name, ("Sleeping",), interval=0.1)
    nap = step(sleeping, "nap")
    assert nap["type"] == "sleep" and nap["phase"] == "Sleeping", nap
    wake_at = when(nap["wakeAt"])
    assert sleeping["status"].get("active", []) == []
    # While the run sleeps (until a moment before it wakes), none of its pods runs.
    samples = 0
    while (wake_at - datetime.now(wake_at.tzinfo)).total_seconds() > 0.5:
        busy = running_pods(cluster, name)
        assert busy == [], f"pods running while the run sleeps: {busy}"
        samples += 1
        time.sleep(0.2)
    assert samples >= 1, "the run woke before the test could look at it"

    run = wait_phase(cluster, name, ("Succeeded",), timeout=60)

    output = run["status"]["output"]
    assert output["after"] - output["before"] >= 3.0, output
    after = step(run, "after")
    assert when(after["startedAt"]) >= wake_at, (after, nap)
    assert step(run, "nap")["phase"] == "Succeeded"
    assert_clean_log(operator)


def test_wait_for_event_holds_no_pod_and_resumes_with_the_event(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(flow_workflow("approval-flow", "approval_flow", "test/approval.requested"))
    cluster.apply(event("request-1", "test/approval.requested", {"request": "r-1"}))

    name = the_run(cluster)["metadata"]["name"]
    waiting = wait_phase(cluster, name, ("Waiting",))
    approval = step(waiting, "approval")
    assert approval["type"] == "wait_for_event" and approval["phase"] == "Waiting", approval
    assert approval["wait"]["event"] == "app/approved"
    assert waiting["status"].get("active", []) == []
    assert running_pods(cluster, name) == []
    # An approval of another request does not match the wait's `if`.
    cluster.apply(event("approved-other", "app/approved", {"request": "r-2"}, user={"id": "bob"}))
    processed(cluster, "approved-other")
    time.sleep(1)
    still = cluster.get("workflowruns.kubestep.dev", name)
    assert still["status"]["phase"] == "Waiting", still["status"]
    assert running_pods(cluster, name) == []

    cluster.apply(event("approved-1", "app/approved", {"request": "r-1"}, user={"id": "alice"}))
    run = wait_phase(cluster, name, ("Succeeded",), timeout=60)

    # An Event without spec.id reaches the wait with its object's uid as its id.
    uid = cluster.get("events.kubestep.dev", "approved-1")["metadata"]["uid"]
    assert run["status"]["output"] == {
        "approved": True,
        "approval": {"name": "app/approved", "data": {"request": "r-1"}, "user": {"id": "alice"}, "id": uid},
    }, run["status"]["output"]
    assert step(run, "approval")["wait"].get("matched") == "approved-1"
    resumed = wait_for(
        lambda: cluster.get("events.kubestep.dev", "approved-1").get("status", {}).get("resumed"),
        timeout=30,
        interval=0.2,
        what="the approval Event to list the run it resumed",
    )
    assert resumed == [{"workflow": "approval-flow", "run": name}]
    assert not cluster.get("events.kubestep.dev", "approved-other").get("status", {}).get("resumed")
    assert_clean_log(operator)


# 10. Invoking another workflow ---------------------------------------------------------------------------


def test_invoke_resumes_the_parent_with_the_child_output(operator: Operator, cluster: Cluster) -> None:
    cluster.apply(
        flow_workflow("child-flow", "child_flow", "test/child.requested"),
        flow_workflow("parent-flow", "parent_flow", "test/parent.requested"),
    )
    cluster.apply(event("parent-1", "test/parent.requested", {"number": 21}))

    parent_name = wait_for(
        lambda: cluster.get("events.kubestep.dev", "parent-1").get("status", {}).get("started"),
        timeout=30,
        interval=0.2,
        what="the parent run to start",
    )[0]["run"]
    parent = wait_phase(cluster, parent_name, ("Succeeded",), timeout=90)

    invoke = step(parent, "call-child")
    assert invoke["type"] == "invoke" and invoke["phase"] == "Succeeded", invoke
    child_name = invoke["invoke"]["run"]
    child = cluster.get("workflowruns.kubestep.dev", child_name)
    assert child["status"]["phase"] == "Succeeded", child["status"]
    assert child["spec"]["parent"] == {"run": parent_name, "step": "call-child"}
    assert child["spec"]["workflowRef"]["name"] == "child-flow"
    expected = {"doubled": 42, "from": "kubestep/function.invoked"}
    assert child["status"]["output"] == expected
    assert invoke["output"] == expected
    assert parent["status"]["output"] == {"child": expected}
    assert len(cluster.runs()) == 2
    assert_clean_log(operator)
