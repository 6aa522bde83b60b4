"""The SDK's replay: a workflow function run once against the steps its run recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import kubestep
from kubestep.api.names import sent_event_name
from kubestep.api.report import MemoEntry, Report, ReportKind, RunnerState, StepRef
from kubestep.api.run import StepType
from kubestep.sdk.step import Replay

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TRIGGER = {"name": "test/started", "data": {"who": "ada"}, "user": {"id": "u1"}}


def done(step_id: str, output: Any = None, *, type: StepType = StepType.RUN, error: dict | None = None):
    """A finished step as the run recorded it."""
    return MemoEntry(id=step_id, name=step_id.split(":")[0], type=type, done=True, output=output, error=error)


def reached(step_id: str, *, type: StepType = StepType.RUN):
    """A step the run reached that has no result yet (planned, retrying, sleeping...)."""
    return MemoEntry(id=step_id, name=step_id.split(":")[0], type=type)


def state(*steps: MemoEntry, target: str | None = None, max_output_bytes: int = 65536, attempt: int = 1):
    return RunnerState(
        run="run-1",
        function="tests:flow",
        event=TRIGGER,
        steps=list(steps),
        target=target,
        attempt=attempt,
        max_output_bytes=max_output_bytes,
    )


def replay(flow, run_state: RunnerState) -> tuple[Report, list[Report]]:
    """Replay ``flow`` once at NOW; return its report and the ``started`` reports announced before."""
    r = Replay(run_state, now=lambda: NOW)
    started: list[Report] = []
    r.on_start = started.append
    return r.run(flow), started


class Calls:
    """Step functions that count their calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fn(self, name: str, output: Any = None):
        def call(*args: Any) -> Any:
            self.calls.append(name)
            return output

        return call


# step.run ------------------------------------------------------------------------------------------------


def test_a_new_step_is_executed_and_its_json_output_reported_after_a_started_report():
    order: list[str] = []

    def lookup(who: str) -> dict:
        order.append("executed")
        return {"who": who, "tags": ("a", "b")}

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("lookup-user", lookup, ctx.event.data["who"])
        raise AssertionError("the function must stop after executing a new step")

    r = Replay(state(), now=lambda: NOW)
    started: list[Report] = []
    r.on_start = lambda report: (started.append(report), order.append("started"))
    report = r.run(flow)

    assert order == ["started", "executed"]
    assert started == [Report(kind=ReportKind.STARTED, step=StepRef(id="lookup-user", name="lookup-user"))]
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.step == StepRef(id="lookup-user", name="lookup-user", type=StepType.RUN)
    # The output is what JSON makes of it: the tuple became a list.
    assert report.output == {"who": "ada", "tags": ["a", "b"]}


def test_finished_steps_are_not_executed_again_and_return_their_recorded_output():
    calls = Calls()
    seen: list[Any] = []

    @kubestep.workflow("flow")
    def flow(ctx, step):
        a = step.run("a", calls.fn("a", "fresh-a"))
        b = step.run("b", calls.fn("b", "fresh-b"))
        seen.extend([a, b])
        return step.run("c", calls.fn("c", [a, b]))

    report, started = replay(flow, state(done("a", "recorded-a"), done("b", {"n": 2})))

    assert calls.calls == ["c"]
    assert [s.step.id for s in started] == ["c"]
    assert seen == ["recorded-a", {"n": 2}]
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.step.id == "c"


def test_the_return_value_is_reported_when_every_step_has_finished():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        a = step.run("a", calls.fn("a"))
        return {"a": a, "run": ctx.run_id, "who": ctx.event.data["who"]}

    report, started = replay(flow, state(done("a", 41)))

    assert calls.calls == []
    assert started == []
    assert report.kind is ReportKind.COMPLETED
    assert report.output == {"a": 41, "run": "run-1", "who": "ada"}
    assert report.error is None


def test_a_function_returning_a_non_json_value_fails_the_run():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        return {"when": datetime(2026, 1, 1, tzinfo=UTC)}

    report, _ = replay(flow, state())

    assert report.kind is ReportKind.FAILED
    assert report.error.retriable is False
    assert "the workflow function" in report.error.message
    assert "datetime.datetime" in report.error.message


