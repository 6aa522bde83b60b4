"""The generated CRDs: up to date, structural, documented, and validating what the models promise."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import cel
import pytest
import yaml
from pydantic import Field

from kubestep.api.base import Model
from kubestep.api.crdgen import (
    CHART_CRDS,
    RESOURCES,
    CRDGenError,
    CRDJsonSchema,
    default_is_valid,
    generate,
    normalize_description,
    structural,
    write_crds,
)
from kubestep.api.durations import (
    MAX_SPEC_DURATION_SECONDS,
    SPEC_DURATION_PARSABLE_PATTERN,
    SPEC_DURATION_PATTERN,
    parse_duration,
)
from kubestep.api.pod import QUANTITY_PATTERN
from kubestep.api.workflow import EVENT_NAME_PATTERN, FUNCTION_PATTERN

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
FILES = ("workflows.kubestep.dev.yaml", "events.kubestep.dev.yaml", "workflowruns.kubestep.dev.yaml")

# Every keyword a CRD's JSONSchemaProps accepts and the generator may emit (no `$ref`, `const`, `title`,
# `anyOf`, `uniqueItems`: the API server rejects those or they would break structural rules).
CRD_KEYWORDS = {
    "description",
    "type",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "default",
    "nullable",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
}
PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CRDS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every schema node below ``node`` as (path, node, is_a_property)."""
    for name, prop in node.get("properties", {}).items():
        yield f"{path}.{name}", prop, True
        yield from walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield f"{path}[]", node["items"], False
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield f"{path}{{}}", node["additionalProperties"], False
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def all_nodes() -> Iterator[tuple[str, str, dict[str, Any], bool]]:
    for name in FILES:
        root = root_schema(load(name))
        yield name, "", root, False
        for path, node, is_prop in walk(root):
            yield name, path, node, is_prop


def node_at(crd: dict[str, Any], path: str) -> dict[str, Any]:
    node = root_schema(crd)
    for part in path.strip(".").split("."):
        node = node["properties"][part]
    return node


def rules_at(crd: dict[str, Any], path: str) -> list[dict[str, Any]]:
    rules = node_at(crd, path).get("x-kubernetes-validations", [])
    assert rules, f"no x-kubernetes-validations at {path}"
    return rules


def convert(model: type[Model]) -> dict[str, Any]:
    doc = model.model_json_schema(by_alias=True, mode="validation", schema_generator=CRDJsonSchema)
    return structural(doc, doc.get("$defs", {}))


def go_match(pattern: str, value: str) -> bool:
    """The API server's (Go RE2) reading of ``pattern``: `$` is the end of the text, not before a newline."""
    return re.search(pattern.replace("$", r"\Z"), value) is not None


# --- The files on disk --------------------------------------------------------------------------------------


def test_checked_in_crds_match_the_models(tmp_path: Path) -> None:
    out = tmp_path / "crds"
    subprocess.run([sys.executable, "-m", "kubestep.api.crdgen", str(out)], check=True, capture_output=True)
    generated = {p.name: p.read_bytes() for p in out.iterdir()}
    checked_in = {p.name: p.read_bytes() for p in CRDS.iterdir()}
    assert sorted(generated) == sorted(FILES)
    assert sorted(checked_in) == sorted(FILES), "crds/ holds files the generator does not write"
    for name in FILES:
        assert generated[name] == checked_in[name], f"crds/{name} is stale: run `make crds` and commit it"


def test_chart_crds_match_the_models() -> None:
    # Helm installs the chart's copy: it must be the generated CRDs, byte for byte.
    chart = REPO / CHART_CRDS
    checked_in = {p.name: p.read_bytes() for p in chart.iterdir()}
    assert sorted(checked_in) == sorted(FILES), f"{CHART_CRDS} holds files the generator does not write"
    for name, text in generate().items():
        stale = f"{CHART_CRDS}/{name} is stale: run `make crds` and commit it"
        assert checked_in[name] == text.encode(), stale


