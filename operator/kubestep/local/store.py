"""Local run state under ``.kubestep/runs/<run>/``: the run, its executions, its inbox of events."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from kubestep.api.run import WorkflowRun
from kubestep.engine.observations import ArrivedEvent


class RunNotFoundError(LookupError):
    """No local run of that name."""


class Store:
    """The files of local runs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run_dir(self, run: str) -> Path:
        """The folder of ``run``."""
        return self.root / "runs" / run

    def save(self, run: WorkflowRun) -> None:
        """Write the run atomically, so a reader never sees half a file."""
        folder = self.run_dir(run.metadata.name)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "run.json.tmp"
        tmp.write_text(run.model_dump_json(by_alias=True, exclude_none=True, indent=2))
        tmp.replace(folder / "run.json")

    def load(self, run: str) -> WorkflowRun:
        """Read a run back."""
        path = self.run_dir(run) / "run.json"
        if not path.exists():
            raise RunNotFoundError(f"no local run named {run!r} under {self.root}/runs")
        return WorkflowRun.model_validate_json(path.read_text())

    def save_source(self, run: str, source: dict[str, Any]) -> None:
        """Remember where the run's workflows came from, for ``--resume``."""
        folder = self.run_dir(run)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "source.json").write_text(json.dumps(source, indent=2))

    def load_source(self, run: str) -> dict[str, Any]:
        """Where the run's workflows came from."""
        return dict(json.loads((self.run_dir(run) / "source.json").read_text()))

    def deliver(self, run: str, payload: dict[str, Any], received_at: datetime, source: str = "") -> None:
        """Drop an event in the run's inbox."""
        inbox = self.run_dir(run) / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        record = {"payload": payload, "receivedAt": received_at.isoformat(), "source": source}
        name = f"{received_at.strftime('%Y%m%dT%H%M%S.%f')}-{os.getpid()}-{len(list(inbox.iterdir()))}.json"
        tmp = inbox / (name + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(inbox / name)

    def inbox(self, run: str) -> list[ArrivedEvent]:
        """Events delivered to the run."""
        inbox = self.run_dir(run) / "inbox"
        if not inbox.exists():
            return []
        events = []
        for path in sorted(inbox.glob("*.json")):
            record = json.loads(path.read_text())
            events.append(
                ArrivedEvent(
                    record["payload"], datetime.fromisoformat(record["receivedAt"]), record["source"]
                )
            )
        return events

    def claim(self, run: str) -> int | None:
        """Become the process that drives ``run``; return the pid of a live driver if there is one."""
        path = self.run_dir(run) / "driver.pid"
        if path.exists():
            try:
                pid = int(path.read_text())
                if pid != os.getpid():
                    os.kill(pid, 0)
                    return pid
            except (ValueError, ProcessLookupError, PermissionError):
                pass
        path.write_text(str(os.getpid()))
        return None

    def release(self, run: str) -> None:
        """Stop driving ``run``."""
        (self.run_dir(run) / "driver.pid").unlink(missing_ok=True)
