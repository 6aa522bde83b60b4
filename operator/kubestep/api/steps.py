"""The kinds of steps: shared by the runner's reports and a run's status.

Apart from the run model so that a step pod's runner, which reads and writes reports only, does not load
the Workflow and WorkflowRun models (its start is on every step's path).
"""

from __future__ import annotations

from enum import StrEnum


class StepType(StrEnum):
    """What kind of step a step is."""

    RUN = "run"
    SLEEP = "sleep"
    WAIT_FOR_EVENT = "wait_for_event"
    INVOKE = "invoke"
    SEND_EVENT = "send_event"