def test_generation_is_deterministic() -> None:
    assert generate() == generate()
    for text in generate().values():
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert text.startswith("# Generated by `make crds`")
        # Anchors and aliases are valid YAML but unreadable, and a sign of shared (aliased) schema nodes.
        assert not re.search(r"[&*]id\d+", text)


def test_chart_copy_written_only_when_the_chart_exists(tmp_path: Path) -> None:
    write_crds(tmp_path / "crds")
    assert not (tmp_path / "charts").exists()

    chart = tmp_path / CHART_CRDS
    chart.mkdir(parents=True)
    write_crds(tmp_path / "crds")
    for name in FILES:
        assert (chart / name).read_bytes() == (tmp_path / "crds" / name).read_bytes()


def test_usage_error_without_output_directory() -> None:
    result = subprocess.run([sys.executable, "-m", "kubestep.api.crdgen"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage" in result.stderr


# --- CRD shape ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "short"),
    [
        ("workflows.kubestep.dev.yaml", "Workflow", "ksw"),
        ("events.kubestep.dev.yaml", "Event", "kse"),
        ("workflowruns.kubestep.dev.yaml", "WorkflowRun", "ksr"),
    ],
)
def test_crd_names_and_version(name: str, kind: str, short: str) -> None:
    crd = load(name)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == name.removesuffix(".yaml")
    spec = crd["spec"]
    assert spec["group"] == "kubestep.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": name.split(".")[0],
        "singular": kind.lower(),
        "shortNames": [short],
        "categories": ["kubestep"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        (
            "workflows.kubestep.dev.yaml",
            {
                "Ready": '.status.conditions[?(@.type=="Ready")].status',
                "Paused": ".spec.paused",
                "Active": ".status.active",
                "Succeeded": ".status.succeeded",
                "Failed": ".status.failed",
                "Age": ".metadata.creationTimestamp",
            },
        ),
        (
            "events.kubestep.dev.yaml",
            {
                "Event": ".spec.name",
                "Started": ".status.started[*].run",
                "Processed": '.status.conditions[?(@.type=="Processed")].reason',
                "Age": ".metadata.creationTimestamp",
            },
        ),
        (
            "workflowruns.kubestep.dev.yaml",
            {
                "Workflow": ".spec.workflowRef.name",
                "Phase": ".status.phase",
                "Progress": ".status.progress",
                "Step": ".status.currentStep",
                "Attempt": ".status.currentAttempt",
                "Waiting-For": ".status.admission.waitingFor",
                "Image": ".status.image",
                "Age": ".metadata.creationTimestamp",
            },
        ),
    ],
)
def test_printer_columns(name: str, columns: dict[str, str]) -> None:
    crd = load(name)
    (version,) = crd["spec"]["versions"]
    printed = version["additionalPrinterColumns"]
    assert {c["name"]: c["jsonPath"] for c in printed} == columns
    assert [c["name"] for c in printed] == list(columns)
    for column in printed:
        assert column["description"]
        path = column["jsonPath"]
        if path.startswith(".metadata."):
            assert column["type"] == "date"
            continue
        # The column must point at a field the schema has, with the column's type; list indexes and
        # filters (`[*]`, `[?(@.type=="Ready")]`) step into the list's items.
        node = root_schema(crd)
        for field in re.sub(r"\[[^\]]*\]", "", path).strip(".").split("."):
            node = node.get("items", node)
            assert field in node.get("properties", {}), f"{name}: {path} names no field {field}"
            node = node["properties"][field]
        assert node["type"] == column["type"], f"{name}: column {column['name']}"


@pytest.mark.parametrize("name", FILES)
def test_top_level_schema(name: str) -> None:
    root = root_schema(load(name))
    assert root["type"] == "object"
    assert root["required"] == ["spec"]
    assert root["description"]
    props = root["properties"]
    assert list(props) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert props["metadata"] == {"type": "object"}
    assert props["apiVersion"]["type"] == props["kind"]["type"] == "string"
    assert "default" not in props["spec"] and "default" not in props["status"]