def test_a_step_that_failed_for_good_raises_step_error_at_its_call_site_and_can_be_handled():
    calls = Calls()
    caught: list[kubestep.StepError] = []

    @kubestep.workflow("flow")
    def flow(ctx, step):
        try:
            step.run("charge-card", calls.fn("charge-card"))
        except kubestep.StepError as exc:
            caught.append(exc)
            return step.run("refund", calls.fn("refund", "refunded"))
        return "charged"

    failure = {"type": "CardDeclined", "message": "insufficient funds"}
    report, _ = replay(flow, state(done("charge-card", error=failure)))

    assert calls.calls == ["refund"]
    (exc,) = caught
    assert (exc.step_id, exc.error_type, exc.error_message) == (
        "charge-card",
        "CardDeclined",
        "insufficient funds",
    )
    assert "charge-card" in str(exc) and "insufficient funds" in str(exc)
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert (report.step.id, report.output) == ("refund", "refunded")


def test_an_uncaught_step_error_fails_the_run_with_the_steps_error():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("charge-card", lambda: None)
        return "charged"

    failure = {"type": "CardDeclined", "message": "insufficient funds"}
    report, _ = replay(flow, state(done("charge-card", error=failure)))

    assert report.kind is ReportKind.FAILED
    assert report.error.type == "CardDeclined"
    assert report.error.message == "insufficient funds"
    assert report.error.retriable is False
    assert report.step == StepRef(id="charge-card", name="charge-card", type=StepType.RUN)


def test_a_name_repeated_in_a_loop_gets_a_counter():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        return [step.run("send-reminder", calls.fn(f"reminder {i}", i)) for i in range(3)]

    first, _ = replay(flow, state())
    third, _ = replay(flow, state(done("send-reminder", 0), done("send-reminder:1", 1)))
    end, _ = replay(
        flow, state(done("send-reminder", 0), done("send-reminder:1", 1), done("send-reminder:2", 2))
    )

    assert first.step == StepRef(id="send-reminder", name="send-reminder")
    assert third.step == StepRef(id="send-reminder:2", name="send-reminder")
    assert third.output == 2
    assert calls.calls == ["reminder 0", "reminder 2"]
    assert end.kind is ReportKind.COMPLETED
    assert end.output == [0, 1, 2]


def test_the_attempt_number_is_visible_to_the_function():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        return step.run("a", lambda: ctx.attempt)

    report, _ = replay(flow, state(reached("a"), target="a", attempt=3))

    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.output == 3


# Nondeterminism ------------------------------------------------------------------------------------------


def test_steps_met_in_another_order_than_recorded_fail_the_run_naming_both_steps():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("send-email", calls.fn("send-email"))
        step.run("charge-card", calls.fn("charge-card"))

    report, started = replay(flow, state(done("charge-card", "ok"), done("send-email", "ok")))

    assert calls.calls == []
    assert started == []
    assert report.kind is ReportKind.FAILED
    assert report.error.type == "NondeterminismError"
    assert report.error.retriable is False
    assert "'send-email'" in report.error.message
    assert "'charge-card'" in report.error.message
    assert "same order" in report.error.message


def test_a_step_met_with_another_type_than_recorded_fails_the_run():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("pause", lambda: None)

    report, _ = replay(flow, state(done("pause", type=StepType.SLEEP)))

    assert report.kind is ReportKind.FAILED
    assert report.error.type == "NondeterminismError"
    assert "run step 'pause'" in report.error.message
    assert "sleep step 'pause'" in report.error.message


def test_a_new_step_met_before_the_one_to_execute_is_nondeterminism():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("new-step", calls.fn("new-step"))
        step.run("retried", calls.fn("retried"))

    report, _ = replay(flow, state(target="retried"))

    assert calls.calls == []
    assert report.kind is ReportKind.FAILED
    assert report.error.type == "NondeterminismError"
    assert "'new-step'" in report.error.message and "'retried'" in report.error.message


def test_a_step_in_progress_met_before_the_one_to_execute_is_not_executed():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("a", calls.fn("a"))
        step.run("b", calls.fn("b"))

    report, _ = replay(flow, state(reached("a"), reached("b"), target="b"))

    assert calls.calls == []
    assert report.kind is ReportKind.FAILED
    assert report.error.type == "NondeterminismError"
    assert "'a'" in report.error.message and "'b'" in report.error.message


