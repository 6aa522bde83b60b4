"""`spec.priority` end to end: among queued runs, the one with the highest priority starts first."""

from __future__ import annotations

from pathlib import Path

from test_flow_concurrency import all_finished, events, flow_workflow, phases, traces

from conftest import Cluster, Operator, assert_clean_log
from kubecp.testing import wait_for


def test_the_highest_priority_queued_run_starts_first(
    operator: Operator, cluster: Cluster, tmp_path: Path
) -> None:
    manifest = flow_workflow("flow-work", tmp_path, [{"limit": 1}], seconds=0.2, gated=True)
    manifest["spec"]["priority"] = {"run": "has(event.data.boost) ? event.data.boost : 0"}
    cluster.apply(manifest)
    cluster.apply(*events("blocker", "t", 1))
    wait_for(
        lambda: phases(cluster)["Running"] == 1 or None, timeout=60, interval=0.3, what="the blocker running"
    )
    queued = events("q", "t", 10)
    queued[6]["spec"]["data"]["boost"] = 600  # the seventh queued event outranks the six before it
    cluster.apply(*queued)
    wait_for(lambda: phases(cluster)["Queued"] == 10 or None, timeout=60, interval=0.3, what="10 queued runs")
    (tmp_path / "go").touch()
    runs = all_finished(cluster, 11, timeout=300)
    assert [r["status"]["phase"] for r in runs] == ["Succeeded"] * 11
    order = [
        line["run"]
        for line in sorted(traces(tmp_path), key=lambda line: line["t"])
        if line["what"] == "start"
    ]
    source = {r["metadata"]["name"]: r["spec"]["event"]["source"] for r in runs}
    assert [source[run] for run in order[:2]] == ["blocker-00", "q-06"]
    assert_clean_log(operator)