def test_top_level_description_is_the_class_docstring() -> None:
    for resource in RESOURCES:
        crd = load(f"{resource.plural}.kubestep.dev.yaml")
        assert root_schema(crd)["description"] == normalize_description(resource.model.__doc__ or "")


# --- Structural schema --------------------------------------------------------------------------------------


def test_schemas_are_structural() -> None:
    problems = []
    for name, path, node, _ in all_nodes():
        where = f"{name}:{path or '<root>'}"
        unknown = set(node) - CRD_KEYWORDS
        if unknown:
            problems.append(f"{where} has non-CRD keywords {sorted(unknown)}")
        if "type" not in node and node.get(PRESERVE) is not True and node.get(INT_OR_STRING) is not True:
            problems.append(f"{where} has neither a type nor x-kubernetes-preserve-unknown-fields")
        if node.get(INT_OR_STRING) and (
            "type" in node
            or set(node) - {"description", "maxLength", INT_OR_STRING, "x-kubernetes-validations"}
        ):
            problems.append(f"{where} is an int-or-string with a type or non-string constraints")
        if node.get("type") == "null" or not isinstance(node.get("type", ""), str):
            problems.append(f"{where} has type {node.get('type')!r}")
        if node.get("additionalProperties") is False:
            problems.append(f"{where} has additionalProperties: false")
        if "additionalProperties" in node and "properties" in node:
            problems.append(f"{where} has both properties and additionalProperties")
        if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict):
            problems.append(f"{where} has a boolean additionalProperties")
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node and not isinstance(node[bound], bool):
                problems.append(f"{where} has a numeric {bound} (JSON Schema 2020-12, not OpenAPI v3.0)")
        if "enum" in node and node.get("type") != "string":
            problems.append(f"{where} has an enum on a non-string")
        if node.get(PRESERVE) and "type" in node and node["type"] != "object":
            problems.append(f"{where} preserves unknown fields of a {node['type']}")
    assert problems == []


