"""A workflow for the operator crash tests: every step execution leaves a trace the test can count.

Configured through the step pods' environment (``spec.podTemplate.env`` of the Workflow):

* ``CRASH_DATA_DIR`` (required): each execution of step ``S`` appends ``<attempt> start`` and then
  ``<attempt> ok`` or ``<attempt> fail`` to ``CRASH_DATA_DIR/S.log``, so the test counts executions.
* ``CRASH_GATES``: comma-separated step ids whose attempt ``N``, once started, blocks until the test
  creates ``CRASH_DATA_DIR/S-N.go`` — so the test decides exactly when a running step's Job ends.
* ``CRASH_STEP_SECONDS``: how long every ``step.run`` takes besides its gate (default 1).

The flow: ``prepare`` → ``flaky`` (fails its first attempt, then succeeds) → ``nap`` (``step.sleep`` of
``CRASH_NAP``, default 5s) → ``finish``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import kubestep

#: How long a gated step waits for its gate before giving up (so a broken test never hangs a pod).
GATE_TIMEOUT_SECONDS = 120.0
STEPS = ("prepare", "flaky", "finish")


def _data_dir() -> Path:
    return Path(os.environ["CRASH_DATA_DIR"])


def _record(step_id: str, attempt: int, what: str) -> None:
    with (_data_dir() / f"{step_id}.log").open("a") as trace:
        trace.write(f"{attempt} {what}\n")
        trace.flush()
        os.fsync(trace.fileno())


def _gated(step_id: str) -> bool:
    return step_id in {g.strip() for g in os.environ.get("CRASH_GATES", "").split(",") if g.strip()}


def _work(step_id: str, attempt: int, fail_first: bool = False) -> dict[str, Any]:
    """The body of every step: record the start, take some time, wait for the gate, record the end."""
    _record(step_id, attempt, "start")
    time.sleep(float(os.environ.get("CRASH_STEP_SECONDS", "1")))
    if _gated(step_id):
        gate = _data_dir() / f"{step_id}-{attempt}.go"
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while not gate.exists():
            if time.monotonic() > deadline:
                _record(step_id, attempt, "fail")
                raise kubestep.NonRetriableError(f"gate {gate} never opened")
            time.sleep(0.05)
    if fail_first and attempt == 1:
        _record(step_id, attempt, "fail")
        raise RuntimeError(f"{step_id}: attempt {attempt} fails on purpose")
    _record(step_id, attempt, "ok")
    return {"step": step_id, "attempt": attempt}


@kubestep.workflow("crash-flow", trigger="test/crash")
def crash_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Three recorded steps, one of which is retried once, and a sleep between the last two."""
    prepared = step.run("prepare", lambda: _work("prepare", ctx.attempt))
    flaky = step.run("flaky", lambda: _work("flaky", ctx.attempt, fail_first=True))
    step.sleep("nap", os.environ.get("CRASH_NAP", "5s"))
    finished = step.run("finish", lambda: _work("finish", ctx.attempt))
    return {"prepare": prepared, "flaky": flaky, "finish": finished}
