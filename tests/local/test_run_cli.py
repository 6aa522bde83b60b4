"""`kubestep run`: whole runs on this machine, each step attempt a real runner process."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "contacts"
KUBESTEP = [sys.executable, "-m", "kubestep.cli.main"]


def kubestep(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    return subprocess.run(
        [*KUBESTEP, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def as_record(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout, f"no JSON record; stderr:\n{proc.stderr}"
    return dict(json.loads(proc.stdout))


def steps_of(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in record["steps"]}


@pytest.fixture
def contacts(tmp_path: Path) -> Path:
    """A copy of the example, so that its CRM and outbox start empty."""
    target = tmp_path / "contacts"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".demo", ".kubestep", "__pycache__"))
    return target


def crm_rows(example: Path) -> list[tuple[str, ...]]:
    db = example / ".demo" / "crm.sqlite3"
    if not db.exists():
        return []
    return list(sqlite3.connect(db).execute("SELECT owner, email FROM contacts ORDER BY email"))


def test_the_contacts_example_succeeds_with_five_steps(contacts: Path) -> None:
    proc = kubestep("run", "workflow.yaml", "--event", "event.yaml", "--output", "json", cwd=contacts)
    assert proc.returncode == 0, proc.stderr
    record = as_record(proc)
    assert record["phase"] == "Succeeded"
    assert record["output"] == {"imported": 5}
    assert [s["id"] for s in record["steps"]] == [
        "validate-upload-contents",
        "enrich-address-information",
        "create-contacts-in-crm",
        "notify-user-of-successful-import",
        "announce-import-completed",
    ]
    assert {s["phase"] for s in record["steps"]} == {"Succeeded"}
    assert steps_of(record)["create-contacts-in-crm"]["output"] == {"total_users_added": 5}
    assert len(crm_rows(contacts)) == 5
    outbox = list((contacts / ".demo" / "outbox").iterdir())
    assert len(outbox) == 1 and "5 contacts imported" in outbox[0].read_text()
    # The timeline went to stderr and tells the story.
    assert "validate-upload-contents' succeeded" in proc.stderr


def test_the_contacts_example_chained_runs_its_steps_in_one_process_with_the_same_outputs(
    contacts: Path,
) -> None:
    manifest = yaml.safe_load((contacts / "workflow.yaml").read_text())
    manifest["spec"]["execution"] = {"mode": "Chained", "maxStepsPerPod": 10}
    (contacts / "workflow.yaml").write_text(yaml.safe_dump(manifest))
    proc = kubestep("run", "workflow.yaml", "--event", "event.yaml", "--output", "json", cwd=contacts)
    assert proc.returncode == 0, proc.stderr
    record = as_record(proc)
    assert record["phase"] == "Succeeded" and record["output"] == {"imported": 5}
    steps = steps_of(record)
    assert steps["create-contacts-in-crm"]["output"] == {"total_users_added": 5}
    # The four step.run steps, each with one attempt, all of the same execution.
    runs = [s for s in record["steps"] if s["type"] == "run"]
    assert len(runs) == 4 and all(len(s["attempts"]) == 1 for s in runs)
    assert len({s["attempts"][0]["job"] for s in runs}) == 1
    assert len(crm_rows(contacts)) == 5


def test_flaky_enrichment_is_retried_alone_with_the_workflows_backoff(contacts: Path) -> None:
    proc = kubestep(
        "run",
        "workflow.yaml",
        "-e",
        "event.yaml",
        "-o",
        "json",
        cwd=contacts,
        env={"CONTACTS_ENRICH_FAILURES": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    steps = steps_of(as_record(proc))
    enrich = steps["enrich-address-information"]
    assert enrich["attemptCount"] == 3
    failed, second, last = enrich["attempts"]
    for attempt in (failed, second):
        assert attempt["result"] == "Error"
        assert attempt["reason"] == "EnrichmentUnavailableError"
        assert "HTTP 503" in attempt["message"]
    assert last["result"] == "Succeeded"
    # The policy in workflow.yaml: 1s initial, factor 2, up to 500ms jitter.
    policy = yaml.safe_load((contacts / "workflow.yaml").read_text())["spec"]["retries"]["backoff"]
    assert policy == {"initial": "1s", "factor": 2, "max": "30s", "jitter": "500ms"}
    assert 1.0 <= failed["retryDelaySeconds"] <= 1.5
    assert 2.0 <= second["retryDelaySeconds"] <= 2.5
    # ... and the next attempt really waited that long.
    for before, after in ((failed, second), (second, last)):
        gap = datetime.fromisoformat(after["startedAt"]) - datetime.fromisoformat(before["finishedAt"])
        assert gap.total_seconds() >= before["retryDelaySeconds"] - 0.05
    assert steps["validate-upload-contents"]["attemptCount"] == 1
    assert steps["create-contacts-in-crm"]["attemptCount"] == 1
    rows = crm_rows(contacts)
    assert len(rows) == 5 and len(set(rows)) == 5, "each contact exactly once"


def test_an_invalid_upload_notifies_the_user_and_creates_nothing(contacts: Path) -> None:
    proc = kubestep("run", "workflow.yaml", "-e", "event-invalid.yaml", "-o", "json", cwd=contacts)
    assert proc.returncode == 0, proc.stderr
    record = as_record(proc)
    assert record["phase"] == "Succeeded"
    assert [s["id"] for s in record["steps"]] == [
        "validate-upload-contents",
        "notify-user-of-invalid-contents",
    ]
    assert "missing column 'city'" in record["output"]["errors"]
    assert "line 3: invalid email 'not-an-email'" in record["output"]["errors"]
    assert crm_rows(contacts) == []
    (mail,) = (contacts / ".demo" / "outbox").iterdir()
    assert "could not import" in mail.read_text()


# Small workflows for the failure cases --------------------------------------------------------------

FLOWS = """
import datetime, os, time
import kubestep