def test_no_json_schema_leftovers_anywhere() -> None:
    """Belt and braces over the whole documents, including places `walk` does not visit."""

    def scan(value: Any, path: str) -> Iterator[str]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in {
                    "$ref",
                    "$defs",
                    "definitions",
                    "title",
                    "const",
                    "anyOf",
                    "oneOf",
                    "allOf",
                    "not",
                }:
                    yield f"{path}.{key}"
                if item == {"type": "null"}:
                    yield f"{path}.{key} is a null type"
                yield from scan(item, f"{path}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if item == {"type": "null"}:
                    yield f"{path}[{i}] is a null type"
                yield from scan(item, f"{path}[{i}]")

    found = [hit for name in FILES for hit in scan(root_schema(load(name)), name)]
    # `title` is legitimately a property name nowhere in kubestep; if one appears, refine this test.
    assert found == []


def test_every_property_is_described() -> None:
    missing = [
        f"{name}:{path}"
        for name, path, node, is_prop in all_nodes()
        if is_prop and path.startswith((".spec", ".status")) and not node.get("description", "").strip()
    ]
    assert missing == []


def test_descriptions_are_reflowed() -> None:
    for _, path, node, _ in all_nodes():
        text = node.get("description", "")
        assert "\n" not in text.replace("\n\n", ""), f"{path}: docstring line breaks left in"


def test_defaults_are_valid_for_their_field() -> None:
    for name, path, node, _ in all_nodes():
        if "default" in node:
            assert default_is_valid(node, node["default"]), f"{name}:{path}"
            assert node["default"] is not None, f"{name}:{path} defaults to null"


def test_optional_fields_are_not_required_and_have_no_null_default() -> None:
    crd = load("workflows.kubestep.dev.yaml")
    timeouts = node_at(crd, ".spec.timeouts")
    assert "required" not in timeouts
    step = timeouts["properties"]["step"]
    assert {k: v for k, v in step.items() if k != "x-kubernetes-validations"} == {
        "description": step["description"],
        "type": "string",
        "maxLength": 32,
    }
    assert node_at(crd, ".spec")["required"] == ["triggers", "image", "function"]


def test_type_mappings_in_the_real_schemas() -> None:
    run = load("workflowruns.kubestep.dev.yaml")
    status = node_at(run, ".status")["properties"]
    # Any -> preserved, untyped.
    assert status["output"] == {"description": status["output"]["description"], PRESERVE: True}
    # StrEnum -> string enum, with its default.
    assert status["phase"]["type"] == "string"
    assert status["phase"]["enum"][0] == "Pending" and status["phase"]["default"] == "Pending"
    # datetime -> date-time.
    assert status["startedAt"] == {
        "description": status["startedAt"]["description"],
        "type": "string",
        "format": "date-time",
    }
    event = node_at(load("events.kubestep.dev.yaml"), ".spec")["properties"]
    # dict[str, Any] with the preserve marker -> an object kept as is.
    assert event["data"]["type"] == "object" and event["data"][PRESERVE] is True
    assert "additionalProperties" not in event["data"]
    pod = node_at(load("workflows.kubestep.dev.yaml"), ".spec.podTemplate")["properties"]
    # dict[str, str] -> a map of strings.
    assert pod["nodeSelector"]["additionalProperties"] == {"type": "string"}


def test_nested_policies_default_to_empty_objects() -> None:
    """`default: {}` on policy objects lets the API server record the full policy in force at creation."""
    spec = node_at(load("workflows.kubestep.dev.yaml"), ".spec")["properties"]
    for name in ("retries", "timeouts", "limits", "podTemplate"):
        assert spec[name]["default"] == {}, name
    assert spec["retries"]["properties"]["backoff"]["default"] == {}
    assert "default" not in spec["triggers"]


# --- What the API server will reject ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("contacts.workflows:process", True),
        ("m:f", True),
        ("_pkg.sub_2:run_it", True),
        ("contacts.workflows", False),
        ("contacts.workflows:", False),
        (":process", False),
        ("a:b:c", False),
        ("1mod:f", False),
        ("mod.:f", False),
        ("mod:f.g", False),
        ("mod:f()", False),
        ("mod-name:f", False),
        (" mod:f", False),
        ("mod:f\n", False),
    ],
)
def test_function_pattern(value: str, ok: bool) -> None:
    (rule,) = rules_at(load("workflows.kubestep.dev.yaml"), ".spec.function")
    assert FUNCTION_PATTERN in rule["rule"]
    assert go_match(FUNCTION_PATTERN, value) is ok
    assert evaluate(rule, value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("api/contact_list.uploaded", True),
        ("order.created", True),
        ("a", True),
        ("a/b/c-d_e.f", True),
        ("", False),
        ("/leading", False),
        ("trailing/", False),
        ("a//b", False),
        ("has space", False),
        ("-dash", False),
        ("api/contact_list.hochgeladen", True),
        ("api/liste_validée", False),
        ("api/\u0441\u043f\u0438\u0441\u043e\u043a", False),
    ],
)
def test_event_name_pattern(value: str, ok: bool) -> None:
    for name, path in (("workflows.kubestep.dev.yaml", None), ("events.kubestep.dev.yaml", ".spec.name")):
        crd = load(name)
        node = node_at(crd, path) if path else node_at(crd, ".spec.triggers")["items"]["properties"]["event"]
        (rule,) = node["x-kubernetes-validations"]
        assert "pattern" not in node, "a pattern would be refused with the bare regular expression"
        assert EVENT_NAME_PATTERN in rule["rule"]
        assert (go_match(EVENT_NAME_PATTERN, value) and len(value) >= node["minLength"]) is ok
        assert evaluate(rule, value) is go_match(EVENT_NAME_PATTERN, value)


@pytest.mark.parametrize("value", ["15s", "1m", "500ms", "1h30m", "1.5s", "0s", "2h45m30s"])
def test_spec_durations_parse_in_cel(value: str) -> None:
    """The pattern only admits what CEL's `duration()` parses, so the comparison rules cannot error."""
    assert go_match(SPEC_DURATION_PATTERN, value)
    assert cel.evaluate("duration(d) >= duration('0s')", {"d": value}) is True


