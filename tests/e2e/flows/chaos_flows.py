"""A workflow for the chaos test: six short steps, each execution tracing its start and its end.

``CHAOS_DATA_DIR`` (required, from the Workflow's ``spec.podTemplate.env``): every execution of step ``S``
of run ``R`` appends ``S <attempt> start`` and, when its body returns, ``S <attempt> ok`` to
``CHAOS_DATA_DIR/R.log``, so the test knows every time a body ran and whether it finished.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import kubestep

STEPS = ("fetch", "parse", "transform", "enrich", "load", "report")


def _trace(run: str, line: str) -> None:
    with (Path(os.environ["CHAOS_DATA_DIR"]) / f"{run}.log").open("a") as trace:
        trace.write(line + "\n")
        trace.flush()
        os.fsync(trace.fileno())


def _work(run: str, step_id: str, attempt: int) -> dict[str, int]:
    _trace(run, f"{step_id} {attempt} start")
    time.sleep(random.uniform(0.5, 2.0))
    _trace(run, f"{step_id} {attempt} ok")
    return {"attempt": attempt}


@kubestep.workflow("chaos-flow", trigger="test/chaos")
def chaos_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, int]:
    """Six steps one after the other; the output counts them."""
    done = 0
    for step_id in STEPS:
        step.run(step_id, _work, ctx.run_id, step_id, ctx.attempt)
        done += 1
    return {"steps": done}
