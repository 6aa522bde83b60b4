"""A workflow for the debounce and batch tests: it returns the events it received, so the run's output
shows which events the operator gave it (`ctx.event` and `ctx.events`)."""

from __future__ import annotations

from typing import Any

import kubestep


@kubestep.workflow("gather-events", trigger="test/gather")
def collect(ctx: kubestep.Context, step: kubestep.Step) -> Any:
    """One step that echoes the events' data."""
    return step.run(
        "collect",
        lambda: {"event": ctx.event.data, "events": [e.data for e in ctx.events]},
    )
