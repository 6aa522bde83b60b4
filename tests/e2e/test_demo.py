"""`make demo`, exactly as the README's quick start runs it: the chart installed with helm, the operator
in a pod from its image, the example's steps in the example's image, pushed to a registry on loopback."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from kubecp.pytest_images import PushedImages

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.controlplane
@pytest.mark.parametrize("failures", [0, 2])
def test_make_demo_runs_the_contacts_example_through_the_operator(
    failures: int, kubestep_images: PushedImages
) -> None:
    # (kubestep_images: the images are built after collection, not inside this test's timeout; the demo
    # finds them in the cache.)
    env = {k: v for k, v in os.environ.items() if k != "CONTACTS_ENRICH_FAILURES"}
    if failures:
        env["CONTACTS_ENRICH_FAILURES"] = str(failures)
    result = subprocess.run(
        ["make", "-s", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "helm install kubestep charts/kubestep -n kubestep-system --wait" in out
    # The operator ran in a pod, from the operator image as pushed to the demo's registry.
    assert re.search(r"the operator runs in pod kubestep-[a-z0-9]+-[a-z0-9]+\n", out), out
    assert re.search(r"image 127\.0\.0\.1:\d+/kubestep/operator@sha256:[0-9a-f]{64}\n", out), out
    assert re.search(
        r"kubectl apply -f examples/contacts/workflow.yaml   \(image: 127\.0\.0\.1:\d+/contacts:1\.0\)", out
    )
    assert "run Succeeded (steps: 5 done)" in out
    summary = out[out.index("\nrun process-contacts-csv-upload") :]
    expected = ", ".join(["Error"] * failures + ["Succeeded"])
    assert f"enrich-address-information           {expected}" in summary, summary
    # The progress lines show each failed attempt's reason as it happens.
    assert ("EnrichmentUnavailableError" in out) == bool(failures)
    assert 'output: {"imported": 5}' in out
