"""The `Event` resource: something that happened; it starts workflows and resumes waiting runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from kubestep.api.base import API_VERSION, Condition, Model, ObjectMeta, SpecModel
from kubestep.api.workflow import EVENT_NAME_PATTERN

_PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class EventSpec(SpecModel):
    """The event's payload, in the shape Inngest users know."""

    name: str = Field(min_length=1, max_length=253, pattern=EVENT_NAME_PATTERN)
    """The event's name, for example `api/contact_list.uploaded` (Kubernetes object names cannot hold `/`,
    so the name lives here)."""
    data: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_PRESERVE)
    """Free JSON data of the event, available to the workflow as `event.data`."""
    user: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_PRESERVE)
    """Free JSON about the user who caused the event, available as `event.user`."""
    id: str | None = Field(default=None, max_length=253)
    """Idempotency key: a second event with the same `id` and name within the dedupe window starts nothing."""
    ts: datetime | None = None
    """When the event happened; defaults to when it was created."""

    def as_payload(self) -> dict[str, Any]:
        """The event as workflow code and CEL expressions see it."""
        return {
            "name": self.name,
            "data": self.data,
            "user": self.user,
            "id": self.id or "",
            "ts": self.ts.isoformat() if self.ts else "",
        }


class EventRunRef(Model):
    """A run that an event started or resumed."""

    workflow: str
    """The workflow's name."""
    run: str
    """The WorkflowRun's name."""


class EventStatus(Model):
    """What the event did."""

    started: list[EventRunRef] = Field(default_factory=list)
    """Runs this event started."""
    resumed: list[EventRunRef] = Field(default_factory=list)
    """Waiting runs this event resumed."""
    conditions: list[Condition] = Field(default_factory=list)
    """`Processed` says whether the event was handled and, when it started nothing, why: no trigger matched,
    an expression failed, or a duplicate `id`."""


class Event(Model):
    """An event published with `kubectl apply` or `kubestep send`. Short name `kse`."""

    api_version: Literal["kubestep.dev/v1alpha1"] = API_VERSION
    """`kubestep.dev/v1alpha1`."""
    kind: Literal["Event"] = "Event"
    """`Event`."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: EventSpec
    """The event."""
    status: EventStatus = Field(default_factory=EventStatus)
    """Written by the operator."""
