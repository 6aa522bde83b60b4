"""kubestep: durable, step-based background workflows on Kubernetes.

Workflow code imports this package::

    import kubestep

    @kubestep.workflow("process-contacts-csv-upload", trigger="api/contact_list.uploaded")
    def process(ctx: kubestep.Context, step: kubestep.Step) -> dict:
        rows = step.run("validate-upload-contents", validate, ctx.event.data["filename"])
        ...
"""

from kubestep.sdk import (
    Context,
    EventPayload,
    NondeterminismError,
    NonRetriableError,
    RetryAfterError,
    Step,
    StepError,
    StepOptions,
    TriggerSpec,
    WorkflowDefinitionError,
    WorkflowFunction,
    workflow,
)

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