@pytest.mark.parametrize("value", ["1d", "1w", "15", "s", "1 h", "-1s", "1h-1m", "1.s"])
def test_spec_durations_reject_non_go_units(value: str) -> None:
    assert not go_match(SPEC_DURATION_PATTERN, value)


DURATION_FIELDS = (
    ".spec.timeouts.step",
    ".spec.timeouts.run",
    ".spec.retries.backoff.initial",
    ".spec.retries.backoff.max",
    ".spec.retries.backoff.jitter",
)


def duration_rules() -> tuple[dict[str, Any], dict[str, Any]]:
    """The format rule and the bound rule of a spec duration (the same on every duration field)."""
    crd = load("workflows.kubestep.dev.yaml")
    found = {json_key(rules_at(crd, path)) for path in DURATION_FIELDS}
    assert len(found) == 1, "every spec duration has the same rules"
    rules = rules_at(crd, DURATION_FIELDS[0])
    (fmt,) = [r for r in rules if "is not a duration" in r["messageExpression"]]
    (bound,) = [r for r in rules if "longer than 8784h" in r["messageExpression"]]
    return fmt, bound


def json_key(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "5 minutes",
            "'5 minutes' is not a duration; write a number and a unit (ms, s, m or h; a day is 24h)",
        ),
        ("-1s", "'-1s' is not a duration;"),
        ("1y", "'1y' is not a duration;"),
        ("1d", "a day is 24h), e.g. 30s, 1h30m or 48h"),
        ("100000000h", "'100000000h' is longer than 8784h (366 days), the longest duration kubestep accepts"),
        ("8785h", "'8785h' is longer than 8784h (366 days)"),
        ("527041m", "'527041m' is longer than 8784h"),
        ("99999999999999999999s", "is longer than 8784h"),
    ],
)
def test_bad_durations_get_one_message_in_words(value: str, message: str) -> None:
    fmt, bound = duration_rules()
    failing = [r for r in (fmt, bound) if not evaluate(r, value)]
    assert len(failing) == 1, "one message per bad duration, never two"
    (rule,) = failing
    assert message in cel.evaluate(rule["messageExpression"], {"self": value})
    assert "^" not in rule["messageExpression"], "no regular expression in what users read"


@pytest.mark.parametrize("value", ["15s", "8784h", "527040m", "31622400s", "0000001h", "1.5h", "1h1h", "0s"])
def test_durations_up_to_the_bound_are_accepted(value: str) -> None:
    fmt, bound = duration_rules()
    assert evaluate(fmt, value) and evaluate(bound, value)


@pytest.mark.parametrize(
    "value",
    ["100000h", "10000000m", "1000000000s", "1000000000000ms", "99999h99999h99999h99999h99999h", "1h" * 16],
)
def test_what_duration_cannot_parse_is_longer_than_the_bound(value: str) -> None:
    """The bound rule refuses a value `duration()` might overflow on without parsing it; that is only right if
    every such value is over the bound anyway, and every value `duration()` is given is far from overflow."""
    seconds = parse_duration(value)
    if go_match(SPEC_DURATION_PARSABLE_PATTERN, value):
        assert len(value) <= 32 and seconds < 2_500_000 * 3600  # Go's time.Duration holds about 2.56e6 hours
    else:
        assert seconds > MAX_SPEC_DURATION_SECONDS
    # Within 32 characters, the most a parsable value can hold is below Go's limit.
    assert parse_duration("999999999s" * 3) < 2_500_000 * 3600


