"""`kubestep run` of a paused workflow: the run stops before its first step with a hint, and
`--resume` after `paused: false` in the file runs it to the end."""

from __future__ import annotations

import json
from pathlib import Path

from test_run_cli import kubestep

FLOWS = """
def twice(n):
    return n * 2

def main(ctx, step):
    return step.run("twice", twice, ctx.event.data["n"])
"""
WORKFLOW = """
apiVersion: kubestep.dev/v1alpha1
kind: Workflow
metadata: {name: doubler}
spec:
  triggers: [{event: app/go}]
  image: local
  function: flows:main
  paused: PAUSED
"""
EVENT = """
apiVersion: kubestep.dev/v1alpha1
kind: Event
metadata: {name: go}
spec: {name: app/go, data: {n: 21}}
"""


def test_a_paused_workflow_waits_and_resumes_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FLOWS)
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("PAUSED", "true"))
    (tmp_path / "event.yaml").write_text(EVENT)
    proc = kubestep("run", "wf.yaml", "--event", "event.yaml", "-o", "json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    record = json.loads(proc.stdout)
    assert record["phase"] == "Queued" and not record["steps"], record
    said = " ".join(proc.stderr.split())  # as wrapped on the terminal
    run = record["name"]
    assert "is paused (spec.paused)" in said and f"kubestep run --resume {run}" in said, said

    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("PAUSED", "false"))
    proc = kubestep("run", "--resume", run, "-o", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output"] == 42
