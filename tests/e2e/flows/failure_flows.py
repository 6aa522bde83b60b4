"""Workflows of the failure-mode end-to-end tests (``tests/e2e/test_operator_failures.py``).

Step pods import this module as a workflow image would (``tests/e2e/flows`` is on the node's
``PYTHONPATH``). Each workflow takes what it needs from its event's data, so the tests choose paths and
durations without environment variables.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import kubestep


def sleep_with_marker(marker: str, seconds: float) -> dict[str, Any]:
    """Append a line to ``marker`` (so a test sees the step running), sleep, append another line."""
    path = Path(marker)
    with path.open("a") as handle:
        handle.write(f"started {os.getpid()}\n")
    print(f"slow step started (pid {os.getpid()}), sleeping {seconds}s", flush=True)
    time.sleep(seconds)
    with path.open("a") as handle:
        handle.write(f"finished {os.getpid()}\n")
    print("slow step finished", flush=True)
    return {"slept": seconds, "pid": os.getpid()}


def clock() -> float:
    """The wall-clock time, as a step (time belongs inside steps)."""
    return time.time()


def double(number: int) -> int:
    """Twice ``number``."""
    print(f"doubling {number}", flush=True)
    return number * 2


@kubestep.workflow("slow-flow", trigger="test/slow.requested")
def slow_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """One step that runs for ``event.data.seconds`` seconds, writing to ``event.data.marker``."""
    data = ctx.event.data
    slept = step.run("slow-step", sleep_with_marker, data["marker"], float(data.get("seconds", 5)))
    return {"slow": slept}


@kubestep.workflow("quick-flow", trigger="test/quick.requested")
def quick_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """One short step."""
    return {"doubled": step.run("double", double, int(ctx.event.data.get("number", 1)))}


@kubestep.workflow("nap-flow", trigger="test/nap.requested")
def nap_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """A step, a durable sleep of ``event.data.nap``, another step."""
    before = step.run("before", clock)
    step.sleep("nap", str(ctx.event.data.get("nap", "3s")))
    after = step.run("after", clock)
    return {"before": before, "after": after}


@kubestep.workflow("approval-flow", trigger="test/approval.requested")
def approval_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Wait for an ``app/approved`` event about the same request; return it (or None on timeout)."""
    approval = step.wait_for_event(
        "approval",
        event="app/approved",
        timeout="2m",
        if_="async.data.request == event.data.request",
    )
    if approval is None:
        return {"approved": False, "approval": None}
    return {
        "approved": True,
        "approval": {
            "name": approval.name,
            "data": approval.data,
            "user": approval.user,
            "id": approval.id,
        },
    }


@kubestep.workflow("child-flow", trigger="test/child.requested")
def child_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Double ``event.data.number`` in a step; invoked by ``parent-flow``."""
    doubled = step.run("double", double, int(ctx.event.data["number"]))
    return {"doubled": doubled, "from": ctx.event.name}


@kubestep.workflow("parent-flow", trigger="test/parent.requested")
def parent_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Invoke ``child-flow`` with ``event.data.number`` and return its output."""
    result = step.invoke("call-child", "child-flow", {"number": int(ctx.event.data["number"])}, timeout="2m")
    return {"child": result}


def timed_nap(seconds: float) -> dict[str, float]:
    """Sleep ``seconds`` and say when it began and ended (wall clock)."""
    began = time.time()
    time.sleep(seconds)
    return {"began": began, "ended": time.time()}


@kubestep.workflow("parallel-flow", trigger="test/parallel.requested")
def parallel_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Two steps of ``event.data.seconds`` each, planned together: they should run at the same time."""
    seconds = float(ctx.event.data.get("seconds", 3))
    left, right = step.parallel(
        lambda: step.run("left", timed_nap, seconds),
        lambda: step.run("right", timed_nap, seconds),
    )
    return {"left": left, "right": right}


@kubestep.workflow("big-output-flow", trigger="test/big.requested")
def big_output_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """One step returning ``event.data.bytes`` characters ``<``, returned again as the run's output.

    Kubernetes stores ``<`` escaped as ``\u003c``: six bytes of the run's status for each one counted.
    """
    blob = step.run("make-blob", lambda: "<" * int(ctx.event.data["bytes"]))
    return {"again": blob}


def _file_name() -> str:
    """A file name that is not UTF-8, as ``os.fsdecode`` gives it: with a lone surrogate."""
    return os.fsdecode(b"caf\xe9.csv")


def read_odd_file(attempt: int) -> str:
    """Fail the first attempt with a message holding the odd file name; then succeed."""
    if attempt == 1:
        raise FileNotFoundError(f"no such upload: {_file_name()}")
    return "read"


@kubestep.workflow("odd-names-flow", trigger="test/odd.requested")
def odd_names_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """A step whose first attempt fails with an unencodable message; then one returning such a name."""
    read = step.run("read-upload", read_odd_file, ctx.attempt)
    if ctx.event.data.get("return_odd"):
        step.run("list-uploads", lambda: [_file_name()])
    return {"read": read}


@kubestep.workflow("exit-flow", trigger="test/exit.requested")
def exit_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Calls sys.exit between two steps."""
    step.run("first", lambda: 1)
    sys.exit(3)


def relay_flow(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """A step returning ``event.data.bytes`` characters, then one that reads them back from its input.

    The second step's pod replays the first from the run's state: past the bound on what a pod's own
    annotation carries, that state reaches it from a Secret.
    """
    blob = step.run("make-blob", lambda: "y" * int(ctx.event.data["bytes"]))
    length = step.run("measure", lambda: len(blob))
    return {"length": length}
