"""What workflow code imports (re-exported as ``kubestep``)."""

from kubestep.sdk.errors import (
    NondeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    WorkflowDefinitionError,
)
from kubestep.sdk.options import StepOptions
from kubestep.sdk.step import Step
from kubestep.sdk.workflow import Context, EventPayload, TriggerSpec, WorkflowFunction, workflow

__all__ = [
    "Context",
    "EventPayload",
    "NonRetriableError",
    "NondeterminismError",
    "RetryAfterError",
    "Step",
    "StepError",
    "StepOptions",
    "TriggerSpec",
    "WorkflowDefinitionError",
    "WorkflowFunction",
    "workflow",
]
