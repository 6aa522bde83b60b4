"""The workflow of the pause end-to-end test (``tests/e2e/test_lifecycle_pause.py``).

Configured through the step pods' environment: every step appends a JSON line
``{"run", "step", "what": "start"|"end", "t"}`` to ``PAUSE_DATA_DIR/trace.log``; the step ``first``, once
started, waits until ``PAUSE_DATA_DIR/gate`` exists, so the test decides when it ends (a broken test never
hangs a pod: the wait gives up after two minutes).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import kubestep

GATE_TIMEOUT_SECONDS = 120.0


def _data_dir() -> Path:
    return Path(os.environ["PAUSE_DATA_DIR"])


def _trace(run: str, step_id: str, what: str) -> None:
    line = json.dumps({"run": run, "step": step_id, "what": what, "t": time.time()})
    # One short write in append mode: lines of concurrent pods never interleave.
    fd = os.open(_data_dir() / "trace.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def first(run: str) -> str:
    """Waits for the test's gate."""
    _trace(run, "first", "start")
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not (_data_dir() / "gate").exists():
        if time.monotonic() > deadline:
            raise kubestep.NonRetriableError("the test never opened the gate")
        time.sleep(0.05)
    _trace(run, "first", "end")
    return "first"


def second(run: str) -> str:
    """Ends at once."""
    _trace(run, "second", "start")
    _trace(run, "second", "end")
    return "second"


@kubestep.workflow("pause-flow", trigger="test/pause")
def two_steps(ctx: kubestep.Context, step: kubestep.Step) -> list[str]:
    """Two traced steps."""
    return [step.run("first", first, ctx.run_id), step.run("second", second, ctx.run_id)]