def test_nondeterminism_is_reported_even_inside_except_exception():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        try:
            step.run("send-email", calls.fn("send-email"))
        except Exception:
            calls.calls.append("user handler")
            return "handled"
        return "sent"

    report, _ = replay(flow, state(done("charge-card", "ok")))

    assert calls.calls == []
    assert report.kind is ReportKind.FAILED
    assert report.error.type == "NondeterminismError"
    assert "'send-email'" in report.error.message and "'charge-card'" in report.error.message


# Interrupts and user exception handlers -----------------------------------------------------------------


def test_except_exception_around_steps_does_not_swallow_the_interrupt():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        try:
            step.run("a", calls.fn("a", "A"))
        except Exception:
            calls.calls.append("swallowed a")
        try:
            step.sleep("nap", "1m")
        except Exception:
            calls.calls.append("swallowed nap")
        return "reached the end"

    executing, _ = replay(flow, state())
    sleeping, _ = replay(flow, state(done("a", "A")))

    assert calls.calls == ["a"]
    assert (executing.kind, executing.output) == (ReportKind.STEP_SUCCEEDED, "A")
    assert sleeping.kind is ReportKind.SLEEP


def test_a_failing_step_is_reported_even_inside_except_exception():
    handled: list[str] = []

    def boom() -> None:
        raise ValueError("bad row 3")

    @kubestep.workflow("flow")
    def flow(ctx, step):
        try:
            step.run("parse", boom)
        except Exception:
            handled.append("user handler")
        return "reached the end"

    report, _ = replay(flow, state())

    assert handled == []
    assert report.kind is ReportKind.STEP_FAILED
    assert report.step.id == "parse"


# Step errors and outputs --------------------------------------------------------------------------------


def _failing_step(exc, run_state: RunnerState | None = None) -> Report:
    """Replay a step raising ``exc`` (an exception, or a callable making one) and return its report."""

    def fail() -> None:
        raise exc() if callable(exc) else exc

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("call-api", fail)

    report, _ = replay(flow, run_state or state())
    assert report.kind is ReportKind.STEP_FAILED
    assert report.step.id == "call-api"
    return report


def test_an_ordinary_exception_is_a_retriable_step_failure_with_its_traceback():
    report = _failing_step(ConnectionError("connection reset by peer"))

    assert report.error.type == "ConnectionError"
    assert report.error.message == "connection reset by peer"
    assert report.error.retriable is True
    assert report.error.retry_after_seconds is None
    assert "in fail" in report.error.traceback
    assert "ConnectionError: connection reset by peer" in report.error.traceback


def test_non_retriable_error_is_not_retriable():
    report = _failing_step(kubestep.NonRetriableError("the file is malformed"))

    assert report.error.type == "NonRetriableError"
    assert report.error.message == "the file is malformed"
    assert report.error.retriable is False


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        (12, 12.0),
        (timedelta(minutes=2), 120.0),
        (NOW + timedelta(seconds=45), 45.0),
        (NOW - timedelta(seconds=45), 0.0),
    ],
    ids=["string", "compound-string", "seconds", "timedelta", "datetime", "datetime-past"],
)
def test_retry_after_error_sets_the_delay(delay, seconds):
    report = _failing_step(kubestep.RetryAfterError("rate limited", delay))

    assert report.error.type == "RetryAfterError"
    assert report.error.message == "rate limited"
    assert report.error.retriable is True
    assert report.error.retry_after_seconds == seconds


@pytest.mark.parametrize(
    ("delay", "problem"),
    [(datetime(2030, 1, 1), "timezone"), ("soon", "'soon'"), (-5, "negative")],
    ids=["naive-datetime", "bad-string", "negative"],
)
def test_retry_after_error_with_an_unusable_delay_fails_the_step_saying_why(delay, problem):
    report = _failing_step(lambda: kubestep.RetryAfterError("rate limited", delay))

    assert report.error.type == "WorkflowDefinitionError"
    assert report.error.retriable is False
    assert "RetryAfterError" in report.error.message
    assert problem in report.error.message


@pytest.mark.parametrize(
    ("output", "type_name"),
    [
        ({"ids": {1, 2}}, "set"),
        ([datetime(2026, 1, 1, tzinfo=UTC)], "datetime.datetime"),
        (float("nan"), "float"),
    ],
    ids=["set", "datetime", "nan"],
)
def test_a_non_json_output_fails_the_step_for_good_naming_the_step_and_the_type(output, type_name):
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("load-users", lambda: output)

    report, _ = replay(flow, state())

    assert report.kind is ReportKind.STEP_FAILED
    assert report.error.retriable is False
    assert "'load-users'" in report.error.message
    assert f"type {type_name})" in report.error.message


