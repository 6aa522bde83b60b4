"""Workflows of the garbage-collection end-to-end test (``tests/e2e/test_lifecycle_gc.py``)."""

from __future__ import annotations

import kubestep


def greet(who: str) -> str:
    """Print a line the run's status must keep once the step's Job is gone."""
    print(f"hello from {who}", flush=True)
    return who


def printing_flow(ctx: kubestep.Context, step: kubestep.Step) -> str:
    """One step that prints ``event.data.who``."""
    return str(step.run("greet", greet, str(ctx.event.data["who"])))


def held_flow(ctx: kubestep.Context, step: kubestep.Step) -> bool:
    """Waits (up to an hour) for `test/gc.release`: unfinished until then."""
    released = step.wait_for_event("release", "test/gc.release", timeout="1h")
    return released is not None