def test_enums_and_bounds() -> None:
    wf = load("workflows.kubestep.dev.yaml")
    retries = node_at(wf, ".spec.retries")["properties"]
    assert (retries["limit"]["minimum"], retries["limit"]["maximum"]) == (0, 20)
    assert retries["backoff"]["properties"]["factor"]["minimum"] == 1.0
    assert node_at(wf, ".spec.limits")["properties"]["stepOutputBytes"]["minimum"] == 1024
    conditions = node_at(wf, ".status.conditions")["items"]
    assert conditions["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert conditions["required"] == ["type", "status"]
    triggers = node_at(wf, ".spec.triggers")
    assert (triggers["minItems"], triggers["maxItems"]) == (1, 20)


# --- CEL rules ----------------------------------------------------------------------------------------------


def evaluate(rule: dict[str, Any], value: Any, old: Any = None) -> bool:
    context = {"self": value} if old is None else {"self": value, "oldSelf": old}
    result = cel.evaluate(rule["rule"], context)
    assert isinstance(result, bool)
    return result


def test_every_rule_has_a_message_naming_its_field() -> None:
    """Rules on objects and lists name the fields they compare; rules on one value quote the value (the API
    server prints the field's path before the message). Every message says the fix after the problem."""
    found = 0
    for name, path, node, _ in all_nodes():
        for rule in node.get("x-kubernetes-validations", []):
            found += 1
            assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath"}
            assert ";" in rule["message"], f"{name}:{path}: message should say the fix after the problem"
            if node.get("type") in ("object", "array"):
                field = path.rsplit(".", 1)[-1].removesuffix("[]")
                assert field in rule["message"], f"{name}:{path}: message does not name {field}"
            else:
                assert rule["messageExpression"].startswith('"\'" + '), f"{name}:{path}: quote the value"
                assert "e.g." in rule["message"] or "or less" in rule["message"], f"{name}:{path}: an example"
    # 3 cross-field rules, 5 durations x 2, the function and the trigger events in workflows; the same in
    # workflowruns' copy of the spec, with its immutability rules; the Event's immutable spec.
    assert found >= 2 * 15 + 4


@pytest.mark.parametrize("name", ["workflows.kubestep.dev.yaml", "workflowruns.kubestep.dev.yaml"])
def test_trigger_events_must_be_unique(name: str) -> None:
    crd = load(name)
    path = ".spec.triggers" if name.startswith("workflows") else ".spec.workflow.triggers"
    (rule,) = rules_at(crd, path)
    assert evaluate(rule, [{"event": "a"}, {"event": "b", "if": "event.data.x > 1"}])
    assert not evaluate(rule, [{"event": "a"}, {"event": "b"}, {"event": "a", "if": "true"}])
    # The rule iterates the list: without both bounds the API server refuses the CRD on cost.
    node = node_at(crd, path)
    assert node["maxItems"] <= 20 and node["items"]["properties"]["event"]["maxLength"] <= 253


def test_backoff_initial_not_above_max() -> None:
    (rule,) = rules_at(load("workflows.kubestep.dev.yaml"), ".spec.retries.backoff")
    assert evaluate(rule, {"initial": "15s", "max": "1h"})
    assert evaluate(rule, {"initial": "1h", "max": "60m"})
    assert not evaluate(rule, {"initial": "2h", "max": "1h"})
    assert not evaluate(rule, {"initial": "1500ms", "max": "1s"})
    assert evaluate(rule, {"max": "1s"})
    assert rule["fieldPath"] == ".initial"


def test_step_timeout_not_above_run_timeout() -> None:
    (rule,) = rules_at(load("workflows.kubestep.dev.yaml"), ".spec.timeouts")
    assert evaluate(rule, {"step": "10m", "run": "1h"})
    assert evaluate(rule, {"step": "90m", "run": "1h30m"})
    assert not evaluate(rule, {"step": "2h", "run": "90m"})
    assert evaluate(rule, {"step": "2h"})
    assert evaluate(rule, {"run": "1s"})
    assert evaluate(rule, {})


@pytest.mark.parametrize("field", ["workflowRef", "workflow"])
def test_run_inputs_are_immutable(field: str) -> None:
    crd = load("workflowruns.kubestep.dev.yaml")
    (rule,) = rules_at(crd, f".spec.{field}")
    assert rule["rule"] == "self == oldSelf"
    assert evaluate(rule, {"name": "a", "data": {"x": [1]}}, {"name": "a", "data": {"x": [1]}})
    assert not evaluate(rule, {"name": "a"}, {"name": "b"})
    assert "x-kubernetes-validations" not in node_at(crd, ".spec.cancel"), "cancel must stay writable"


@pytest.mark.parametrize(
    ("path", "fields"),
    [(".spec.retries.backoff", ("initial", "max")), (".spec.timeouts", ("step", "run"))],
)
@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "1y", "100000000h", "1d"])
def test_duration_comparisons_stay_silent_on_values_that_do_not_parse(
    path: str, fields: tuple[str, str], bad: str
) -> None:
    """The field's own rule speaks; a comparison would add a misleading error (a CEL type conversion error on
    the API server, which cannot parse the value as a duration)."""
    (rule,) = rules_at(load("workflows.kubestep.dev.yaml"), path)
    first, second = fields
    assert f"self.{first}.matches(" in rule["rule"] and f"self.{second}.matches(" in rule["rule"]
    assert evaluate(rule, {first: bad, second: "1h"})
    assert evaluate(rule, {first: "1h", second: bad})