def test_an_output_over_the_limit_fails_the_step_naming_its_size_and_the_limit():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("export", lambda: "x" * 2000)

    report, _ = replay(flow, state(max_output_bytes=1024))
    ok, _ = replay(flow, state(max_output_bytes=2002))

    assert report.kind is ReportKind.STEP_FAILED
    assert report.error.retriable is False
    assert "'export'" in report.error.message
    assert "2002 bytes" in report.error.message  # the JSON string with its quotes
    assert "limit is 1024 bytes" in report.error.message
    assert ok.kind is ReportKind.STEP_SUCCEEDED


def test_an_exception_outside_any_step_fails_the_run_for_good():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("a", lambda: None)
        return ctx.event.data["missing-key"]

    report, _ = replay(flow, state(done("a")))

    assert report.kind is ReportKind.FAILED
    assert report.step is None
    assert report.error.type == "KeyError"
    assert "missing-key" in report.error.message
    assert report.error.retriable is False


# step.parallel ------------------------------------------------------------------------------------------


def _parallel_flow(calls: Calls):
    @kubestep.workflow("flow")
    def flow(ctx, step):
        a, b, c = step.parallel(
            lambda: step.run("fetch-a", calls.fn("fetch-a", "A")),
            lambda: step.run("fetch-b", calls.fn("fetch-b", "B")),
            lambda: step.run("fetch-c", calls.fn("fetch-c", "C")),
        )
        return step.run("combine", calls.fn("combine", [a, b, c]))

    return flow


def test_parallel_new_steps_are_planned_together_and_none_is_executed():
    calls = Calls()

    report, started = replay(_parallel_flow(calls), state())

    assert calls.calls == []
    assert started == []
    assert report.kind is ReportKind.PLANNED
    assert report.planned == [StepRef(id=f"fetch-{x}", name=f"fetch-{x}") for x in "abc"]


def test_parallel_with_a_target_executes_only_that_step():
    calls = Calls()
    planned = state(reached("fetch-a"), reached("fetch-b"), reached("fetch-c"), target="fetch-b")

    report, started = replay(_parallel_flow(calls), planned)

    assert calls.calls == ["fetch-b"]
    assert [s.step.id for s in started] == ["fetch-b"]
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert (report.step.id, report.output) == ("fetch-b", "B")


def test_parallel_returns_the_outputs_in_order_once_all_are_done():
    calls = Calls()
    # Recorded finishing order differs from the branch order; outputs still follow the branches.
    finished = state(done("fetch-a", "A"), done("fetch-b", "B"), done("fetch-c", "C"))

    report, _ = replay(_parallel_flow(calls), finished)

    assert calls.calls == ["combine"]
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert (report.step.id, report.output) == ("combine", ["A", "B", "C"])


# Sleeps, waits, events, invokes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "seconds"), [("1h30m", 5400), (90, 90), (timedelta(days=2), 172800)], ids=str
)
def test_sleep_reports_when_to_wake_up(duration, seconds):
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.sleep("cool-down", duration)
        return "awake"

    report, started = replay(flow, state())
    after, _ = replay(flow, state(done("cool-down", type=StepType.SLEEP)))

    assert started == []
    assert report.kind is ReportKind.SLEEP
    assert report.step == StepRef(id="cool-down", name="cool-down", type=StepType.SLEEP)
    assert report.until == NOW + timedelta(seconds=seconds)
    assert (after.kind, after.output) == (ReportKind.COMPLETED, "awake")


@pytest.mark.parametrize(
    "when", [datetime(2026, 4, 1, 9, 0, tzinfo=UTC), "2026-04-01T09:00:00Z", "2026-04-01T11:00:00+02:00"]
)
def test_sleep_until_reports_the_given_time(when):
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.sleep_until("until-april", when)

    report, _ = replay(flow, state())

    assert report.kind is ReportKind.SLEEP
    assert report.step.type is StepType.SLEEP
    assert report.until == datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def test_sleep_until_a_naive_time_fails_the_run_asking_for_a_timezone():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.sleep_until("until-april", datetime(2026, 4, 1, 9, 0))

    report, _ = replay(flow, state())

    assert report.kind is ReportKind.FAILED
    assert report.error.type == "WorkflowDefinitionError"
    assert report.error.retriable is False
    assert "'until-april'" in report.error.message
    assert "timezone" in report.error.message


