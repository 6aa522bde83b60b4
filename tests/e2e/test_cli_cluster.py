"""The `kubestep` command line against the real control plane, through its installed entry point.

Real runs of the contacts example whose enrichment fails once: `send` starts one, `runs`, `describe run`,
`workflows` and `events` show it, `logs` stitches the lines of validation, the failed enrichment attempt
and its retry in that order (from the pods, then, once the Jobs are deleted, from the tails recorded in
the run's status), `rerun --from` a failed run reuses validation's output, `cancel` stops a run, and bad
input gets one line and an exit code.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from conftest import Cluster, Operator, assert_clean_log, contacts_workflow, step
from kubecp.testing import wait_for

#: The installed console script, next to the interpreter running the tests.
KUBESTEP = Path(sys.executable).parent / "kubestep"
ENRICH = "enrich-address-information"
VALIDATE = "validate-upload-contents"
DATA = json.dumps({"filename": "uploads/contacts.csv"})
#: What each step prints (examples/contacts/contacts/services.py), in the order the run prints it.
VALIDATION_LINE = "reading uploads/contacts.csv"
FAILED_LINE = "address service call (attempt 1): 503 Service Unavailable"
RETRY_LINE = "address service call (attempt 2): enriched 5 addresses"
INSERT_LINE = "inserted 5 contacts for user user-42"


def kubestep(
    cluster: Cluster, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``kubestep ARGS -n NAMESPACE --kubeconfig ...`` as a user types it; not in a terminal (plain text)."""
    result = subprocess.run(
        [str(KUBESTEP), *args, "-n", cluster.namespace, "--kubeconfig", str(cluster.cp.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "KUBECONFIG": "/nonexistent"},
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, (
            f"kubestep {' '.join(args)}: {result.returncode}\n{result.stderr}{result.stdout}"
        )
    return result


def positions(text: str, *needles: str) -> list[int]:
    """Where each needle is first found in ``text`` (failing when one is missing)."""
    found = []
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
        found.append(text.index(needle))
    return found


def prefixed(text: str, needle: str) -> str:
    """The one line of ``text`` holding ``needle``."""
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, (needle, text)
    return lines[0]


def send_contacts(cluster: Cluster) -> str:
    """``kubestep send`` the example's event; the name of the run it started."""
    sent = kubestep(
        cluster, "send", "api/contact_list.uploaded", "--data", DATA, "--user", '{"id": "user-42"}'
    )
    assert "sent: api/contact_list.uploaded" in sent.stdout, sent.stdout
    runs = yaml.safe_load(kubestep(cluster, "runs", "-o", "yaml").stdout)["items"]
    assert len(runs) == 1, runs
    name = str(runs[0]["metadata"]["name"])
    assert name in sent.stdout, sent.stdout  # the run it started is printed (the operator was quick enough)
    return name


def test_send_runs_describe_logs_workflows_events_on_a_run_with_one_failed_attempt(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(contacts_workflow(tmp_path, enrich_failures=1))
    wait_for(lambda: "True" in kubestep(cluster, "workflows").stdout, timeout=30, what="the workflow Ready")
    name = send_contacts(cluster)
    # Streams from the start until the run ends.
    follow = subprocess.Popen(
        [
            str(KUBESTEP),
            "logs",
            name,
            "--follow",
            "-n",
            cluster.namespace,
            "--kubeconfig",
            str(cluster.cp.kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": "/nonexistent"},
    )
    sampled = set()
    while cluster.runs()[0].get("status", {}).get("phase") not in ("Succeeded", "Failed"):
        table = kubestep(cluster, "runs").stdout
        row = prefixed(table, name)
        sampled.add(row.split()[2])  # the phase column
        time.sleep(0.5)
    streamed, errors = follow.communicate(timeout=60)
    assert follow.returncode == 0, errors
    run = cluster.wait_run()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    # Whatever phase each sample caught (on a busy machine a sample may come after the end), the run had
    # its line.
    assert sampled <= {"Pending", "Running", "Succeeded"}, sampled

    # While the pods exist: the pods' own logs, in the order the attempts ran, each line prefixed.
    from_pods = kubestep(cluster, "logs", name).stdout
    for text in (from_pods, streamed):
        positions(text, VALIDATION_LINE, FAILED_LINE, RETRY_LINE, INSERT_LINE)
        assert f"{VALIDATE} #1 | {VALIDATION_LINE}" in text, text
        assert f"{ENRICH} #1 | {FAILED_LINE}" in text, text
        assert f"{ENRICH} #2 | {RETRY_LINE}" in text, text
        assert "(recorded)" not in text
        assert "\x1b[" not in text  # piped: no colour
    only_retry = kubestep(cluster, "logs", name, "--step", ENRICH, "--attempt", "2").stdout
    assert RETRY_LINE in only_retry and FAILED_LINE not in only_retry and VALIDATION_LINE not in only_retry

    # The timeline: every step, the failed attempt with its class, reason, exit code and the backoff.
    described = kubestep(cluster, "describe", "run", name).stdout
    steps = positions(
        described, VALIDATE, ENRICH, "create-contacts-in-crm", "notify-user-of-successful-import"
    )
    assert steps == sorted(steps), described
    failed = next(line for line in described.splitlines() if "#1" in line and "EnrichmentUnavailable" in line)
    assert "Error" in failed and "EnrichmentUnavailableError" in failed and "exit 1" in failed, described
    assert "backoff " in described and "before the next attempt" in described, described
    assert "Output:" in described and '"imported": 5' in described, described
    assert "api/contact_list.uploaded" in described and "uploads/contacts.csv" in described, described
    assert (
        json.loads(kubestep(cluster, "describe", "run", name, "-o", "json").stdout)["metadata"]["name"]
        == name
    )

    runs_table = kubestep(
        cluster, "runs", "--workflow", "process-contacts-csv-upload", "--phase", "Succeeded"
    ).stdout
    row = prefixed(runs_table, name).split()
    assert row[1:4] == ["process-contacts-csv-upload", "Succeeded", "5"], runs_table
    assert "no runs found" in kubestep(cluster, "runs", "--phase", "Failed").stdout
    assert json.loads(kubestep(cluster, "runs", "-o", "json").stdout)["items"][0]["metadata"]["name"] == name

    def counted() -> str | None:
        line = prefixed(kubestep(cluster, "workflows").stdout, "process-contacts-csv-upload")
        return line if line.split()[-4:-1] == ["0", "1", "0"] else None  # active, succeeded, failed

    line = wait_for(counted, timeout=30, interval=0.5, what="the workflow's counts")
    assert " True " in line and "api/contact_list.uploaded if " in line, line
    events = kubestep(cluster, "events").stdout
    assert name in prefixed(events, "api/contact_list.uploaded"), events
    assert yaml.safe_load(kubestep(cluster, "events", "-o", "yaml").stdout)["items"][0]["status"]["started"]

    # Once the Jobs (and so the pods) are gone: the tails recorded in the run's status, marked.
    cluster.kubectl("delete", "jobs", "-l", f"kubestep.dev/run={name}", "--wait=true")
    wait_for(lambda: not cluster.items("pods", f"kubestep.dev/run={name}"), timeout=60, what="the pods gone")
    recorded = kubestep(cluster, "logs", name).stdout
    positions(recorded, VALIDATION_LINE, FAILED_LINE, RETRY_LINE, INSERT_LINE)
    assert f"{VALIDATE} #1 (recorded) | {VALIDATION_LINE}" in recorded, recorded
    assert f"{ENRICH} #1 (recorded) | {FAILED_LINE}" in recorded, recorded
    assert f"{ENRICH} #2 (recorded) | {RETRY_LINE}" in recorded, recorded
    assert_clean_log(operator)


def test_rerun_from_enrichment_reuses_validation_and_runs_the_rest(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    # No retries: enrichment's one failure fails the run.
    cluster.apply(contacts_workflow(tmp_path, enrich_failures=1, retries={"limit": 0}))
    name = send_contacts(cluster)
    failed = cluster.wait_run()
    assert failed["status"]["phase"] == "Failed", failed["status"]
    assert "Failed" in prefixed(kubestep(cluster, "runs").stdout, name)

    # The fix is deployed (the service is back), then the run is rerun from the failed step.
    cluster.apply(contacts_workflow(tmp_path, retries={"limit": 0}))
    started = kubestep(cluster, "rerun", name, "--from", ENRICH).stdout
    assert f"rerun of {name} from step {ENRICH}" in started and f"reusing: {VALIDATE}" in started, started

    def rerun_done() -> dict[str, Any] | None:
        others = [r for r in cluster.runs() if r["metadata"]["name"] != name]
        if others and others[0].get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return others[0]
        return None

    new = wait_for(rerun_done, timeout=120, interval=0.5, what="the rerun finished")
    new_name = new["metadata"]["name"]
    assert new_name in started
    assert new["status"]["phase"] == "Succeeded", new["status"]
    assert new["status"]["rerunOf"] == name
    assert cluster.get("workflowruns.kubestep.dev", name)["status"]["reruns"] == [new_name]
    # Validation was not executed again: no attempt in the rerun, its output reused; enrichment and the
    # later steps ran.
    validate = step(new, VALIDATE)
    assert validate.get("attempts", []) == [] and validate["reusedFrom"] == name, validate
    assert validate["output"] == step(failed, VALIDATE)["output"]
    for later in (ENRICH, "create-contacts-in-crm", "notify-user-of-successful-import"):
        assert [a["result"] for a in step(new, later)["attempts"]] == ["Succeeded"], step(new, later)
    with sqlite3.connect(tmp_path / "crm.sqlite3") as db:
        assert db.execute("select count(*) from contacts").fetchone()[0] == 5

    # Validation's trace, across both runs: one execution.
    original_log = kubestep(cluster, "logs", name).stdout
    rerun_log = kubestep(cluster, "logs", new_name).stdout
    assert (original_log + rerun_log).count(VALIDATION_LINE) == 1, original_log + rerun_log
    assert f"{VALIDATE} (reused) | output reused from run {name}" in rerun_log, rerun_log
    positions(rerun_log, "address service call (attempt 1): enriched 5 addresses", INSERT_LINE)
    described = kubestep(cluster, "describe", "run", new_name).stdout
    assert f"Rerun of:   {name} (from step {ENRICH})" in described, described
    assert f"output reused from run {name}: not run in this run" in described, described
    assert f"Reruns:     {new_name}" in kubestep(cluster, "describe", "run", name).stdout
    assert_clean_log(operator)


def test_cancel_stops_a_run_waiting_to_retry(operator: Operator, cluster: Cluster, tmp_path: Path) -> None:
    backoff = {"initial": "1h", "factor": 2, "max": "1h", "jitter": "0s"}
    cluster.apply(contacts_workflow(tmp_path, enrich_failures=1, retries={"limit": 2, "backoff": backoff}))
    name = send_contacts(cluster)
    wait_for(
        lambda: step(cluster.runs()[0], ENRICH)["phase"] == "Retrying",
        timeout=90,
        interval=0.5,
        what="a retry",
    )
    row = prefixed(kubestep(cluster, "runs").stdout, name)
    assert f"{ENRICH} (retrying)" in row and row.split()[-3] == "2", row  # the step and its next attempt
    assert f"run {name} cancelling" in kubestep(cluster, "cancel", name).stdout
    run = cluster.wait_run()
    assert run["status"]["phase"] == "Cancelled", run["status"]
    again = kubestep(cluster, "cancel", name, check=False)
    assert (
        again.returncode == 1
        and again.stderr.strip() == f"error: run {name} already ended Cancelled: nothing to cancel"
    )
    assert_clean_log(operator)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The error ``result`` printed: one line on stderr, with the words a user needs, exit ``code``."""
    assert result.returncode == code, (result.returncode, result.stderr, result.stdout)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_bad_input_is_one_line_with_an_exit_code(cluster: Cluster, tmp_path: Path) -> None:
    ns = cluster.namespace
    one_line_error(kubestep(cluster, "describe", "run", "nope", check=False), 1, "run nope", "not found", ns)
    one_line_error(kubestep(cluster, "logs", "nope", check=False), 1, "run nope", "not found")
    one_line_error(kubestep(cluster, "cancel", "nope", check=False), 1, "run nope", "not found")
    one_line_error(kubestep(cluster, "rerun", "nope", check=False), 1, "run nope", "not found")
    for args in (["runs"], ["describe", "run", "x"], ["events"], ["workflows"]):
        result = subprocess.run(
            [str(KUBESTEP), *args, "-n", "no-such-namespace", "--kubeconfig", str(cluster.cp.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        one_line_error(result, 1, "namespace no-such-namespace not found")
    one_line_error(
        kubestep(cluster, "send", "api/contact_list.uploaded", "--data", "{nope", check=False),
        2,
        "--data",
        "JSON",
    )
    one_line_error(kubestep(cluster, "send", "api/x", "--data", "[1, 2]", check=False), 2, "JSON object")
    one_line_error(
        kubestep(cluster, "send", "api/x", "--data", "@/no/such/file.json", check=False), 2, "cannot read"
    )
    one_line_error(kubestep(cluster, "runs", "-o", "xml", check=False), 2, "--output", "json")
    one_line_error(kubestep(cluster, "runs", "--phase", "Done", check=False), 2, "--phase", "Succeeded")

    # A run to ask about an unknown step (its status is written by no operator here: empty).
    cluster.apply(contacts_workflow(tmp_path))
    manifest = yaml.safe_load(
        (Path(__file__).parents[2] / "examples" / "contacts" / "workflow.yaml").read_text()
    )
    run = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {"name": "r1"},
        "spec": {
            "workflowRef": {"name": "process-contacts-csv-upload"},
            "workflow": manifest["spec"],
            "event": {"name": "api/contact_list.uploaded", "data": {}},
        },
    }
    cluster.apply(run)
    one_line_error(kubestep(cluster, "logs", "r1", "--step", "nope", check=False), 1, "no step 'nope'")
    one_line_error(kubestep(cluster, "rerun", "r1", "--from", "nope", check=False), 1, "still Pending")

    # An API server no one answers at.
    config = yaml.safe_load(cluster.cp.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = "https://127.0.0.1:9"
    unreachable = tmp_path / "unreachable.kubeconfig"
    unreachable.write_text(yaml.safe_dump(config))
    for args in (["runs"], ["describe", "run", "x"], ["send", "api/x", "--data", "{}"], ["logs", "x"]):
        result = subprocess.run(
            [str(KUBESTEP), *args, "--kubeconfig", str(unreachable)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        one_line_error(result, 1, "cannot reach the API server at https://127.0.0.1:9")
    result = subprocess.run(
        [str(KUBESTEP), "runs", "--kubeconfig", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
    )
    one_line_error(result, 2, "--kubeconfig", "no such file")