def test_a_runs_event_changes_only_while_the_run_holds_events() -> None:
    crd = load("workflowruns.kubestep.dev.yaml")
    (rule,) = [r for r in rules_at(crd, ".spec") if "self.event" in r["rule"]]
    assert "spec.event is immutable" in rule["message"]
    a, b = {"name": "a", "data": {"x": [1]}}, {"name": "a", "data": {"x": [2]}}
    assert evaluate(rule, {"event": a}, {"event": dict(a)})
    assert not evaluate(rule, {"event": b}, {"event": a})
    held = {"kind": "Debounce", "open": True}
    assert evaluate(rule, {"event": b, "gather": held}, {"event": a, "gather": held})
    closed = {**held, "open": False}
    assert not evaluate(rule, {"event": b, "gather": closed}, {"event": a, "gather": closed})
    (closes,) = rules_at(crd, ".spec.gather")
    assert evaluate(closes, closed, held)
    assert not evaluate(closes, held, closed)


def test_an_events_spec_cannot_change() -> None:
    crd = load("events.kubestep.dev.yaml")
    (rule,) = rules_at(crd, ".spec")
    assert rule["rule"] == "self == oldSelf"
    assert "publish a new Event (a new metadata.name)" in rule["message"]
    spec = {"name": "app/go", "data": {"rows": [1, 2]}, "id": "a"}
    assert evaluate(rule, spec, dict(spec))
    assert not evaluate(rule, {**spec, "data": {"rows": [1]}}, spec)
    assert "x-kubernetes-validations" not in node_at(crd, ".status")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("500m", True),
        ("2", True),
        ("0.5", True),
        (".5", True),
        ("256Mi", True),
        ("1Gi", True),
        ("1e3", True),
        ("1.5G", True),
        (2, True),
        (0, True),
        ("2 cores", False),
        ("lots", False),
        ("1GB", False),
        ("-1", False),
        (-1, False),
        ("", False),
        ("1Gi\n", False),
    ],
)
def test_resource_quantities(value: str | int, ok: bool) -> None:
    crd = load("workflows.kubestep.dev.yaml")
    resources = node_at(crd, ".spec.podTemplate.resources")["properties"]
    for kind in ("limits", "requests"):
        node = resources[kind]["additionalProperties"]
        assert node[INT_OR_STRING] is True and "type" not in node
        (rule,) = node["x-kubernetes-validations"]
        assert evaluate(rule, value) is ok
        if not ok:
            message = cel.evaluate(rule["messageExpression"], {"self": value})
            assert message.startswith(f"'{value}' is not a quantity;") and "e.g. 500m" in message
    assert go_match(QUANTITY_PATTERN, "100m")


# --- The converter on small models --------------------------------------------------------------------------


class Color(StrEnum):
    """A color."""

    RED = "red"
    BLUE = "blue"


class Leaf(Model):
    """A leaf."""

    when: datetime | None = None
    """When."""


