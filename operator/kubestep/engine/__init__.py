"""The pure engine: from a run, what was observed and the time, decide the new status and the actions.

No I/O, no kopf, no Kubernetes client: the operator and the local runner are adapters around it.
"""

from kubestep.engine.actions import (
    Action,
    AnnounceEnd,
    CancelChild,
    Note,
    PublishEvents,
    RequeueAt,
    StartChild,
    StartExecution,
    StopExecution,
)
from kubestep.engine.decide import Decision, decide
from kubestep.engine.observations import ArrivedEvent, ChildResult, ExitKind, Observed, Outcome, Stalled

__all__ = [
    "Action",
    "AnnounceEnd",
    "ArrivedEvent",
    "CancelChild",
    "ChildResult",
    "Decision",
    "ExitKind",
    "Note",
    "Observed",
    "Outcome",
    "PublishEvents",
    "RequeueAt",
    "Stalled",
    "StartChild",
    "StartExecution",
    "StopExecution",
    "decide",
]