def _waiting_flow(results: list):
    @kubestep.workflow("flow")
    def flow(ctx, step):
        results.append(
            step.wait_for_event(
                "wait-for-approval",
                "app/approved",
                timeout="2d",
                if_="async.data.who == event.data.who",
            )
        )
        return "done"

    return flow


def test_wait_for_event_reports_the_event_condition_and_timeout():
    report, _ = replay(_waiting_flow([]), state())

    assert report.kind is ReportKind.WAIT_FOR_EVENT
    assert report.step == StepRef(
        id="wait-for-approval", name="wait-for-approval", type=StepType.WAIT_FOR_EVENT
    )
    assert report.event == "app/approved"
    assert report.if_ == "async.data.who == event.data.who"
    assert report.timeout_seconds == 2 * 86400
    assert '"if":"async.data.who == event.data.who"' in report.model_dump_json(by_alias=True)


def test_wait_for_event_returns_none_after_a_timeout_and_the_event_when_one_arrived():
    results: list = []
    flow = _waiting_flow(results)
    arrived = {"name": "app/approved", "data": {"who": "ada"}, "user": {"id": "u2"}, "id": "ev-1"}

    timed_out, _ = replay(flow, state(done("wait-for-approval", None, type=StepType.WAIT_FOR_EVENT)))
    received, _ = replay(flow, state(done("wait-for-approval", arrived, type=StepType.WAIT_FOR_EVENT)))

    assert timed_out.kind is received.kind is ReportKind.COMPLETED
    assert results[0] is None
    assert results[1] == kubestep.EventPayload(
        name="app/approved", data={"who": "ada"}, user={"id": "u2"}, id="ev-1"
    )


def test_send_event_reports_the_event_and_returns_the_recorded_ids():
    results: list = []

    @kubestep.workflow("flow")
    def flow(ctx, step):
        results.append(step.send_event("announce", "app/imported", {"count": 3}, user={"id": "u1"}))
        return "sent"

    report, _ = replay(flow, state())
    after, _ = replay(flow, state(done("announce", ["ev-123"], type=StepType.SEND_EVENT)))

    assert report.kind is ReportKind.SEND_EVENT
    assert report.step == StepRef(id="announce", name="announce", type=StepType.SEND_EVENT)
    assert report.events == [{"name": "app/imported", "data": {"count": 3}, "user": {"id": "u1"}}]
    # The ids the events will get are known at once, so replay goes on past the send to the function's end.
    assert report.next == Report(kind=ReportKind.COMPLETED, output="sent")
    assert results == [[sent_event_name("run-1", "announce", 0)], ["ev-123"]]
    assert after.kind is ReportKind.COMPLETED


def test_send_event_with_non_json_data_fails_the_run():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.send_event("announce", "app/imported", {"at": datetime(2026, 1, 1, tzinfo=UTC)})

    report, _ = replay(flow, state())

    assert report.kind is ReportKind.FAILED
    assert report.error.retriable is False
    assert "'announce'" in report.error.message and "datetime.datetime" in report.error.message


@kubestep.workflow("compute-invoice")
def compute_invoice(ctx, step):
    return step.run("sum", lambda: 42)


@pytest.mark.parametrize("target", ["compute-invoice", compute_invoice], ids=["by-name", "by-function"])
def test_invoke_reports_the_child_workflow_and_returns_its_output(target):
    results: list = []

    @kubestep.workflow("flow")
    def flow(ctx, step):
        results.append(step.invoke("invoice", target, {"order": 7}, timeout="1h"))
        return "invoiced"

    report, _ = replay(flow, state())
    after, _ = replay(flow, state(done("invoice", {"total": 42}, type=StepType.INVOKE)))

    assert report.kind is ReportKind.INVOKE
    assert report.step == StepRef(id="invoice", name="invoice", type=StepType.INVOKE)
    assert report.workflow == "compute-invoice"
    assert report.data == {"order": 7}
    assert report.timeout_seconds == 3600
    assert results == [{"total": 42}]
    assert after.kind is ReportKind.COMPLETED
