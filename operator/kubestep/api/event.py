"""The `Event` resource: something that happened; it starts workflows and resumes waiting runs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from kubestep.api.base import API_VERSION, Condition, Model, ObjectMeta, SpecModel
from kubestep.api.workflow import EVENT_NAME_FORMAT

_PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}

#: How deep an Event's `data` (and `user`) may nest objects and lists. The API server cannot check the
#: depth of free JSON, so the operator refuses a deeper Event (`InvalidEvent`) and `kubestep run` too.
#: Far below the JSON parsers' own limits (about 200 levels in Pydantic's, which reads the run's state in
#: every step pod): a run's state adds a few levels around the data.
MAX_DATA_DEPTH: Final = 64

_IMMUTABLE_SPEC: dict[str, Any] = {
    "rule": "self == oldSelf",
    "message": "spec is immutable: an Event's spec cannot change once published; publish a new Event "
    "(a new metadata.name) instead",
}


#: Event names under this prefix are kubestep's own (`kubestep/run.failed`, ...): users cannot publish them.
SYSTEM_EVENT_PREFIX: Final = "kubestep/"
#: Object names of the Events the operator publishes about runs; only those may carry a reserved name.
SYSTEM_OBJECT_PREFIX: Final = "kubestep.run."
_RESERVED = (
    f"spec.name starts with {SYSTEM_EVENT_PREFIX!r}, which is reserved for the events kubestep publishes "
    "itself (kubestep/run.failed, kubestep/run.cancelled, kubestep/run.finished); name your event under "
    "your own prefix, e.g. api/contact_list.uploaded"
)
_RESERVED_NAMES: dict[str, Any] = {
    # A fence against accidents; the chart's ValidatingAdmissionPolicy lets only the operator's
    # ServiceAccount create such Events at all (a rule here cannot see who is asking).
    "rule": f"!self.spec.name.startsWith('{SYSTEM_EVENT_PREFIX}') "
    f"|| self.metadata.name.startsWith('{SYSTEM_OBJECT_PREFIX}')",
    "message": _RESERVED,
    "fieldPath": ".spec.name",
}


def nesting_depth(value: Any) -> int:
    """How many levels of objects and lists ``value`` nests (a scalar: 0, ``{}``: 1, ``{"a": []}``: 2).

    Iterative, so that a document deeper than Python's recursion limit is measured rather than crashing.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


class EventSpec(SpecModel):
    """The event's payload, in the shape Inngest users know."""

    name: Annotated[str, EVENT_NAME_FORMAT] = Field(min_length=1, max_length=253)
    """The event's name, for example `api/contact_list.uploaded` (Kubernetes object names cannot hold `/`,
    so the name lives here)."""
    data: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_PRESERVE)
    """Free JSON data of the event, available to the workflow as `event.data`. It may nest objects and lists
    at most 64 levels deep. Keep large documents in object storage and send a reference: an Event is
    stored in etcd, which caps an object near 1.5 MiB."""
    user: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_PRESERVE)
    """Free JSON about the user who caused the event, available as `event.user`; at most 64 levels deep."""
    id: str | None = Field(default=None, max_length=253)
    """Idempotency key: a second event with the same `id` and name within the dedupe window starts nothing.
    Without one, the workflow sees the object's `metadata.uid` as the event's id."""
    ts: datetime | None = None
    """When the event happened; defaults to when it was created."""

    def completed(self, event_id: str, ts: datetime | None) -> Self:
        """The event with an id and a time: its own, else ``event_id`` and ``ts`` (every event has both)."""
        return self.model_copy(update={"id": self.id or event_id, "ts": self.ts or ts})

    def as_payload(self) -> dict[str, Any]:
        """The event as workflow code and CEL expressions see it."""
        return {
            "name": self.name,
            "data": self.data,
            "user": self.user,
            "id": self.id or "",
            "ts": self.ts.isoformat() if self.ts else "",
        }


def completed_payload(payload: dict[str, Any], event_id: str, ts: datetime) -> dict[str, Any]:
    """An event as code sees it (``name``, ``data``, ``user``, ``id``, ``ts``), with an id and a time: its
    own, else ``event_id`` and ``ts``."""
    return {**payload, "id": payload.get("id") or event_id, "ts": payload.get("ts") or ts.isoformat()}


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

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_RESERVED_NAMES]})

    api_version: Literal["kubestep.dev/v1alpha1"] = API_VERSION
    """`kubestep.dev/v1alpha1`."""
    kind: Literal["Event"] = "Event"
    """`Event`."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: EventSpec = Field(json_schema_extra={"x-kubernetes-validations": [_IMMUTABLE_SPEC]})
    """The event. It cannot change once published: publish a new Event instead."""
    status: EventStatus = Field(default_factory=EventStatus)
    """Written by the operator."""

    @model_validator(mode="after")
    def _not_too_deep(self) -> Event:
        if self.spec.name.startswith(SYSTEM_EVENT_PREFIX) and not self.metadata.name.startswith(
            SYSTEM_OBJECT_PREFIX
        ):
            raise ValueError(_RESERVED)
        # Checked on the Event only: a run's copy of its event (a subclass of EventSpec) was checked here
        # before the run existed, and an invoke's data is the engine's to bound.
        for field in ("data", "user"):
            depth = nesting_depth(getattr(self.spec, field))
            if depth > MAX_DATA_DEPTH:
                raise PydanticCustomError(
                    "kubestep_depth",
                    "spec.{field} nests {depth} levels deep, more than the {limit} an Event may hold; "
                    "flatten "
                    "it, or keep the document in object storage and send a reference to it",
                    {"field": field, "depth": depth, "limit": MAX_DATA_DEPTH},
                )
        return self
