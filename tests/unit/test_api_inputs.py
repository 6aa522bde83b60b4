"""Bad input, read without an API server (`kubestep run`, the operator reading objects): the same words as the
API server's, naming the field, quoting the value and giving an example; an Event's depth limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cel
import pytest
import yaml
from pydantic import ValidationError

import kubestep
from kubestep.api.base import validation_problems
from kubestep.api.event import MAX_DATA_DEPTH, Event, nesting_depth
from kubestep.api.report import RunnerState
from kubestep.api.workflow import Workflow, WorkflowSpec
from kubestep.engine.triggers import match

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"


def problems(model: Any, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return validation_problems(caught.value)


def workflow(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "wf"},
        "spec": {"triggers": [{"event": "app/go"}], "image": "img", "function": "app.flows:main", **spec},
    }


def nest(depth: int, leaf: Any = "deep") -> Any:
    """``depth`` levels of objects (alternating with lists) around ``leaf``."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 == 0 else [value]
    return value


def crd_rule_messages(path: str, value: Any) -> list[str]:
    """What the API server says about ``value`` at ``path`` of the Workflow CRD: failing rules' messages."""
    crd = yaml.safe_load((CRDS / "workflows.kubestep.dev.yaml").read_text())
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return [
        cel.evaluate(rule["messageExpression"], {"self": value})
        for rule in node["x-kubernetes-validations"]
        if not cel.evaluate(rule["rule"], {"self": value})
    ]


@pytest.mark.parametrize(
    ("spec", "path", "value", "expected"),
    [
        (
            {"timeouts": {"step": "5 minutes"}},
            "spec.timeouts.step",
            "5 minutes",
            "spec.timeouts.step: '5 minutes' is not a duration; write a number and a unit "
            "(ms, s, m or h; a day is 24h), e.g. 30s, 1h30m or 48h",
        ),
        ({"timeouts": {"run": "-1s"}}, "spec.timeouts.run", "-1s", "'-1s' is not a duration;"),
        (
            {"retries": {"backoff": {"max": "1y"}}},
            "spec.retries.backoff.max",
            "1y",
            "'1y' is not a duration;",
        ),
        (
            {"timeouts": {"step": "100000000h"}},
            "spec.timeouts.step",
            "100000000h",
            "spec.timeouts.step: '100000000h' is longer than 8784h (366 days), the longest duration kubestep "
            "accepts; use 8784h or less",
        ),
        (
            {"function": "contacts.workflows"},
            "spec.function",
            "contacts.workflows",
            "spec.function: 'contacts.workflows' is not module:function; write the module's import path, "
            "a colon and the function's name, e.g. contacts.workflows:process",
        ),
        (
            {"podTemplate": {"resources": {"limits": {"cpu": "2 cores"}}}},
            "spec.podTemplate.resources.limits.*",
            "2 cores",
            "spec.podTemplate.resources.limits.cpu: '2 cores' is not a quantity; write a number with an "
            "optional unit, e.g. 500m or 2 for CPU, 256Mi or 1Gi for memory",
        ),
    ],
)
def test_a_bad_workflow_field_is_refused_in_the_api_servers_words(
    spec: dict[str, Any], path: str, value: str, expected: str
) -> None:
    (problem,) = problems(Workflow, workflow(**spec))
    assert expected in problem
    # The API server's rule says the same (it prefixes the field's path itself).
    (server,) = crd_rule_messages(path, value)
    assert problem.split(": ", 1)[1] == server


def test_a_bad_duration_gets_only_its_own_message_not_a_comparisons() -> None:
    found = problems(Workflow, workflow(timeouts={"step": "5 minutes", "run": "1h"}))
    assert found == [
        "spec.timeouts.step: '5 minutes' is not a duration; write a number and a unit (ms, s, m or h; "
        "a day is 24h), e.g. 30s, 1h30m or 48h"
    ]


@pytest.mark.parametrize("name", ["api/liste_validée", "api/список", "api/a b", "/api"])
def test_an_event_name_outside_ascii_words_says_what_is_allowed(name: str) -> None:
    expected = (
        f"'{name}' is not a valid event name; use ASCII letters, digits and the characters . _ - in parts "
        "joined by /, each part starting with a letter or a digit, e.g. api/contact_list.uploaded"
    )
    assert problems(Event, {"spec": {"name": name}}) == [f"spec.name: {expected}"]
    assert problems(Workflow, workflow(triggers=[{"event": name}])) == [f"spec.triggers.0.event: {expected}"]


