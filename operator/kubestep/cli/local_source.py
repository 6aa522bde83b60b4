"""The read commands on local runs: ``kubestep run``'s state directory (``--local DIR``) in place of a
cluster. Runs are ``DIR/runs/<run>/run.json``; each execution's whole log is kept beside it."""

from __future__ import annotations

import json
from pathlib import Path

from kubestep.cli.cluster import EXIT_USAGE, CliError, Obj


class LocalRuns:
    """Runs, and their executions' logs, kept by ``kubestep run`` under ``root``."""

    def __init__(self, root: Path) -> None:
        if not (root / "runs").is_dir():
            raise CliError(
                f"--local {root}: no local runs there (kubestep run keeps them in its --state-dir, "
                "by default .kubestep)",
                EXIT_USAGE,
            )
        self.root = root

    def runs(self) -> list[Obj]:
        """Every local run, oldest first."""
        found = []
        for path in sorted((self.root / "runs").glob("*/run.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # being written by a driver right now, or damaged: not a run to show
        return sorted(
            found, key=lambda r: ((r.get("status") or {}).get("startedAt") or "", r["metadata"]["name"])
        )

    def run(self, name: str) -> Obj:
        """One local run."""
        path = self.root / "runs" / name / "run.json"
        if not path.is_file():
            known = ", ".join(r["metadata"]["name"] for r in self.runs()) or "none"
            raise CliError(f"run {name} not found under {self.root}/runs (local runs: {known})")
        return dict(json.loads(path.read_text()))

    def log(self, run: str, job: str) -> str | None:
        """An execution's whole log, or None when it has none."""
        path = self.root / "runs" / run / "executions" / job / "log"
        return path.read_text(errors="replace") if path.is_file() else None
