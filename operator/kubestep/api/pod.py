"""`spec.podTemplate`: the parts of a Pod that users set on every step pod, typed as Kubernetes types them.

Typed rather than free-form so that the API server checks them when the Workflow is applied (a bad
quantity is refused with a message naming `spec.podTemplate.resources.limits.cpu`) instead of when the
first step's Job is created. Field names and shapes are those of the Pod API, so a snippet copied from a
Pod works here; the operator passes them to the step pod unchanged.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from kubestep.api.base import Rule, SpecModel

#: A Kubernetes quantity that a resource may hold: a non-negative number with an optional binary (Ki, Mi,
#: Gi, ...), decimal (m, k, M, G, ...) or exponent (e3) suffix.
QUANTITY_PATTERN = (
    r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
)
_QUANTITY_PROBLEM = (
    "is not a quantity; write a number with an optional unit, e.g. 500m or 2 for CPU, 256Mi or 1Gi for memory"
)
_QUANTITY_RULE = Rule(
    # An integer or a string (x-kubernetes-int-or-string), as in a Pod.
    rule=f"type(self) == int ? self >= 0 : self.matches(r'{QUANTITY_PATTERN}')",
    message=f"the value {_QUANTITY_PROBLEM}",
    message_expression=f'"\'" + string(self) + "\' {_QUANTITY_PROBLEM}"',
)


def _quantity(value: str | int) -> str | int:
    text = str(value)
    if (isinstance(value, int) and value < 0) or (
        isinstance(value, str) and re.fullmatch(QUANTITY_PATTERN.strip("^$"), value) is None
    ):
        raise PydanticCustomError(
            "kubestep_quantity", "'{value}' {problem}", {"value": text, "problem": _QUANTITY_PROBLEM}
        )
    return value


#: A resource amount (`500m`, `2`, `256Mi`), written as a string or an integer as in a Pod.
Quantity = Annotated[
    Annotated[str, Field(max_length=64)] | int,
    _QUANTITY_RULE,
    AfterValidator(_quantity),
]
#: Resource amounts by resource name (`cpu`, `memory`, `ephemeral-storage`, `nvidia.com/gpu`, ...).
ResourceList = Annotated[dict[str, Quantity], Field(max_length=32)]


class ResourceRequirements(SpecModel):
    """Compute resources of the step container."""

    limits: ResourceList | None = None
    """The most the container may use, by resource, e.g. `cpu: 500m`, `memory: 256Mi`."""
    requests: ResourceList | None = None
    """What the scheduler reserves for the container, by resource; at most the limit."""


class ConfigMapKeySelector(SpecModel):
    """A key of a ConfigMap."""

    name: str = Field(min_length=1, max_length=253)
    """The ConfigMap's name, in the workflow's namespace."""
    key: str = Field(min_length=1, max_length=253)
    """The key whose value is taken."""
    optional: bool | None = None
    """Whether the pod may start without the ConfigMap or the key."""


class SecretKeySelector(SpecModel):
    """A key of a Secret."""

    name: str = Field(min_length=1, max_length=253)
    """The Secret's name, in the workflow's namespace."""
    key: str = Field(min_length=1, max_length=253)
    """The key whose value is taken."""
    optional: bool | None = None
    """Whether the pod may start without the Secret or the key."""


class ObjectFieldSelector(SpecModel):
    """A field of the step pod, such as `metadata.name` or `status.podIP`."""

    field_path: str = Field(min_length=1, max_length=256)
    """The field's path, e.g. `metadata.namespace`."""
    api_version: str | None = None
    """The API version the path is written in; `v1` when unset."""


class ResourceFieldSelector(SpecModel):
    """A resource limit or request of the step container, such as `limits.memory`."""

    resource: str = Field(min_length=1, max_length=256)
    """The resource, e.g. `limits.cpu` or `requests.memory`."""
    container_name: str | None = None
    """The container; only the step container exists."""
    divisor: Quantity | None = None
    """The unit the value is expressed in, e.g. `1Mi`; `1` when unset."""


class EnvVarSource(SpecModel):
    """Where an environment variable's value comes from; set exactly one field."""

    config_map_key_ref: ConfigMapKeySelector | None = None
    """A key of a ConfigMap."""
    secret_key_ref: SecretKeySelector | None = None
    """A key of a Secret."""
    field_ref: ObjectFieldSelector | None = None
    """A field of the step pod."""
    resource_field_ref: ResourceFieldSelector | None = None
    """A resource of the step container."""


class EnvVar(SpecModel):
    """An environment variable of the step container."""

    name: str = Field(min_length=1, max_length=256)
    """The variable's name, e.g. `CRM_URL`."""
    value: str | None = None
    """Its value; `$(OTHER)` refers to a variable defined earlier."""
    value_from: EnvVarSource | None = None
    """Where its value comes from, instead of `value`."""


class ConfigMapEnvSource(SpecModel):
    """A ConfigMap whose keys become environment variables."""

    name: str = Field(min_length=1, max_length=253)
    """The ConfigMap's name, in the workflow's namespace."""
    optional: bool | None = None
    """Whether the pod may start without the ConfigMap."""


class SecretEnvSource(SpecModel):
    """A Secret whose keys become environment variables."""

    name: str = Field(min_length=1, max_length=253)
    """The Secret's name, in the workflow's namespace."""
    optional: bool | None = None
    """Whether the pod may start without the Secret."""


class EnvFromSource(SpecModel):
    """A source of many environment variables; set one of `configMapRef` and `secretRef`."""

    prefix: str | None = None
    """Added in front of every key's name."""
    config_map_ref: ConfigMapEnvSource | None = None
    """Every key of a ConfigMap."""
    secret_ref: SecretEnvSource | None = None
    """Every key of a Secret."""


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """What a taint does to pods that do not tolerate it."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(SpecModel):
    """A taint the step pods tolerate."""

    key: str | None = None
    """The taint's key; unset with operator `Exists` tolerates every taint."""
    operator: TolerationOperator | None = None
    """`Equal` (the default) or `Exists`."""
    value: str | None = None
    """The taint's value, with operator `Equal`."""
    effect: TaintEffect | None = None
    """The taint effect tolerated (`NoSchedule`, `PreferNoSchedule` or `NoExecute`); unset: all."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """With effect `NoExecute`: how long the pod stays bound after the taint appears; unset: forever."""


class LocalObjectReference(SpecModel):
    """An object in the workflow's namespace, by name."""

    name: str = Field(min_length=1, max_length=253)
    """The object's name."""


class PodTemplate(SpecModel):
    """Overrides applied to every step pod."""

    service_account_name: str | None = Field(default=None, max_length=253)
    """ServiceAccount the step pods run as. Its token is never mounted: steps need no API access."""
    resources: ResourceRequirements | None = None
    """Container resources (`requests`, `limits`), as in a Pod."""
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    """Environment variables, as in a container (`name` with `value` or `valueFrom`)."""
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=64)
    """Sources of environment variables (`configMapRef`, `secretRef`), as in a container."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Labels a node must have to run step pods."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    """Tolerations of step pods, as in a Pod."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=32)
    """Secrets used to pull the image (`- name: regcred`)."""