def fail_hard():
    raise kubestep.NonRetriableError("the file is corrupt")

def flaky_with_delay():
    marker = os.path.join(os.environ["MARKS"], "called")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise kubestep.RetryAfterError("rate limited", "2s")
    return "ok"

def returns_a_set():
    return {1, 2}

def too_slow():
    print("starting a long computation", flush=True)
    time.sleep(60)

@kubestep.workflow("nonretriable")
def nonretriable(ctx, step):
    step.run("parse", fail_hard)

@kubestep.workflow("retry-after")
def retry_after(ctx, step):
    return step.run("call-api", flaky_with_delay)

@kubestep.workflow("not-json")
def not_json(ctx, step):
    return step.run("make-set", returns_a_set)

@kubestep.workflow("slow")
def slow(ctx, step):
    return step.run("crunch", too_slow)

def count_call(name):
    with open(os.path.join(os.environ["MARKS"], name), "a") as f:
        f.write("x")

def slow_once():
    count_call("slow")
    print("slow step running", flush=True)
    time.sleep(3)
    return "slow-done"

@kubestep.workflow("crash")
def crash(ctx, step):
    a = step.run("first", lambda: count_call("first") or "a")
    b = step.run("slow", slow_once)
    c = step.run("last", lambda: count_call("last") or "c")
    return [a, b, c]

def stamp(name):
    start = time.time()
    time.sleep(1)
    return [name, start, time.time()]

@kubestep.workflow("napper")
def napper(ctx, step):
    before = step.run("before", time.time)
    step.sleep("nap", "1500ms")
    after = step.run("after", time.time)
    return after - before

@kubestep.workflow("fanout")
def fanout(ctx, step):
    return step.parallel(lambda: step.run("left", stamp, "l"), lambda: step.run("right", stamp, "r"))

def slow_child_step():
    count_call("child")
    time.sleep(2)
    return 21