def test_typed_pod_settings_read_as_a_pod_writes_them() -> None:
    spec = WorkflowSpec.model_validate(
        workflow(
            podTemplate={
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": 1}},
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                "imagePullSecrets": [{"name": "regcred"}],
            }
        )["spec"]
    )
    template = spec.pod_template
    assert template.resources is not None
    assert template.resources.to_dict() == {
        "limits": {"cpu": "500m", "memory": "256Mi"},
        "requests": {"cpu": 1},
    }
    assert [e.to_dict() for e in template.env][1] == {
        "name": "B",
        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
    }
    found = problems(
        Workflow, workflow(podTemplate={"tolerations": [{"operator": "Sometimes"}], "env": [{"valu": 1}]})
    )
    assert any(
        p.startswith("spec.podTemplate.tolerations.0.operator: Input should be 'Exists' or 'Equal'")
        for p in found
    )
    assert any(p.startswith("spec.podTemplate.env.0.name: Field required") for p in found)


# --- How deep an Event may nest ---------------------------------------------------------------------------


def test_nesting_depth_counts_objects_and_lists_without_recursing() -> None:
    assert nesting_depth("x") == 0
    assert nesting_depth({}) == 1
    assert nesting_depth({"a": [1, {"b": 2}]}) == 3
    assert nesting_depth(nest(MAX_DATA_DEPTH)) == MAX_DATA_DEPTH
    assert nesting_depth(nest(20_000)) == 20_000  # far past Python's recursion limit


def test_an_event_up_to_the_limit_is_accepted_and_one_level_more_is_refused_in_words() -> None:
    inner = nest(MAX_DATA_DEPTH - 1)
    Event.model_validate({"spec": {"name": "app/go", "data": {"x": inner}, "user": {"x": inner}}})
    assert problems(Event, {"spec": {"name": "app/go", "data": {"x": nest(199)}}}) == [
        "spec.data nests 200 levels deep, more than the 64 an Event may hold; flatten it, or keep the "
        "document in object storage and send a reference to it"
    ]
    (problem,) = problems(Event, {"spec": {"name": "app/go", "user": {"x": nest(MAX_DATA_DEPTH)}}})
    assert problem.startswith("spec.user nests 65 levels deep")


def test_a_run_at_the_depth_limit_reads_its_state_in_the_runner_and_its_trigger_filter_works(
    tmp_path: Path,
) -> None:
    data = {"x": nest(MAX_DATA_DEPTH - 1)}
    event = Event.model_validate({"metadata": {"name": "deep"}, "spec": {"name": "app/go", "data": data}})
    payload = event.spec.as_payload()
    spec = WorkflowSpec.model_validate(
        workflow(triggers=[{"event": "app/go", "if": "has(event.data.x)"}], function="deepflow:measure")[
            "spec"
        ]
    )
    assert match(spec, payload).matched

    (tmp_path / "deepflow.py").write_text(
        "import kubestep\n\n\n"
        "@kubestep.workflow('measure')\n"
        "def measure(ctx, step):\n"
        "    def depth(value):\n"
        "        n = 0\n"
        "        while isinstance(value, (dict, list)):\n"
        "            value = value['a'] if isinstance(value, dict) and 'a' in value else "
        "(value['x'] if isinstance(value, dict) else value[0])\n"
        "            n += 1\n"
        "        return n, value\n"
        "    return step.run('measure', depth, ctx.event.data)\n"
    )
    state = RunnerState(run="deep-run", function=spec.function, event=payload)
    (tmp_path / "state.json").write_text(state.model_dump_json(by_alias=True))
    sdk = Path(kubestep.__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "kubestep.runner", "--state", "state.json", "--report", "report"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(sdk)])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report").read_text())
    assert report["kind"] == "step_succeeded", report
    assert report["output"] == [MAX_DATA_DEPTH, "deep"]


def test_kubestep_run_refuses_a_too_deep_event_with_the_same_words(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(workflow()))
    event = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "spec": {"name": "app/go", "data": {"x": nest(199)}},
    }
    # JSON is YAML; PyYAML's dumper would recurse too deep to write 200 levels.
    (tmp_path / "deep.yaml").write_text(json.dumps(event))
    proc = subprocess.run(
        [sys.executable, "-m", "kubestep.cli.main", "run", "wf.yaml", "--event", "deep.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "invalid Event" in proc.stderr
    assert "spec.data nests 200 levels deep, more than the 64 an Event may hold" in proc.stderr
    assert "Traceback" not in proc.stderr
