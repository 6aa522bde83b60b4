"""Replay edge cases: ids that clash, failures inside parallel groups, misuse of the SDK."""

from __future__ import annotations

from test_replay import done, reached, replay, state

import kubestep
from kubestep.api.report import ReportKind

FAILED = {"type": "ValueError", "message": "bad"}


def test_a_name_that_looks_like_a_counter_does_not_clash_with_a_loop() -> None:
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("fetch:1", lambda: "explicit")
        for _ in range(2):
            step.run("fetch", lambda: "looped")

    report, _ = replay(flow, state(done("fetch:1", "explicit"), done("fetch", "looped")))
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.step.id == "fetch:2", "the second loop iteration skips the id the user took"


def test_a_failed_branch_of_a_parallel_group_can_be_handled_after_the_group() -> None:
    @kubestep.workflow("flow")
    def flow(ctx, step):
        try:
            step.parallel(lambda: step.run("a", lambda: 1), lambda: step.run("b", lambda: 2))
        except kubestep.StepError as exc:
            failed = exc.step_id
            return step.run("notify", lambda: f"handled {failed}")
        return "no error"

    report, _ = replay(flow, state(done("a", error=FAILED), done("b", 2)))
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.step.id == "notify" and report.output == "handled a"


def test_a_retry_of_one_branch_runs_even_when_another_branch_failed_for_good() -> None:
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.parallel(lambda: step.run("a", lambda: 1), lambda: step.run("b", lambda: "b ran"))

    report, _ = replay(flow, state(done("a", error=FAILED), reached("b"), target="b"))
    assert report.kind is ReportKind.STEP_SUCCEEDED and report.output == "b ran"


def test_a_branch_with_two_steps_is_refused_with_a_clear_message() -> None:
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.parallel(
            lambda: [step.run("a1", lambda: 1), step.run("a2", lambda: 2)], lambda: step.run("b", int)
        )

    report, _ = replay(flow, state(done("a1", 1), done("b", 0)))
    assert report.kind is ReportKind.FAILED
    assert report.error.type == "WorkflowDefinitionError"
    assert "'a1'" in report.error.message and "'a2'" in report.error.message


def test_a_step_called_inside_another_step_is_refused_before_it_runs() -> None:
    inner_ran: list[bool] = []

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("outer", lambda: step.run("inner", lambda: inner_ran.append(True)))

    report, _ = replay(flow, state())
    assert report.kind is ReportKind.FAILED and report.error.type == "WorkflowDefinitionError"
    assert "'inner'" in report.error.message and "'outer'" in report.error.message
    assert inner_ran == []


def test_invoke_data_must_be_json() -> None:
    @kubestep.workflow("flow")
    def flow(ctx, step):
        try:
            step.invoke("call", "other", {"when": object()})
        except Exception:  # the misuse must not be swallowable
            return "swallowed"

    report, _ = replay(flow, state())
    assert report.kind is ReportKind.FAILED
    assert "'call'" in report.error.message and "not JSON" in report.error.message


def test_sleep_until_a_malformed_time_names_the_step() -> None:
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.sleep_until("nap", "tomorrow")

    report, _ = replay(flow, state())
    assert report.kind is ReportKind.FAILED
    assert "'nap'" in report.error.message and "'tomorrow'" in report.error.message


def test_a_duration_out_of_range_names_the_step() -> None:
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.wait_for_event("w", "x", timeout="soon")

    report, _ = replay(flow, state())
    assert report.kind is ReportKind.FAILED
    assert "'w'" in report.error.message and "'soon'" in report.error.message
