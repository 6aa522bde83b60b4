"""Workflows the operator benchmark runs; step pods import this module (the process node's PYTHONPATH)."""

from __future__ import annotations

import kubestep


@kubestep.workflow("ten-steps")
def ten_steps(ctx: kubestep.Context, step: kubestep.Step) -> int:
    """Ten trivial steps in a row: what is measured is kubestep's own overhead per step."""
    total = 0
    for i in range(10):
        total += step.run(f"step-{i}", lambda i=i: i)
    return total
