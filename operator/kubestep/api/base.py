"""Shared model configuration: camelCase on the wire, field docstrings as descriptions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

GROUP: Final = "kubestep.dev"
VERSION: Final = "v1alpha1"
# Spelled out rather than built from GROUP and VERSION so that type checkers see the literal that the
# models' `api_version: Literal[...]` fields expect.
API_VERSION: Final = "kubestep.dev/v1alpha1"


class Model(BaseModel):
    """Base of every kubestep model: camelCase aliases, docstrings become schema descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes expects it: camelCase keys, JSON types, no empty optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SpecModel(Model):
    """A model users write: unknown fields are an error, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class ObjectMeta(Model):
    """The parts of Kubernetes object metadata that kubestep reads or sets."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    """The object's name, unique in its namespace."""
    namespace: str | None = None
    """The namespace the object lives in."""
    uid: str | None = None
    """The identifier the API server assigned."""
    generation: int | None = None
    """Incremented by the API server on every change of the spec."""
    resource_version: str | None = None
    """Opaque version used for optimistic concurrency."""
    creation_timestamp: datetime | None = None
    """When the object was created."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels of the object."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations of the object."""
    owner_references: list[dict[str, Any]] = Field(default_factory=list)
    """Objects that own this one (garbage collection)."""


class Condition(Model):
    """A Kubernetes-style condition, as `kubectl wait --for=condition=...` reads it."""

    type: str
    """The condition's name, for example `Ready` or `Succeeded`."""
    status: str = Field(json_schema_extra={"enum": ["True", "False", "Unknown"]})
    """`True`, `False` or `Unknown`."""
    reason: str = ""
    """A CamelCase word that says why the condition has its status."""
    message: str = ""
    """A sentence for people: what happened and, when something is wrong, how to fix it."""
    last_transition_time: datetime | None = None
    """When the status last changed."""
    observed_generation: int | None = None
    """The generation of the spec this condition was computed from."""


def set_condition(conditions: list[Condition], new: Condition, now: datetime) -> list[Condition]:
    """Return ``conditions`` with ``new`` in place of its type; the transition time moves only on change."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != new.type:
            out.append(cond)
            continue
        found = True
        changed = cond.status != new.status
        when = now if changed or cond.last_transition_time is None else cond.last_transition_time
        out.append(new.model_copy(update={"last_transition_time": when}))
    if not found:
        out.append(new.model_copy(update={"last_transition_time": now}))
    return out


def validation_problems(exc: ValidationError) -> list[str]:
    """Each problem of ``exc`` as ``field.path: message (got value)``, the way users are told."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        problems.append(f"{where}: {err['msg']}{shown}")
    return problems
