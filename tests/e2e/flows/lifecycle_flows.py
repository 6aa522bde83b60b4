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


def explode(reason: str) -> None:
    """A step that fails for good."""
    raise kubestep.NonRetriableError(reason)


def append_line(path: str, text: str) -> str:
    """Append ``text`` to the file ``path`` (a test counts the lines) and return it."""
    with open(path, "a") as handle:
        handle.write(text + "\n")
    return text


@kubestep.workflow("doomed-flow", trigger="test/doomed.requested")
def doomed_flow(ctx: kubestep.Context, step: kubestep.Step) -> str:
    """A step that works, then one that fails for good with ``event.data.reason``."""
    step.run("prepare", prepare)
    step.run("explode", explode, str(ctx.event.data.get("reason", "boom")))
    return "unreachable"


def on_doomed_failure(ctx: kubestep.Context, step: kubestep.Step) -> str:
    """`onFailure` handler of doomed-flow: records the failed run and its error in the failed run's
    ``event.data.marker`` file."""
    data = ctx.event.data
    error = data["error"]
    line = f"{data['run']}: {error['type']}: {error['message']} (step {error['step']})"
    return str(step.run("record-failure", append_line, data["event"]["data"]["marker"], line))


def linger(marker: str, seconds: float) -> float:
    """Note in ``marker`` that the step runs, then take ``seconds``."""
    import time

    append_line(marker, "slow step started")
    time.sleep(seconds)
    append_line(marker, "slow step finished")
    return seconds


@kubestep.workflow("cancellable-flow", trigger="test/cancellable.requested")
def cancellable_flow(ctx: kubestep.Context, step: kubestep.Step) -> str:
    """A quick step, a slow one, and one that must never run once the run is cancelled."""
    marker = str(ctx.event.data["marker"])
    step.run("prepare", prepare)
    step.run("slow-step", linger, marker, float(ctx.event.data.get("seconds", 60)))
    return str(step.run("after", append_line, marker, "after ran"))


def note_tick(marker: str, scheduled_at: str) -> str:
    """Record a tick's scheduled time in ``marker``."""
    return append_line(marker, scheduled_at)


def ticking_flow(ctx: kubestep.Context, step: kubestep.Step) -> str:
    """Started by a `cron` trigger: records the tick it was started for in the file named by the
    ``TICK_MARKER`` environment variable of its pod."""
    import os

    return str(step.run("note-tick", note_tick, os.environ["TICK_MARKER"], ctx.event.data["scheduledAt"]))


def quick_flow(ctx: kubestep.Context, step: kubestep.Step) -> int:
    """One short step."""
    return int(step.run("prepare", prepare))
