"""The read commands on local runs (`--local DIR`): `kubestep run`'s state directory in place of a cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "contacts"
#: The installed console script, next to the interpreter running the tests.
KUBESTEP = Path(sys.executable).parent / "kubestep"


def kubestep(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBESTEP), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A local run of the contacts example whose enrichment failed once; its folder and name."""
    target = tmp_path_factory.mktemp("cli-local") / "contacts"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".demo", ".kubestep", "__pycache__"))
    proc = kubestep(
        "run", "workflow.yaml", "-e", "event.yaml", "-q", cwd=target, env={"CONTACTS_ENRICH_FAILURES": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    (name,) = [p.name for p in (target / ".kubestep" / "runs").iterdir()]
    return target, name


def test_runs_describe_and_logs_read_the_state_directory(local_run: tuple[Path, str]) -> None:
    folder, name = local_run
    runs = kubestep("runs", "--local", ".kubestep", cwd=folder)
    assert runs.returncode == 0, runs.stderr
    (row,) = [line for line in runs.stdout.splitlines() if name in line]
    assert row.split()[1:4] == ["process-contacts-csv-upload", "Succeeded", "5"], runs.stdout
    described = kubestep("describe", "run", name, "--local", ".kubestep", cwd=folder).stdout
    assert "EnrichmentUnavailableError" in described and "backoff " in described, described
    logs = kubestep("logs", name, "--local", ".kubestep", cwd=folder).stdout
    lines = [
        "validate-upload-contents #1 | reading uploads/contacts.csv",
        "enrich-address-information #1 | address service call (attempt 1): 503 Service Unavailable",
        "enrich-address-information #2 | address service call (attempt 2): enriched 5 addresses",
        "create-contacts-in-crm #1 | inserted 5 contacts for user user-42",
    ]
    where = [logs.find(line) for line in lines]
    assert -1 not in where and where == sorted(where), logs
    as_json = json.loads(kubestep("logs", name, "--local", ".kubestep", "-o", "json", cwd=folder).stdout)
    assert any(
        (r["step"], r["attempt"], r["recorded"]) == ("enrich-address-information", 2, False)
        and "enriched 5 addresses" in r["line"]
        for r in as_json
    ), as_json


def test_local_errors_are_one_line(local_run: tuple[Path, str]) -> None:
    folder, _ = local_run
    missing = kubestep("describe", "run", "nope", "--local", ".kubestep", cwd=folder)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert "run nope not found" in missing.stderr
    empty = kubestep("runs", "--local", "no-such-dir", cwd=folder)
    assert empty.returncode == 2 and "no local runs there" in empty.stderr, empty.stderr
    mixed = kubestep("runs", "--local", ".kubestep", "-n", "x", cwd=folder)
    assert mixed.returncode == 2 and "--local" in mixed.stderr, mixed.stderr
