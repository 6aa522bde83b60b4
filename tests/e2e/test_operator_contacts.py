"""The contacts example through the operator: kubectl apply a Workflow, then an Event."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import Cluster, Operator, assert_clean_log, contacts_event, contacts_workflow, step

HAPPY_STEPS = [
    "validate-upload-contents",
    "enrich-address-information",
    "create-contacts-in-crm",
    "notify-user-of-successful-import",
    "announce-import-completed",
]


def test_contacts_example_succeeds_with_every_step_output_in_status(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.apply(contacts_workflow(tmp_path))
    cluster.apply(contacts_event())

    run = cluster.wait_run()

    status = run["status"]
    assert status["phase"] == "Succeeded", status
    assert [s["id"] for s in status["steps"]] == HAPPY_STEPS
    assert all(s["phase"] == "Succeeded" for s in status["steps"])
    assert step(run, "validate-upload-contents")["output"]["valid"] is True
    assert len(step(run, "enrich-address-information")["output"]) == 5
    assert step(run, "create-contacts-in-crm")["output"] == {"total_users_added": 5}
    assert status["progress"] == "5 done"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    # Each step ran in its own Job, in the restricted namespace, and no state Secret is left behind. The
    # four `step.run` steps took one Job each and nothing more: the send and the function's return were
    # reported with the output of the step before them.
    jobs = cluster.items("jobs", f"kubestep.dev/run={run['metadata']['name']}")
    assert len(jobs) == 4, [j["metadata"]["name"] for j in jobs]
    # Every Job but the run's first was created for a known step, and says so in a label.
    labelled = sorted(j["metadata"]["labels"].get("kubestep.dev/step", "") for j in jobs)
    assert labelled == ["", *sorted(HAPPY_STEPS[1:4])], labelled
    enrich = "kubestep.dev/step=enrich-address-information"
    assert len(cluster.items("pods", f"kubestep.dev/run={run['metadata']['name']},{enrich}")) == 1
    assert all(j["spec"]["template"]["spec"]["automountServiceAccountToken"] is False for j in jobs)
    assert cluster.items("secrets", f"kubestep.dev/run={run['metadata']['name']}") == []
    with sqlite3.connect(tmp_path / "crm.sqlite3") as db:
        assert db.execute("select count(*) from contacts").fetchone()[0] == 5
    event = cluster.get("events.kubestep.dev", "contact-list-uploaded-1")
    assert event["status"]["started"] == [
        {"workflow": "process-contacts-csv-upload", "run": run["metadata"]["name"]}
    ]
    assert_clean_log(operator)
