"""A workflow for the leader-election tests: three steps, each leaving a trace line per execution.

Each execution of a step appends ``<step> <attempt> start`` and ``<step> <attempt> ok`` to
``<event.data.dir>/<run>.log``, so a test counts how often each step body of each run ran.
``event.data.seconds`` is how long each step takes (default 1).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import kubestep

STEPS = ("one", "two", "three")


def _trace(directory: str, run: str, line: str) -> None:
    with (Path(directory) / f"{run}.log").open("a") as trace:
        trace.write(line + "\n")
        trace.flush()
        os.fsync(trace.fileno())


def _work(ctx: kubestep.Context, directory: str, name: str, seconds: float) -> dict[str, Any]:
    _trace(directory, ctx.run_id, f"{name} {ctx.attempt} start")
    time.sleep(seconds)
    _trace(directory, ctx.run_id, f"{name} {ctx.attempt} ok")
    return {"step": name, "attempt": ctx.attempt}


@kubestep.workflow("chain-flow", trigger="test/chain.requested")
def chain_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Three traced steps in a row."""
    data = ctx.event.data
    seconds = float(data.get("seconds", 1))
    return {name: step.run(name, _work, ctx, data["dir"], name, seconds) for name in STEPS}
