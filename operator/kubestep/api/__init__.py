"""The kubestep resources as Pydantic models: the single source of truth for the CRDs."""

from kubestep.api.base import API_VERSION, GROUP, VERSION, Condition, ObjectMeta
from kubestep.api.event import Event, EventSpec, EventStatus
from kubestep.api.run import (
    Attempt,
    AttemptResult,
    ErrorInfo,
    Execution,
    RunEvent,
    RunPhase,
    StepPhase,
    StepStatus,
    StepType,
    WorkflowRun,
    WorkflowRunSpec,
    WorkflowRunStatus,
)
from kubestep.api.workflow import Backoff, RetryPolicy, Trigger, Workflow, WorkflowSpec, WorkflowStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Attempt",
    "AttemptResult",
    "Backoff",
    "Condition",
    "ErrorInfo",
    "Event",
    "EventSpec",
    "EventStatus",
    "Execution",
    "ObjectMeta",
    "RetryPolicy",
    "RunEvent",
    "RunPhase",
    "StepPhase",
    "StepStatus",
    "StepType",
    "Trigger",
    "Workflow",
    "WorkflowRun",
    "WorkflowRunSpec",
    "WorkflowRunStatus",
    "WorkflowSpec",
    "WorkflowStatus",
]
