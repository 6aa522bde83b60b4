"""Workflows of the run-lifecycle end-to-end tests (``tests/e2e/test_lifecycle_*.py``).

Step pods import this module as a workflow image would (``tests/e2e/flows`` is on the node's
``PYTHONPATH``).
"""

from __future__ import annotations

from typing import Any

import kubestep


class Unavailable(Exception):
    """A third-party service that is down."""


def prepare() -> int:
    """A first step that just works."""
    return 1


def fails_before(attempt: int, succeeds_at: int) -> int:
    """Fail every attempt before ``succeeds_at``."""
    print(f"attempt {attempt}", flush=True)
    if attempt < succeeds_at:
        raise Unavailable(f"attempt {attempt}: still down")
    return attempt


def always_fails(attempt: int) -> int:
    """Never succeeds."""
    raise Unavailable(f"attempt {attempt}: down for good")


def heavy() -> str:
    """A step that would need a big pod."""
    return "crunched"


@kubestep.workflow("policy-flow", trigger="test/policy.requested")
def policy_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """A flaky step that needs ``event.data.succeedsAt`` attempts, a heavy step whose code asks for its
    own timeout, and a step that always fails (its failure caught)."""
    step.run("prepare", prepare)
    flaky = step.run("flaky", fails_before, ctx.attempt, int(ctx.event.data.get("succeedsAt", 6)))
    crunched = step.run("heavy", heavy, opts=kubestep.StepOptions(timeout="5m"))
    try:
        step.run("steady", always_fails, ctx.attempt)
        steady = "succeeded"
    except kubestep.StepError as exc:
        steady = f"failed: {exc.error_type}"
    return {"flaky": flaky, "steady": steady, "heavy": crunched}
