"""Shared model configuration: camelCase on the wire, field docstrings as descriptions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

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
    """Each problem of ``exc`` as ``field.path: message (got value)``, the way users are told.

    The value is left out when the message already quotes it (the worded checks of this package do), and a
    problem of the whole object has no path: its message names the fields.
    """
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        quoted = isinstance(value, str) and f"'{value}'" in err["msg"]
        shown = "" if isinstance(value, dict | list) or quoted else f" (got {value!r})"
        problems.append(f"{where}: {err['msg']}{shown}" if where else f"{err['msg']}{shown}")
    return problems


def cel_string(text: str) -> str:
    """``text`` as a CEL string literal (double-quoted, escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _add_rules(json_schema: JsonSchemaValue, *rules: dict[str, Any]) -> JsonSchemaValue:
    json_schema.setdefault("x-kubernetes-validations", []).extend(rules)
    return json_schema


@dataclass(frozen=True)
class Rule:
    """A CEL rule for the API server, as an ``Annotated`` marker of a type.

    A marker rather than ``Field(json_schema_extra=...)``: a field's own extras replace the type's, so two
    sources of rules (a format and a bound) would keep only one; markers add up.
    """

    rule: str
    """The CEL expression, true when the value is valid."""
    message: str
    """What is wrong and the fix."""
    message_expression: str | None = None
    """A CEL expression building the message, e.g. quoting the value."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The type's JSON Schema with the rule added (`kubestep.api.crdgen` keeps it)."""
        rule = {"rule": self.rule, "message": self.message}
        if self.message_expression:
            rule["messageExpression"] = self.message_expression
        return _add_rules(handler(schema), rule)


@dataclass(frozen=True)
class Worded:
    """A string format that Pydantic and the API server check alike, refused with a sentence.

    JSON Schema's ``pattern`` makes the API server answer with the bare regular expression
    (``should match '^([0-9]+...'``). Used as ``Annotated[str, Worded(pattern, problem)]`` instead, the
    field gets a CEL rule whose message quotes the value and says what is wrong and how to write it, and
    Pydantic (files read without an API server, objects the operator reads) says the same words.
    ``problem`` follows the quoted value: ``'5 minutes' is not a duration; write ..., e.g. 30s``.
    """

    pattern: str
    """A regular expression in the syntax that Python's ``re`` and Go's RE2 read alike, anchored with ``^``
    and ``$``, without a single quote (it goes into a CEL raw string)."""
    problem: str
    """What is wrong and the fix, with an example; a CEL string literal is made of it."""

    def rule(self) -> dict[str, str]:
        """The CEL rule of the CRD."""
        return {
            "rule": f"self.matches(r'{self.pattern}')",
            # Shown only if the expression cannot be evaluated.
            "message": f"the value {self.problem}",
            "messageExpression": '"\'" + self + "\' " + ' + cel_string(self.problem),
        }

    def check(self, value: str) -> str:
        """``value`` when it matches; otherwise the error Pydantic reports."""
        # Python's `$` also matches before a final newline, RE2's only at the end: fullmatch is RE2's reading.
        if re.fullmatch(self.pattern.removeprefix("^").removesuffix("$"), value) is None:
            raise PydanticCustomError(
                "kubestep_format", "'{value}' {problem}", {"value": value, "problem": self.problem}
            )
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Pydantic's check: the string's own schema, then :meth:`check`."""
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The field's JSON Schema with the CEL rule added (`kubestep.api.crdgen` keeps it)."""
        return _add_rules(handler(schema), self.rule())
