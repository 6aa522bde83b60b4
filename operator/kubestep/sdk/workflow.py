"""The ``@kubestep.workflow`` decorator and the context a workflow function receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubestep.sdk.step import Step


@dataclass(frozen=True)
class EventPayload:
    """The event that started the run (or that a ``wait_for_event`` received)."""

    name: str
    """The event's name, e.g. ``api/contact_list.uploaded``."""
    data: dict[str, Any] = field(default_factory=dict)
    """Free JSON data of the event."""
    user: dict[str, Any] = field(default_factory=dict)
    """Free JSON about the user who caused it."""
    id: str = ""
    """The idempotency key, if any."""
    ts: str = ""
    """When it happened (RFC 3339), if known."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EventPayload:
        """Build from the JSON form used in run state."""
        return cls(
            name=str(raw.get("name", "")),
            data=dict(raw.get("data") or {}),
            user=dict(raw.get("user") or {}),
            id=str(raw.get("id") or ""),
            ts=str(raw.get("ts") or ""),
        )


@dataclass(frozen=True)
class Context:
    """What a workflow function knows about its run besides its steps."""

    event: EventPayload
    """The triggering event."""
    run_id: str
    """The run's name."""
    attempt: int = 1
    """The attempt number of the step being executed in this process (1-based)."""
    events: tuple[EventPayload, ...] = ()
    """The run's events, oldest first: under the workflow's `spec.batch`, all those the run received (the
    first is also `event`); otherwise just `event`."""


@dataclass(frozen=True)
class TriggerSpec:
    """An event trigger declared in code."""

    event: str
    """The event's name."""
    if_: str | None = None
    """Optional CEL condition over ``event``."""


WorkflowFn = Callable[[Context, "Step"], Any]


@dataclass(frozen=True)
class WorkflowFunction:
    """A function decorated with ``@kubestep.workflow``; still callable as the plain function."""

    id: str
    """The workflow's id; by convention the ``metadata.name`` of its Workflow resource."""
    fn: WorkflowFn
    """The function itself."""
    triggers: tuple[TriggerSpec, ...] = ()
    """Event triggers declared in code (the Workflow resource's triggers decide in a cluster)."""

    def __call__(self, ctx: Context, step: Step) -> Any:
        return self.fn(ctx, step)


def workflow(
    id: str,
    *,
    trigger: str | TriggerSpec | list[str | TriggerSpec] | None = None,
) -> Callable[[WorkflowFn], WorkflowFunction]:
    """Declare a workflow function ``fn(ctx, step)``.

    ``trigger`` names the event (or events) that start it; pass ``kubestep.TriggerSpec(event, if_=...)``
    for a CEL condition. Example::

        @kubestep.workflow("process-contacts-csv-upload", trigger="api/contact_list.uploaded")
        def process(ctx: kubestep.Context, step: kubestep.Step) -> dict:
            rows = step.run("validate-upload-contents", validate, ctx.event.data["filename"])
            ...
    """
    raw = trigger if isinstance(trigger, list) else ([] if trigger is None else [trigger])
    triggers = tuple(t if isinstance(t, TriggerSpec) else TriggerSpec(event=t) for t in raw)

    def decorate(fn: WorkflowFn) -> WorkflowFunction:
        return WorkflowFunction(id=id, fn=fn, triggers=triggers)

    return decorate
