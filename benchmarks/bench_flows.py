"""Workflows the benchmarks run; step pods import this module (the process node's PYTHONPATH)."""

from __future__ import annotations

import kubestep


@kubestep.workflow("ten-steps")
def ten_steps(ctx: kubestep.Context, step: kubestep.Step) -> int:
    """Ten trivial steps in a row: what is measured is kubestep's own overhead per step."""
    total = 0
    for i in range(10):
        total += step.run(f"step-{i}", lambda i=i: i)
    return total


@kubestep.workflow("one-step")
def one_step(ctx: kubestep.Context, step: kubestep.Step) -> int:
    """One trivial step whose output is the function's: a run needs exactly one pod."""
    return int(step.run("only", lambda: 1))


@kubestep.workflow("five-steps")
def five_steps(ctx: kubestep.Context, step: kubestep.Step) -> int:
    """Five trivial steps in a row."""
    total = 0
    for i in range(5):
        total += step.run(f"step-{i}", lambda i=i: i)
    return total


@kubestep.workflow("hundred-steps")
def hundred_steps(ctx: kubestep.Context, step: kubestep.Step) -> int:
    """A hundred trivial steps in a row (the local-run figure)."""
    total = 0
    for i in range(100):
        total += step.run(f"step-{i}", lambda i=i: i)
    return total
