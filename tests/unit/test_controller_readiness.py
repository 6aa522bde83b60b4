"""A Workflow's `Ready` condition: True when its triggers are usable, else False naming the broken `if`."""

from __future__ import annotations

import pytest

from kubestep.api.base import ObjectMeta
from kubestep.api.workflow import Trigger, Workflow, WorkflowSpec
from kubestep.controller.workflows import readiness


def make_workflow(*triggers: tuple[str, str | None], generation: int | None = 4) -> Workflow:
    return Workflow(
        metadata=ObjectMeta(name="contacts", namespace="team-a", generation=generation),
        spec=WorkflowSpec(
            triggers=[Trigger.model_validate({"event": e, "if": cond}) for e, cond in triggers],
            image="registry.example/contacts:1",
            function="contacts.workflows:process",
        ),
    )


@pytest.mark.parametrize(
    "triggers",
    [
        pytest.param([("api/uploaded", None)], id="no-condition"),
        pytest.param([("api/uploaded", "event.data.rows > 0")], id="comparison"),
        pytest.param(
            [("api/uploaded", 'has(event.data.rows) && event.user.id != ""'), ("api/retried", None)],
            id="has-and-two-triggers",
        ),
        pytest.param([("api/uploaded", 'event.name.startsWith("api/")')], id="method-call"),
    ],
)
def test_a_workflow_whose_expressions_compile_is_ready(triggers: list[tuple[str, str | None]]) -> None:
    condition = readiness(make_workflow(*triggers))
    assert condition.type == "Ready"
    assert condition.status == "True"
    assert condition.reason == "Valid"
    assert condition.observed_generation == 4
    assert condition.message


@pytest.mark.parametrize(
    ("triggers", "index", "expression"),
    [
        pytest.param([("api/uploaded", "event.data.rows >")], 0, "event.data.rows >", id="only-trigger"),
        pytest.param(
            [("api/uploaded", "event.data.rows > 0"), ("api/retried", "event.data.(")],
            1,
            "event.data.(",
            id="second-trigger",
        ),
        pytest.param(
            [("a/one", None), ("a/two", "1 +"), ("a/three", "&& true")], 1, "1 +", id="first-broken-is-named"
        ),
        pytest.param([("api/uploaded", "")], 0, "", id="empty-expression"),
    ],
)
def test_a_workflow_with_an_expression_that_does_not_compile_is_not_ready_and_names_it(
    triggers: list[tuple[str, str | None]], index: int, expression: str
) -> None:
    condition = readiness(make_workflow(*triggers))
    assert condition.type == "Ready"
    assert condition.status == "False"
    assert condition.reason == "InvalidExpression"
    assert condition.observed_generation == 4
    assert condition.message.startswith(f"spec.triggers[{index}].if: ")
    assert repr(expression) in condition.message
    assert "does not compile" in condition.message
    assert "fix the expression" in condition.message


def test_readiness_reports_the_generation_it_was_computed_from() -> None:
    assert readiness(make_workflow(("a/b", None), generation=9)).observed_generation == 9
    assert readiness(make_workflow(("a/b", "1 +"), generation=10)).observed_generation == 10
    assert readiness(make_workflow(("a/b", None), generation=None)).observed_generation is None


def test_a_condition_that_compiles_but_may_fail_at_runtime_does_not_block_readiness() -> None:
    # Only compilation is checked here: evaluation errors are reported per event.
    assert readiness(make_workflow(("a/b", "event.data.missing.deeper == 1"))).status == "True"
