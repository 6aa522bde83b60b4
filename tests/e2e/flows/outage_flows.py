"""A workflow for the API-server outage test: traced steps, a retry after a backoff and a sleep.

The flow: ``fetch`` → ``check`` → (``nap``, a ``step.sleep``, when ``event.data.nap`` is set) → ``store``
→ ``report``. ``check`` fails its first attempt when ``event.data.flaky`` is true, so its retry waits out
the Workflow's backoff. Each execution of step ``S`` appends ``S <attempt> start`` and, when its body
returns, ``S <attempt> ok`` or ``S <attempt> fail`` to ``<event.data.dir>/<run>.log``, so the test counts
how often each body ran. ``event.data.seconds`` is how long each body takes (default 1).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import kubestep

STEPS = ("fetch", "check", "store", "report")


def _trace(directory: str, run: str, line: str) -> None:
    with (Path(directory) / f"{run}.log").open("a") as trace:
        trace.write(line + "\n")
        trace.flush()
        os.fsync(trace.fileno())


def _work(ctx: kubestep.Context, name: str, fail_first: bool = False) -> dict[str, Any]:
    data = ctx.event.data
    _trace(data["dir"], ctx.run_id, f"{name} {ctx.attempt} start")
    time.sleep(float(data.get("seconds", 1)))
    if fail_first and ctx.attempt == 1:
        _trace(data["dir"], ctx.run_id, f"{name} {ctx.attempt} fail")
        raise RuntimeError(f"{name}: attempt 1 fails on purpose")
    _trace(data["dir"], ctx.run_id, f"{name} {ctx.attempt} ok")
    return {"step": name, "attempt": ctx.attempt}


@kubestep.workflow("outage-flow", trigger="test/outage")
def outage_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Four traced steps; the second may fail once, and a sleep may come after it."""
    data = ctx.event.data
    out = {"fetch": step.run("fetch", _work, ctx, "fetch")}
    out["check"] = step.run("check", _work, ctx, "check", bool(data.get("flaky")))
    if data.get("nap"):
        step.sleep("nap", data["nap"])
    out["store"] = step.run("store", _work, ctx, "store")
    out["report"] = step.run("report", _work, ctx, "report")
    return out
