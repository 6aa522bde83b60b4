"""A workflow that tells which build of its image each step ran in (the image's ``PINNED_BUILD``)."""

from __future__ import annotations

import os
from typing import Any

import kubestep


def build() -> str:
    """The build of the image this step runs in, as its Dockerfile set it."""
    return os.environ.get("PINNED_BUILD", "unknown")


@kubestep.workflow("pinned")
def pinned(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    first = step.run("first", build)
    # The test pushes the image's tag again while the run waits here, then lets it go on.
    step.wait_for_event("go-ahead", "test/pinned.go", timeout="10m")
    second = step.run("second", build)
    # And holds it again, so the test can look at the pods before the run ends.
    step.wait_for_event("finish", "test/pinned.finish", timeout="10m")
    return {"first": first, "second": second}
