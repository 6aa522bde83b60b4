"""A workflow for the chained-mode tests: four ``step.run`` steps, each leaving a trace the test counts.

``CHAIN_DATA_DIR`` (required): each execution of step ``S`` appends ``<attempt> start`` to
``CHAIN_DATA_DIR/S.log``. ``CHAIN_KILL``: the step whose first attempt kills its own process (SIGKILL, as
the kernel's OOM killer would) once started, so that the pod dies with the steps before it finished.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import kubestep


def _work(ctx: kubestep.Context, step_id: str, value: int) -> int:
    with (Path(os.environ["CHAIN_DATA_DIR"]) / f"{step_id}.log").open("a") as trace:
        trace.write(f"{ctx.attempt} start\n")
        trace.flush()
        os.fsync(trace.fileno())
    print(f"working on {step_id}", flush=True)
    if ctx.attempt == 1 and os.environ.get("CHAIN_KILL") == step_id:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


@kubestep.workflow("four-steps")
def four_steps(ctx: kubestep.Context, step: kubestep.Step) -> int:
    """s1 → s2 → s3 → s4, each returning its number; the function returns their sum."""
    total = 0
    for i in range(1, 5):
        total += step.run(f"s{i}", _work, ctx, f"s{i}", i)
    return total