@kubestep.workflow("child")
def child(ctx, step):
    return step.run("work", slow_child_step) * ctx.event.data["factor"]

@kubestep.workflow("parent")
def parent(ctx, step):
    return step.invoke("call-child", "child", {"factor": 2})

@kubestep.workflow("whoami")
def whoami(ctx, step):
    return {"id": ctx.event.id, "ts": ctx.event.ts}

@kubestep.workflow("approval")
def approval(ctx, step):
    got = step.wait_for_event("wait-approval", "app/approved", timeout="1h",
                              if_="async.data.doc == event.data.doc")
    return None if got is None else got.data["by"]
"""


def workflow_yaml(
    name: str, function: str, retries: dict[str, Any] | None = None, trigger: str = "app/go", **spec: Any
) -> str:
    doc = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "triggers": [{"event": trigger}],
            "image": "local",
            "function": f"flows:{function}",
            "retries": retries or {"limit": 2, "backoff": {"initial": "100ms", "jitter": "0s"}},
            **spec,
        },
    }
    return yaml.safe_dump(doc)


def event_yaml(name: str = "app/go", **data: Any) -> str:
    return yaml.safe_dump(
        {"apiVersion": "kubestep.dev/v1alpha1", "kind": "Event", "spec": {"name": name, "data": data}}
    )


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOWS))
    (tmp_path / "go.yaml").write_text(event_yaml(doc="d1"))
    (tmp_path / "marks").mkdir()
    return tmp_path


def run_flow(flows: Path, name: str, function: str, **spec: Any) -> tuple[int, dict[str, Any], str]:
    (flows / f"{name}.yaml").write_text(workflow_yaml(name, function, **spec))
    proc = kubestep(
        "run", f"{name}.yaml", "-e", "go.yaml", "-o", "json", cwd=flows, env={"MARKS": str(flows / "marks")}
    )
    return proc.returncode, as_record(proc), proc.stderr


def test_non_retriable_error_fails_the_run_after_one_attempt(flows: Path) -> None:
    code, record, _ = run_flow(flows, "nonretriable", "nonretriable")
    assert code == 1
    assert record["phase"] == "Failed"
    (step,) = record["steps"]
    assert step["attemptCount"] == 1 and step["attempts"][0]["result"] == "NonRetriable"
    assert record["error"] == {"type": "NonRetriableError", "message": "the file is corrupt", "step": "parse"}


def test_retry_after_waits_the_delay_the_step_asked_for(flows: Path) -> None:
    code, record, _ = run_flow(flows, "retry-after", "retry_after")
    assert code == 0 and record["output"] == "ok"
    first, second = record["steps"][0]["attempts"]
    assert first["result"] == "RetryAfter" and first["retryDelaySeconds"] == 2.0
    gap = datetime.fromisoformat(second["startedAt"]) - datetime.fromisoformat(first["finishedAt"])
    assert gap.total_seconds() >= 1.95


def test_a_non_json_output_fails_naming_the_step_and_the_type(flows: Path) -> None:
    code, record, _ = run_flow(flows, "not-json", "not_json")
    assert code == 1 and record["phase"] == "Failed"
    message = record["error"]["message"]
    assert "'make-set'" in message and "set" in message and "not JSON" in message
    assert record["steps"][0]["attemptCount"] == 1


def test_a_step_over_its_timeout_is_stopped_and_counted(flows: Path) -> None:
    started = time.monotonic()
    code, record, _ = run_flow(
        flows,
        "slow",
        "slow",
        retries={"limit": 1, "backoff": {"initial": "100ms", "jitter": "0s"}},
        timeouts={"step": "1s"},
    )
    assert time.monotonic() - started < 30
    assert code == 1
    attempts = record["steps"][0]["attempts"]
    assert [a["result"] for a in attempts] == ["Timeout", "Timeout"]
    assert attempts[0]["reason"] == "DeadlineExceeded"
    assert "starting a long computation" in attempts[0]["logTail"]
    assert record["error"]["type"] == "Timeout"


def test_a_waiting_run_is_resumed_by_an_event_from_another_command(flows: Path) -> None:
    (flows / "approval.yaml").write_text(workflow_yaml("approval", "approval"))
    (flows / "approved.yaml").write_text(event_yaml("app/approved", doc="d1", by="ann"))
    (flows / "other.yaml").write_text(event_yaml("app/approved", doc="d2", by="bob"))
    waiting = subprocess.Popen(
        [*KUBESTEP, "run", "approval.yaml", "-e", "go.yaml", "-o", "json"],
        cwd=flows,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_dir = flows / ".kubestep" / "runs"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = list(run_dir.glob("*/run.json")) if run_dir.exists() else []
            if runs and json.loads(runs[0].read_text())["status"]["phase"] == "Waiting":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the run never reached Waiting")
        name = runs[0].parent.name
        for event in ("other.yaml", "approved.yaml"):
            proc = kubestep("run", "--resume", name, "--event", event, cwd=flows)
            assert proc.returncode == 0, proc.stderr
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    record = json.loads(out)
    assert record["phase"] == "Succeeded" and record["output"] == "ann"


def test_an_event_without_id_and_ts_gets_both(flows: Path) -> None:
    before = datetime.now().astimezone()
    code, record, _ = run_flow(flows, "whoami", "whoami")
    assert code == 0, record
    assert len(record["output"]["id"]) == 32  # a fresh uuid, as the cluster gives the Event's uid
    assert before <= datetime.fromisoformat(record["output"]["ts"]) <= datetime.now().astimezone()


def test_an_event_that_matches_no_trigger_is_an_error(flows: Path) -> None:
    (flows / "nonretriable.yaml").write_text(workflow_yaml("nonretriable", "nonretriable"))
    (flows / "other.yaml").write_text(event_yaml("app/other"))
    proc = kubestep("run", "nonretriable.yaml", "-e", "other.yaml", cwd=flows)
    assert proc.returncode == 2
    assert "no trigger matches" in proc.stderr


def test_an_invalid_workflow_file_names_the_field(flows: Path) -> None:
    bad = yaml.safe_load(workflow_yaml("bad", "x"))
    bad["spec"]["function"] = "no-colon"
    bad["spec"]["retries"]["backoff"]["factor"] = 0.5
    (flows / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = kubestep("run", "bad.yaml", "-e", "go.yaml", cwd=flows)
    assert proc.returncode == 2
    assert "spec.function" in proc.stderr and "'no-colon'" in proc.stderr
    assert "spec.retries.backoff.factor" in proc.stderr


def test_a_killed_driver_is_resumed_without_running_any_step_twice(flows: Path) -> None:
    (flows / "crash.yaml").write_text(workflow_yaml("crash", "crash"))
    env = {**os.environ, "MARKS": str(flows / "marks")}
    driver = subprocess.Popen(
        [*KUBESTEP, "run", "crash.yaml", "-e", "go.yaml"],
        cwd=flows,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (flows / "marks" / "slow").exists():
        assert time.monotonic() < deadline, "the slow step never started"
        time.sleep(0.05)
    driver.kill()  # SIGKILL: the step process, in its own session, carries on
    driver.wait()
    (run,) = (flows / ".kubestep" / "runs").iterdir()
    proc = kubestep("run", "--resume", run.name, "-o", "json", cwd=flows, env={"MARKS": str(flows / "marks")})
    assert proc.returncode == 0, proc.stderr
    record = as_record(proc)
    assert record["output"] == ["a", "slow-done", "c"]
    assert {s["id"]: s["attemptCount"] for s in record["steps"]} == {"first": 1, "slow": 1, "last": 1}
    for name in ("first", "slow", "last"):
        assert (flows / "marks" / name).read_text() == "x", f"step {name} ran more than once"


def test_sleep_is_honoured_with_no_process_alive(flows: Path) -> None:
    code, record, _ = run_flow(flows, "napper", "napper")
    assert code == 0, record
    assert record["output"] >= 1.5
    nap = steps_of(record)["nap"]
    assert nap["type"] == "sleep" and nap["phase"] == "Succeeded" and nap["attempts"] == []


def test_parallel_steps_run_at_the_same_time_in_separate_processes(flows: Path) -> None:
    code, record, _ = run_flow(flows, "fanout", "fanout")
    assert code == 0, record
    (left, l_start, l_end), (right, r_start, r_end) = record["output"]
    assert (left, right) == ("l", "r")
    assert l_start < r_end and r_start < l_end, "the two steps overlapped in time"
    jobs = {s["id"]: s["attempts"][0]["job"] for s in record["steps"]}
    assert jobs["left"] != jobs["right"]


def test_a_concurrency_limit_holds_parallel_steps_back_as_in_a_cluster(flows: Path) -> None:
    code, record, _ = run_flow(flows, "fanout", "fanout", concurrency=[{"limit": 1}])
    assert code == 0, record
    (left, l_start, l_end), (right, r_start, r_end) = record["output"]
    assert (left, right) == ("l", "r")
    assert l_end <= r_start or r_end <= l_start, "the two steps overlapped under a limit of 1"
    assert record["admission"]["keys"] == {} and record["admission"]["tickets"] == 0


def test_an_event_repeating_an_id_reports_the_run_the_first_started(flows: Path) -> None:
    (flows / "crash.yaml").write_text(workflow_yaml("crash", "crash"))
    event = yaml.safe_load(event_yaml(doc="d1"))
    event["spec"]["id"] = "order-7"
    (flows / "order.yaml").write_text(yaml.safe_dump(event))
    env = {"MARKS": str(flows / "marks")}
    first = as_record(kubestep("run", "crash.yaml", "-e", "order.yaml", "-o", "json", cwd=flows, env=env))
    again = as_record(kubestep("run", "crash.yaml", "-e", "order.yaml", "-o", "json", cwd=flows, env=env))
    assert first["phase"] == again["phase"] == "Succeeded"
    assert again["name"] == first["name"]
    assert (flows / "marks" / "first").read_text() == "x", "the repeated event started nothing new"
    event["spec"]["id"] = "order-8"
    (flows / "order.yaml").write_text(yaml.safe_dump(event))
    other = as_record(kubestep("run", "crash.yaml", "-e", "order.yaml", "-o", "json", cwd=flows, env=env))
    assert other["name"] != first["name"]


def test_resuming_a_finished_run_reports_its_outcome(flows: Path) -> None:
    code, record, _ = run_flow(flows, "nonretriable", "nonretriable")
    assert code == 1
    proc = kubestep("run", "--resume", record["name"], "-o", "json", cwd=flows)
    assert proc.returncode == 1
    assert as_record(proc)["phase"] == "Failed"


def test_a_parent_resumed_after_a_crash_finds_its_child_again(flows: Path) -> None:
    docs = workflow_yaml("parent", "parent") + "---\n" + workflow_yaml("child", "child", trigger="app/never")
    (flows / "family.yaml").write_text(docs)
    env = {**os.environ, "MARKS": str(flows / "marks")}
    driver = subprocess.Popen(
        [*KUBESTEP, "run", "family.yaml", "-e", "go.yaml"],
        cwd=flows,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (flows / "marks" / "child").exists():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    runs = flows / ".kubestep" / "runs"
    (parent,) = [p.name for p in runs.iterdir() if len(p.name) < 20]
    proc = kubestep("run", "--resume", parent, "-o", "json", cwd=flows, env={"MARKS": str(flows / "marks")})
    assert proc.returncode == 0, proc.stderr
    assert as_record(proc)["output"] == 42
    assert (flows / "marks" / "child").read_text() == "x", "the child's step ran once"
