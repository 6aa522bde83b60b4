"""Per-step policy: `spec.steps` and `StepOptions`, from the spec and the code to the step's pod."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from test_engine import Sim, err, make_run, ok
from test_replay import NOW, state

import kubestep
from kubestep.api.policy import CodeOptions
from kubestep.api.report import Report, ReportKind, StepRef
from kubestep.api.run import StepPhase
from kubestep.api.workflow import StepPolicy, Timeouts, WorkflowSpec
from kubestep.controller import builders
from kubestep.engine import ExitKind, Note, StartExecution
from kubestep.engine.policy import PodOverrides, matching, resolve
from kubestep.sdk.step import Replay


def spec(steps: dict[str, Any] | None = None, **extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "triggers": [{"event": "app/go"}],
            "image": "img",
            "function": "app.flows:main",
            "steps": steps or {},
        }
        | extra
    )


@pytest.mark.parametrize(
    ("keys", "step_id", "name", "expected"),
    [
        (["enrich", "enrich-*", "*"], "enrich", "enrich", ["enrich", "*"]),
        (["fetch", "fetch:2"], "fetch:2", "fetch", ["fetch:2", "fetch"]),
        (["fetch", "fetch:2"], "fetch:1", "fetch", ["fetch"]),
        (["notify-*", "n*", "*"], "notify-user", "notify-user", ["notify-*", "n*", "*"]),
        (["other", "x?z"], "enrich", "enrich", []),
        (["x?z"], "xyz", "xyz", ["x?z"]),
        (["[ab]-step"], "b-step", "b-step", ["[ab]-step"]),
    ],
)
def test_keys_apply_most_specific_first(
    keys: list[str], step_id: str, name: str, expected: list[str]
) -> None:
    steps = {k: StepPolicy() for k in keys}
    assert matching(steps, step_id, name) == expected


@pytest.mark.parametrize(
    ("steps", "code", "retries", "timeout"),
    [
        ({}, None, (4, "spec.retries.limit"), (None, "")),
        ({}, CodeOptions(retries=9, timeout_seconds=30), (9, "code"), (30.0, "code")),
        ({"enrich": {"retries": 5}}, CodeOptions(retries=9), (5, "spec.steps[enrich]"), (None, "")),
        # Each setting from the most specific key that sets it.
        (
            {"enrich": {"retries": 5}, "*": {"retries": 1, "timeout": "1m"}},
            CodeOptions(timeout_seconds=5),
            (5, "spec.steps[enrich]"),
            (60.0, "spec.steps[*]"),
        ),
        ({"other": {"retries": 0}}, None, (4, "spec.retries.limit"), (None, "")),
    ],
)
def test_spec_wins_over_code_which_wins_over_the_workflow(
    steps: dict[str, Any], code: CodeOptions | None, retries: tuple[int, str], timeout: tuple[Any, str]
) -> None:
    resolved = resolve(spec(steps), "enrich", "enrich", code)
    assert (resolved.retries, resolved.retries_from) == retries
    assert (resolved.timeout_seconds, resolved.timeout_from) == timeout


def test_workflow_timeout_applies_when_no_step_sets_one() -> None:
    resolved = resolve(spec({"x": {"retries": 1}}, timeouts={"step": "2m"}), "enrich", "enrich", None)
    assert (resolved.timeout_seconds, resolved.timeout_from) == (120.0, "spec.timeouts.step")
    assert resolve(spec(), None, None, None).timeout_seconds is None


def test_pod_settings_merge_from_least_to_most_specific() -> None:
    steps = {
        "*": {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}, "nodeSelector": {"pool": "general"}},
        "heavy": {
            "resources": {"limits": {"memory": "4Gi"}},
            "nodeSelector": {"pool": "big"},
            "tolerations": [{"key": "big", "operator": "Exists"}],
        },
    }
    pod = resolve(spec(steps), "heavy", "heavy", None).pod
    assert pod.resources == {"limits": {"cpu": "1", "memory": "4Gi"}}
    assert pod.node_selector == {"pool": "big"}
    assert pod.tolerations == [{"key": "big", "operator": "Exists"}]
    assert not resolve(spec({"heavy": {"retries": 1}}), "light", "light", None).pod


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ({"enrich": {"retries": 21}}, "less than or equal to 20"),
        ({"enrich": {"retries": -1}}, "greater than or equal to 0"),
        ({"enrich": {"timeout": "5 minutes"}}, "'5 minutes' is not a duration"),
        ({"enrich": {"retry": 3}}, "Extra inputs are not permitted"),
        ({"": {"retries": 3}}, "spec.steps has a key that is empty"),
        ({"enrich": {"resources": {"limits": {"memory": "lots"}}}}, "'lots' is not a quantity"),
    ],
)
def test_bad_step_policies_are_refused_naming_the_problem(steps: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        spec(steps)


def _flaky_run(steps: dict[str, Any]) -> Any:
    run = make_run()
    return run.model_copy(update={"spec": run.spec.model_copy(update={"workflow": spec(steps)})}, deep=True)


def _attempts_until_failed(sim: Sim, step_id: str) -> int:
    """Fail ``step_id`` until it fails for good; the number of attempts it got."""
    attempts = 0
    while attempts == 0 or sim.run.step(step_id).phase is not StepPhase.FAILED:
        assert attempts < 30
        attempts += 1
        sim.finish(err(step_id))
        step = sim.run.step(step_id)
        if step.phase is StepPhase.RETRYING:
            sim.step(at=step.next_attempt_at + timedelta(seconds=1))
    return attempts


def test_spec_steps_gives_the_flaky_step_six_attempts_and_another_keeps_the_default() -> None:
    steps = {"enrich": {"retries": 5}}
    flaky = Sim(_flaky_run(steps))
    assert _attempts_until_failed(flaky, "enrich") == 6
    step = flaky.run.step("enrich")
    assert step.policy is not None and (step.policy.retries, step.policy.retries_from) == (
        5,
        "spec.steps[enrich]",
    )
    notes = [n.message for n in flaky.decision.of(Note)]
    assert any("retries exhausted: spec.steps[enrich].retries is 5" in n for n in notes), notes
    other = Sim(_flaky_run(steps))
    assert _attempts_until_failed(other, "insert") == 5
    assert other.run.step("insert").policy.retries_from == "spec.retries.limit"


def test_known_steps_get_their_pod_settings_and_timeout_the_first_execution_does_not() -> None:
    steps = {"heavy": {"resources": {"limits": {"memory": "4Gi"}}, "timeout": "90s"}}
    sim = Sim(_flaky_run(steps))
    first = sim.only_start()
    assert first.step is None and first.pod is None and first.timeout_seconds is None
    # The first step returns and replay names the next one: its Job is created for it.
    report = ok("light", 1).model_copy(
        update={"next": Report(kind=ReportKind.NEXT_STEP, step=StepRef(id="heavy", name="heavy"))}
    )
    sim.finish(report)
    heavy = sim.only_start()
    assert heavy.step == "heavy" and heavy.timeout_seconds == 90.0
    assert heavy.pod == PodOverrides(resources={"limits": {"memory": "4Gi"}})
    # Timed out: the message says which setting stopped it.
    sim.finish(None, kind=ExitKind.DEADLINE)
    attempt = sim.run.step("heavy").attempts[-1]
    assert "spec.steps[heavy].timeout (1m30s)" in attempt.message


def test_code_options_are_recorded_and_apply_without_a_spec_entry() -> None:
    sim = Sim(_flaky_run({}))
    options = CodeOptions(retries=1, timeout_seconds=20)
    failed = err("enrich").model_copy(update={"step": StepRef(id="enrich", name="enrich", options=options)})
    sim.finish(failed)
    step = sim.run.step("enrich")
    assert step.policy is not None and step.policy.code == options
    assert (step.policy.retries_from, step.policy.timeout, step.policy.timeout_from) == (
        "code",
        "20s",
        "code",
    )
    sim.step(at=step.next_attempt_at + timedelta(seconds=1))
    assert sim.only_start().timeout_seconds == 20.0
    sim.finish(err("enrich"))
    assert sim.run.step("enrich").phase is StepPhase.FAILED  # 1 retry: 2 attempts


def test_the_pod_override_is_on_that_steps_pod_only() -> None:
    workflow_spec = spec(
        {"heavy": {"resources": {"limits": {"memory": "4Gi"}}, "nodeSelector": {"pool": "big"}}},
        podTemplate={"resources": {"limits": {"cpu": "500m", "memory": "256Mi"}}, "nodeSelector": {"a": "b"}},
    )
    run = _flaky_run({}).model_copy(deep=True)
    run.spec.workflow = workflow_spec
    run.metadata.namespace = "ns"
    state_ = Sim(run).only_start().state

    def job(step: str | None) -> dict[str, Any]:
        policy = resolve(workflow_spec, step, step, None)
        action = StartExecution(
            name="j", step=step, attempt=1, state=state_, timeout_seconds=None, pod=policy.pod or None
        )
        return builders.step_job(run, action)["spec"]["template"]["spec"]

    heavy, light = job("heavy"), job("light")
    assert heavy["containers"][0]["resources"] == {"limits": {"cpu": "500m", "memory": "4Gi"}}
    assert heavy["nodeSelector"] == {"a": "b", "pool": "big"}
    assert light["containers"][0]["resources"] == {"limits": {"cpu": "500m", "memory": "256Mi"}}
    assert light["nodeSelector"] == {"a": "b"}


def test_step_options_reach_the_report_and_kwargs_still_reach_the_function() -> None:
    seen: dict[str, Any] = {}

    def enrich(rows: int, *, retries: int, timeout: str) -> int:
        seen.update(rows=rows, retries=retries, timeout=timeout)
        return rows

    def flow(ctx: kubestep.Context, step: kubestep.Step) -> Any:
        opts = kubestep.StepOptions(retries=7, timeout="2m")
        return step.run("enrich", enrich, 3, retries="r", timeout="t", opts=opts)

    report = Replay(state(), now=lambda: NOW).run(flow)
    assert report.kind is ReportKind.STEP_SUCCEEDED and report.output == 3
    assert seen == {"rows": 3, "retries": "r", "timeout": "t"}
    assert report.step is not None and report.step.options == CodeOptions(retries=7, timeout_seconds=120)


@pytest.mark.parametrize(
    ("opts", "problem"),
    [
        (kubestep.StepOptions(retries=50), "StepOptions(retries=50) must be a whole number from 0 to 20"),
        (kubestep.StepOptions(retries=True), "StepOptions(retries=True)"),
        (kubestep.StepOptions(timeout="soon"), "StepOptions(timeout='soon')"),
        (kubestep.StepOptions(timeout=0), "must be more than 0"),
        ({"retries": 3}, "opts must be a kubestep.StepOptions, got dict"),
    ],
)
def test_bad_step_options_fail_the_run_naming_the_step(opts: Any, problem: str) -> None:
    def flow(ctx: kubestep.Context, step: kubestep.Step) -> Any:
        return step.run("enrich", lambda: 1, opts=opts)

    report = Replay(state(), now=lambda: NOW).run(flow)
    assert report.kind is ReportKind.FAILED and report.error is not None
    assert "step 'enrich'" in report.error.message and problem in report.error.message


def test_timeouts_model_still_defaults() -> None:
    assert Timeouts().step is None


def test_the_testing_harness_applies_step_options() -> None:
    from kubestep.api.workflow import RetryPolicy
    from kubestep.testing import run_workflow

    @kubestep.workflow("harness-policy", trigger="app/go")
    def flow(ctx: kubestep.Context, step: kubestep.Step) -> str:
        try:
            step.run("flaky", lambda: 1, opts=kubestep.StepOptions(retries=1))
        except kubestep.StepError:
            return "gave up"
        return "ok"

    quick = RetryPolicy.model_validate(
        {"limit": 3, "backoff": {"initial": "1ms", "max": "1ms", "jitter": "0s"}}
    )
    result = run_workflow(flow, {"name": "app/go"}, steps={"flaky": RuntimeError("down")}, retries=quick)
    assert result.output == "gave up"
    flaky = result.steps["flaky"]
    assert flaky.attempt_count == 2 and flaky.policy is not None and flaky.policy.retries_from == "code"
