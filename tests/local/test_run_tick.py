"""`kubestep run WORKFLOW.yaml --tick`: a `cron` workflow run locally as a tick due now would start it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from test_run_cli import kubestep

FLOWS = """
def hello(at, zone):
    return f"tick at {at} ({zone})"

def nightly(ctx, step):
    return step.run("hello", hello, ctx.event.data["scheduledAt"], ctx.event.data["timezone"])
"""
WORKFLOW = """
apiVersion: kubestep.dev/v1alpha1
kind: Workflow
metadata: {name: nightly}
spec:
  triggers: [{cron: "0 3 * * *", timezone: Europe/Berlin}]
  image: local
  function: flows:nightly
"""


def test_tick_runs_the_cron_workflow_now(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FLOWS)
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    started = datetime.now(UTC)
    proc = kubestep("run", "wf.yaml", "--tick", "-o", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    output = record["output"]
    assert output.startswith("tick at ") and output.endswith("(Europe/Berlin)"), output
    at = datetime.fromisoformat(output.split(" ")[2])
    assert at.utcoffset() in (timedelta(hours=1), timedelta(hours=2))  # Berlin's time
    assert started - timedelta(seconds=1) <= at <= datetime.now(UTC)


def test_tick_without_a_cron_trigger_says_so(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FLOWS)
    (tmp_path / "wf.yaml").write_text(
        WORKFLOW.replace('{cron: "0 3 * * *", timezone: Europe/Berlin}', "{event: app/go}")
    )
    proc = kubestep("run", "wf.yaml", "--tick", cwd=tmp_path)
    assert proc.returncode == 2
    assert "has a `cron` trigger" in proc.stderr, proc.stderr