class Sample(Model):
    """A sample."""

    count: int = Field(default=1, gt=0)
    """Strictly positive integer."""
    ratio: float = Field(default=0.5, gt=0, lt=1)
    """Strictly between 0 and 1."""
    kind: Literal["Sample"] = "Sample"
    """A literal."""
    color: Color = Color.RED
    """An enum."""
    anything: Any = None
    """Any JSON."""
    free: dict[str, Any] = Field(default_factory=dict)
    """A free object."""
    labels: dict[str, str] = Field(default_factory=dict)
    """A string map."""
    tags: set[str] = Field(default_factory=set)
    """A set of strings."""
    name: str = Field(default="", min_length=1)
    """Empty means unset: not a default the API server would accept."""
    leaf: Leaf | None = None
    """Optional nested model."""
    leaves: list[Leaf] = Field(default_factory=list)
    """A list of models."""
    policy: Leaf = Field(default_factory=Leaf)
    """A nested model defaulted by factory."""


def test_converter_maps_pydantic_constructs() -> None:
    props = convert(Sample)["properties"]
    assert props["count"] == {
        "description": "Strictly positive integer.",
        "type": "integer",
        "minimum": 1,
        "default": 1,
    }
    assert props["ratio"]["minimum"] == 0 and props["ratio"]["exclusiveMinimum"] is True
    assert props["ratio"]["maximum"] == 1 and props["ratio"]["exclusiveMaximum"] is True
    assert props["kind"]["enum"] == ["Sample"] and "const" not in props["kind"]
    assert props["color"] == {
        "description": "An enum.",
        "type": "string",
        "enum": ["red", "blue"],
        "default": "red",
    }
    assert props["anything"] == {"description": "Any JSON.", PRESERVE: True}
    assert props["free"] == {"description": "A free object.", "type": "object", PRESERVE: True}
    assert props["labels"]["additionalProperties"] == {"type": "string"}
    assert props["tags"]["x-kubernetes-list-type"] == "set" and "uniqueItems" not in props["tags"]
    assert "default" not in props["name"]
    assert props["leaf"]["type"] == "object" and props["leaf"]["description"] == "Optional nested model."
    assert props["leaf"]["properties"]["when"]["format"] == "date-time"
    assert props["leaves"]["items"]["description"] == "A leaf."
    assert props["policy"]["default"] == {}


def test_converter_refuses_unions() -> None:
    class Either(Model):
        """Two types."""

        value: int | bool
        """Either."""

    with pytest.raises(CRDGenError, match="non-null branches"):
        convert(Either)


def test_converter_maps_int_or_string() -> None:
    class Amount(Model):
        """As Kubernetes types quantities and ports."""

        value: Annotated[str, Field(max_length=8)] | int | None = None
        """An integer or a short string."""

    assert convert(Amount)["properties"]["value"] == {
        "description": "An integer or a short string.",
        "maxLength": 8,
        INT_OR_STRING: True,
    }

    class Bounded(Model):
        """A constraint the API server would apply to strings only."""

        value: str | Annotated[int, Field(ge=0)]
        """Either."""

    with pytest.raises(CRDGenError, match="int-or-string with constraints"):
        convert(Bounded)


def test_converter_refuses_recursion() -> None:
    with pytest.raises(CRDGenError, match="recursive"):
        convert(Tree)


def test_converter_refuses_formats_the_api_server_reads_differently() -> None:
    class Span(Model):
        """ISO 8601 durations in Pydantic, Go durations in Kubernetes."""

        span: timedelta
        """A span."""

    with pytest.raises(CRDGenError, match="format 'duration'"):
        convert(Span)


def test_converter_refuses_rules_without_message() -> None:
    class Silent(Model):
        """A rule without a message."""

        x: int = Field(json_schema_extra={"x-kubernetes-validations": [{"rule": "self > 0"}]})
        """X."""

    with pytest.raises(CRDGenError, match="no message"):
        convert(Silent)


def test_normalize_description() -> None:
    assert normalize_description("  One line\n    wrapped here.\n\n  Second   paragraph.\n") == (
        "One line wrapped here.\n\nSecond   paragraph."
    )


class Tree(Model):
    """A recursive model, which no CRD schema can express."""

    children: list[Tree] = Field(default_factory=list)
    """Sub-trees."""
