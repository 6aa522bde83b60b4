"""Workflows for the flow-control tests: every step execution leaves a timed trace the test can read.

Configured through the step pods' environment (``spec.podTemplate.env`` of the Workflow):

* ``FLOW_DATA_DIR`` (required): each execution of a step appends two JSON lines to
  ``FLOW_DATA_DIR/trace.log``: ``{"run", "tenant", "step", "attempt", "what": "start"|"end", "t"}``, ``t``
  being the wall-clock time in seconds.
* ``FLOW_STEP_SECONDS``: how long every step takes (default 1).
* ``FLOW_GATED``: when ``1``, a step, once started, waits until ``FLOW_DATA_DIR/go`` exists — so the test
  decides when Jobs end (a broken test never hangs a pod: the wait gives up after two minutes).
* ``FLOW_NAP``: the sleep of ``flow-nap`` (default 3s).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import kubestep

GATE_TIMEOUT_SECONDS = 120.0


def _data_dir() -> Path:
    return Path(os.environ["FLOW_DATA_DIR"])


def _trace(ctx: kubestep.Context, step_id: str, what: str) -> None:
    line = json.dumps(
        {
            "run": ctx.run_id,
            "tenant": ctx.event.data.get("tenant", ""),
            "step": step_id,
            "attempt": ctx.attempt,
            "what": what,
            "t": time.time(),
        }
    )
    # One short write in append mode: lines of concurrent pods never interleave.
    fd = os.open(_data_dir() / "trace.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _work(ctx: kubestep.Context, step_id: str) -> dict[str, Any]:
    _trace(ctx, step_id, "start")
    time.sleep(float(os.environ.get("FLOW_STEP_SECONDS", "1")))
    if os.environ.get("FLOW_GATED") == "1":
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while not (_data_dir() / "go").exists():
            if time.monotonic() > deadline:
                raise kubestep.NonRetriableError("the test never opened the gate")
            time.sleep(0.05)
    _trace(ctx, step_id, "end")
    return {"step": step_id}


@kubestep.workflow("flow-work", trigger="test/flow")
def work(ctx: kubestep.Context, step: kubestep.Step) -> Any:
    """One traced step."""
    return step.run("work", lambda: _work(ctx, "work"))


@kubestep.workflow("flow-nap", trigger="test/nap")
def nap(ctx: kubestep.Context, step: kubestep.Step) -> Any:
    """A traced step, a sleep (no pod alive), another traced step."""
    step.run("before", lambda: _work(ctx, "before"))
    step.sleep("nap", os.environ.get("FLOW_NAP", "3s"))
    return step.run("after", lambda: _work(ctx, "after"))
