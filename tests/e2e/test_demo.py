"""`make demo`, exactly as the README's quick start runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.controlplane
@pytest.mark.parametrize("failures", [0, 2])
def test_make_demo_runs_the_contacts_example_through_the_operator(failures: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONTACTS_ENRICH_FAILURES"}
    if failures:
        env["CONTACTS_ENRICH_FAILURES"] = str(failures)
    result = subprocess.run(
        ["make", "-s", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "kubestep operator --namespace contacts-demo" in out
    assert "run Succeeded (5/5 steps)" in out
    summary = out[out.index("\nrun process-contacts-csv-upload") :]
    expected = ", ".join(["Error"] * failures + ["Succeeded"])
    assert f"enrich-address-information           {expected}" in summary, summary
    # The progress lines show each failed attempt's reason as it happens.
    assert ("EnrichmentUnavailableError" in out) == bool(failures)
    assert 'output: {"imported": 5}' in out
