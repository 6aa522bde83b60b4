"""A run whose status outgrows what the API server stores ends cleanly, saying so, instead of looping on a
refused write (a status lives in etcd, whose requests are capped near 1.5 MiB)."""

from __future__ import annotations

from test_operator_failures import event, flow_workflow

from conftest import Cluster, Operator, assert_clean_log


def test_a_run_whose_status_cannot_be_stored_fails_with_status_too_large(
    operator: Operator, cluster: Cluster
) -> None:
    limits = {"stepOutputBytes": 262144, "runOutputBytes": 786432}
    cluster.apply(flow_workflow("big-output", "big_output_flow", "test/big.requested", limits=limits))
    # 200,000 characters `<` returned by a step and again by the function: within every limit as JSON
    # counts them, but the API server stores each as `\u003c`, 2.4 MB in all, more than etcd takes.
    cluster.apply(event("big-1", "test/big.requested", {"bytes": 200_000}))

    run = cluster.wait_run(timeout=180)

    status = run["status"]
    assert status["phase"] == "Failed", {k: v for k, v in status.items() if k != "steps"}
    error = status["error"]
    assert error["type"] == "StatusTooLarge", error
    assert "more than the API server stores" in error["message"], error
    assert "references" in error["message"], error
    # Sized as stored: the two outputs alone take 2.4 MB there.
    size = int(error["message"].split("grew to about ")[1].split(" bytes")[0])
    assert size > 2_400_000, error
    (blob,) = status["steps"]
    # What fits is kept: the step, how it ended, its attempt; not the output that could not be stored.
    assert (blob["id"], blob["phase"], blob.get("output")) == ("make-blob", "Succeeded", None), blob
    assert [a["result"] for a in blob["attempts"]] == ["Succeeded"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Succeeded"]["status"], conditions["Succeeded"]["reason"]) == ("False", "Failed")
    # Refused once, then ended: the operator did not loop on the refused write.
    assert operator.log().count("status refused as too large") == 1, operator.log()[-3000:]
    assert_clean_log(operator)

    # The operator carries on with other runs.
    cluster.apply(event("small-1", "test/big.requested", {"bytes": 10}))
    runs = {r["metadata"]["name"]: r for r in cluster.runs()}
    assert len(runs) == 2
