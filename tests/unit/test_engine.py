"""The pure engine, one transition at a time, on an injected clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubestep.api.base import ObjectMeta
from kubestep.api.names import discovery_execution_name, step_execution_name
from kubestep.api.report import Report, ReportError, ReportKind, StepRef
from kubestep.api.run import (
    AttemptResult,
    RunEvent,
    RunPhase,
    StepPhase,
    StepType,
    WorkflowRef,
    WorkflowRun,
    WorkflowRunSpec,
)
from kubestep.api.workflow import Backoff, RetryPolicy, Timeouts, Trigger, WorkflowSpec
from kubestep.engine import (
    AnnounceEnd,
    ArrivedEvent,
    ChildResult,
    ExitKind,
    Observed,
    Outcome,
    PublishEvents,
    RequeueAt,
    StartChild,
    StartExecution,
    StopExecution,
    decide,
)
from kubestep.engine.decide import MAX_ATTEMPTS_KEPT

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_run(
    retries: RetryPolicy | None = None, timeouts: Timeouts | None = None, **event: Any
) -> WorkflowRun:
    spec = WorkflowSpec(
        triggers=[Trigger(event="app/go")],
        image="img",
        function="app.flows:main",
        retries=retries or RetryPolicy(),
        timeouts=timeouts or Timeouts(),
    )
    return WorkflowRun(
        metadata=ObjectMeta(name="main-run", uid="uid-1"),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="main"),
            workflow=spec,
            event=RunEvent(name="app/go", data=event or {"x": 1}),
        ),
    )


class Sim:
    """Feeds the engine one decision after another, as an adapter would."""

    def __init__(self, run: WorkflowRun, now: datetime = T0) -> None:
        self.run = run
        self.now = now
        self.decision = decide(run, Observed(), now)
        self.run = run.model_copy(update={"status": self.decision.status})

    def step(self, observed: Observed | None = None, at: datetime | None = None) -> Any:
        self.now = at or self.now
        self.decision = decide(self.run, observed or Observed(), self.now)
        self.run = self.run.model_copy(update={"status": self.decision.status})
        return self.decision

    @property
    def status(self) -> Any:
        return self.run.status

    def started(self) -> list[StartExecution]:
        return self.decision.of(StartExecution)

    def only_start(self) -> StartExecution:
        (start,) = self.started()
        return start

    def finish(self, report: Report | None, kind: ExitKind = ExitKind.EXITED, **kw: Any) -> Any:
        """End the single active execution with ``report``, one second later."""
        (active,) = self.status.active
        code = kw.pop("exit_code", 1 if report and report.kind.value.endswith("failed") else 0)
        out = Outcome(
            active.name, kind, report, exit_code=code, finished_at=self.now + timedelta(seconds=1), **kw
        )
        return self.step(Observed(outcomes=[out]), at=self.now + timedelta(seconds=1))


def ref(step_id: str, kind: StepType = StepType.RUN) -> StepRef:
    return StepRef(id=step_id, name=step_id.split(":")[0], type=kind)


def ok(step_id: str, output: Any) -> Report:
    return Report(kind=ReportKind.STEP_SUCCEEDED, step=ref(step_id), output=output)


def err(step_id: str, retriable: bool = True, retry_after: float | None = None) -> Report:
    error = ReportError(
        type="ConnectionError", message="down", retriable=retriable, retry_after_seconds=retry_after
    )
    return Report(kind=ReportKind.STEP_FAILED, step=ref(step_id), error=error)


def test_a_new_run_starts_one_discovery_execution() -> None:
    sim = Sim(make_run())
    start = sim.only_start()
    assert sim.status.phase is RunPhase.RUNNING
    assert sim.status.started_at == T0
    assert start.step is None and start.attempt == 1
    assert start.state.steps == [] and start.state.event["data"] == {"x": 1}
    assert start.state.function == "app.flows:main"
    assert start.name == discovery_execution_name("main-run", 0, 1)
    assert [c.status for c in sim.status.conditions if c.type == "Succeeded"] == ["Unknown"]


def test_deciding_twice_on_the_same_input_gives_the_same_answer() -> None:
    run = make_run()
    first, second = decide(run, Observed(), T0), decide(run, Observed(), T0)
    assert first.status == second.status
    assert first.actions == second.actions


def test_a_step_output_is_recorded_and_the_next_execution_replays_it() -> None:
    sim = Sim(make_run())
    sim.finish(ok("validate", {"rows": 3}))
    step = sim.run.step("validate")
    assert step is not None and step.phase is StepPhase.SUCCEEDED and step.output == {"rows": 3}
    assert [(a.number, a.result) for a in step.attempts] == [(1, AttemptResult.SUCCEEDED)]
    nxt = sim.only_start()
    assert nxt.step is None
    assert [(m.id, m.done, m.output) for m in nxt.state.steps] == [("validate", True, {"rows": 3})]
    assert sim.status.progress == "1 done"


def test_an_outcome_seen_twice_is_recorded_once() -> None:
    sim = Sim(make_run())
    (active,) = sim.status.active
    out = Outcome(active.name, ExitKind.EXITED, ok("a", 1), exit_code=0)
    sim.step(Observed(outcomes=[out]))
    sim.step(Observed(outcomes=[out]))
    step = sim.run.step("a")
    assert step is not None and step.attempt_count == 1 and len(step.attempts) == 1


def test_a_failed_attempt_waits_the_backoff_then_retries_the_same_step() -> None:
    policy = RetryPolicy(limit=4, backoff=Backoff(initial="10s", factor=2, max="1h", jitter="5s"))
    sim = Sim(make_run(retries=policy))
    sim.finish(err("enrich"))
    step = sim.run.step("enrich")
    assert step is not None and step.phase is StepPhase.RETRYING
    first = step.attempts[0]
    assert (
        first.result is AttemptResult.ERROR and first.reason == "ConnectionError" and first.message == "down"
    )
    assert first.retry_delay_seconds is not None and 10 <= first.retry_delay_seconds <= 15
    assert sim.started() == []
    (requeue,) = sim.decision.of(RequeueAt)
    assert requeue.when == step.next_attempt_at

    sim.step(at=requeue.when - timedelta(milliseconds=1))
    assert sim.started() == []
    sim.step(at=requeue.when)
    retry = sim.only_start()
    assert retry.step == "enrich" and retry.attempt == 2
    assert retry.name == step_execution_name("main-run", "enrich", 2)
    assert retry.state.target == "enrich"

    sim.finish(err("enrich"))
    step = sim.run.step("enrich")
    assert step is not None
    second = step.attempts[1].retry_delay_seconds
    assert second is not None and 20 <= second <= 25


def test_fractional_factor_and_cap() -> None:
    policy = RetryPolicy(limit=6, backoff=Backoff(initial="2s", factor=1.5, max="5s", jitter="0s"))
    sim = Sim(make_run(retries=policy))
    delays = []
    for _ in range(5):
        sim.finish(err("s"))
        step = sim.run.step("s")
        assert step is not None and step.next_attempt_at is not None
        delays.append(step.attempts[-1].retry_delay_seconds)
        sim.step(at=step.next_attempt_at)
    assert delays == [2.0, 3.0, 4.5, 5.0, 5.0]


def test_jitter_differs_between_runs_but_stays_within_bounds() -> None:
    policy = RetryPolicy(backoff=Backoff(initial="1s", factor=2, max="1m", jitter="30s"))
    delays = set()
    for uid in range(20):
        run = make_run(retries=policy)
        run.metadata.uid = f"uid-{uid}"
        sim = Sim(run)
        sim.finish(err("s"))
        step = sim.run.step("s")
        assert step is not None
        delay = step.attempts[0].retry_delay_seconds
        assert delay is not None and 1 <= delay <= 31
        delays.add(delay)
    assert len(delays) > 10


def test_retries_exhausted_fail_the_step_and_the_function_gets_to_handle_it() -> None:
    sim = Sim(make_run(retries=RetryPolicy(limit=1, backoff=Backoff(jitter="0s"))))
    sim.finish(err("s"))
    step = sim.run.step("s")
    assert step is not None and step.next_attempt_at is not None
    sim.step(at=step.next_attempt_at)
    sim.finish(err("s"))
    step = sim.run.step("s")
    assert step is not None and step.phase is StepPhase.FAILED and step.attempt_count == 2
    assert step.error is not None and step.error.type == "ConnectionError" and step.error.step == "s"
    # The function is replayed with the error memoized, so that it may catch StepError.
    replay = sim.only_start()
    assert replay.step is None
    assert replay.state.steps[0].error == {"type": "ConnectionError", "message": "down"}
    assert sim.status.phase is RunPhase.RUNNING
    # Uncaught, it fails the run.
    failed = Report(
        kind=ReportKind.FAILED,
        step=ref("s"),
        error=ReportError(type="ConnectionError", message="down", retriable=False),
    )
    sim.finish(failed)
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and sim.status.error.step == "s"
    cond = next(c for c in sim.status.conditions if c.type == "Succeeded")
    assert cond.status == "False" and "down" in cond.message


def test_non_retriable_error_fails_the_step_after_one_attempt() -> None:
    sim = Sim(make_run())
    sim.finish(err("s", retriable=False))
    step = sim.run.step("s")
    assert step is not None and step.phase is StepPhase.FAILED and step.attempt_count == 1
    assert step.attempts[0].result is AttemptResult.NON_RETRIABLE
    assert step.attempts[0].retry_delay_seconds is None


def test_retry_after_waits_exactly_what_the_step_asked() -> None:
    sim = Sim(make_run())
    sim.finish(err("s", retry_after=42.0))
    step = sim.run.step("s")
    assert step is not None and step.attempts[0].result is AttemptResult.RETRY_AFTER
    assert step.attempts[0].retry_delay_seconds == 42.0
    assert step.next_attempt_at == sim.now + timedelta(seconds=42)
    assert step.failures == 1


def test_timeout_is_a_failed_attempt_of_the_step_that_was_running() -> None:
    sim = Sim(make_run(timeouts=Timeouts(step="30s")))
    assert sim.only_start().timeout_seconds == 30
    started = Report(kind=ReportKind.STARTED, step=ref("slow"))
    sim.finish(started, kind=ExitKind.DEADLINE, exit_code=137, log_tail="working...\n")
    step = sim.run.step("slow")
    assert step is not None and step.phase is StepPhase.RETRYING
    attempt = step.attempts[0]
    assert attempt.result is AttemptResult.TIMEOUT and attempt.reason == "DeadlineExceeded"
    assert "timeouts.step" in attempt.message and attempt.log_tail == "working...\n"
    assert step.failures == 1


def test_a_crash_mid_step_keeps_exit_code_reason_and_log_tail() -> None:
    sim = Sim(make_run())
    started = Report(kind=ReportKind.STARTED, step=ref("s"))
    sim.finish(started, exit_code=137, reason="OOMKilled", log_tail="allocating\n")
    step = sim.run.step("s")
    assert step is not None
    attempt = step.attempts[0]
    assert (attempt.result, attempt.reason, attempt.exit_code) == (AttemptResult.ERROR, "OOMKilled", 137)
    assert attempt.log_tail == "allocating\n"


def test_a_refused_execution_fails_the_run_at_once_with_the_platforms_reason() -> None:
    sim = Sim(make_run(retries=RetryPolicy(limit=4)))
    sim.finish(None, kind=ExitKind.REFUSED, reason="JobRejected", message="quantities must match")
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None
    assert (sim.status.error.type, sim.status.error.message) == ("JobRejected", "quantities must match")
    assert sim.started() == [] and sim.status.active == []  # not retried: it would be refused again
    cond = next(c for c in sim.status.conditions if c.type == "Succeeded")
    assert cond.status == "False" and "quantities must match" in cond.message


@pytest.mark.parametrize("kind", [ExitKind.DISRUPTED, ExitKind.LOST])
def test_disruptions_retry_at_once_without_spending_the_budget(kind: ExitKind) -> None:
    sim = Sim(make_run(retries=RetryPolicy(limit=0, disruption_limit=2)))
    started = Report(kind=ReportKind.STARTED, step=ref("s"))
    sim.finish(started, kind=kind, reason="PodDeleted" if kind is ExitKind.DISRUPTED else "JobNotFound")
    step = sim.run.step("s")
    assert step is not None and step.failures == 0 and step.disruptions == 1
    expected = AttemptResult.DISRUPTION if kind is ExitKind.DISRUPTED else AttemptResult.LOST
    assert step.attempts[0].result is expected
    assert step.attempts[0].reason in ("PodDeleted", "JobNotFound")
    retry = sim.only_start()  # no backoff wait
    assert retry.step == "s" and retry.attempt == 2
    # A real error with limit 0 still fails at once: the disruption spent nothing.
    sim.finish(err("s"))
    step = sim.run.step("s")
    assert step is not None and step.phase is StepPhase.FAILED and step.attempt_count == 2


def test_disruptions_have_their_own_bound() -> None:
    sim = Sim(make_run(retries=RetryPolicy(limit=4, disruption_limit=1)))
    started = Report(kind=ReportKind.STARTED, step=ref("s"))
    sim.finish(started, kind=ExitKind.DISRUPTED, reason="Evicted")
    sim.finish(None, kind=ExitKind.DISRUPTED, reason="Evicted")  # targeted retry, evicted before starting
    step = sim.run.step("s")
    assert step is not None and step.phase is StepPhase.FAILED and step.disruptions == 2
    assert step.error is not None and step.error.type == "Evicted"


def test_an_execution_that_dies_before_any_step_is_retried_then_fails_the_run() -> None:
    policy = RetryPolicy(limit=1, disruption_limit=1, backoff=Backoff(initial="10s", jitter="0s"))
    sim = Sim(make_run(retries=policy))
    names = []
    delays = []
    for _ in range(2):
        names.append(sim.only_start().name)
        sim.finish(None, exit_code=2, reason="BadInput", log_tail="cannot read the run state")
        assert sim.started() == [], "a crashing runner is not restarted at once"
        assert sim.status.retry_at is not None
        delays.append((sim.status.retry_at - sim.now).total_seconds())
        sim.step(at=sim.status.retry_at)
    assert delays == [10.0, 20.0]
    names.append(sim.only_start().name)
    assert len(set(names)) == 3, "every execution has its own name"
    sim.finish(None, exit_code=2, reason="BadInput")
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and "before reaching a step" in sim.status.conditions[0].message


def test_parallel_steps_start_together_and_join() -> None:
    sim = Sim(make_run())
    planned = Report(kind=ReportKind.PLANNED, planned=[ref("a"), ref("b")])
    sim.finish(planned)
    starts = sim.started()
    assert [(s.step, s.attempt) for s in starts] == [("a", 1), ("b", 1)]
    assert all(s.state.target == s.step for s in starts)
    assert sim.status.current_step == "a,b"
    by_step = {e.step: e.name for e in sim.status.active}
    out_b = Outcome(by_step["b"], ExitKind.EXITED, ok("b", "B"), exit_code=0)
    sim.step(Observed(outcomes=[out_b]))
    assert sim.started() == [] and len(sim.status.active) == 1
    out_a = Outcome(by_step["a"], ExitKind.EXITED, err("a"), exit_code=1)
    sim.step(Observed(outcomes=[out_a]))
    step_a = sim.run.step("a")
    assert step_a is not None and step_a.phase is StepPhase.RETRYING
    assert step_a.next_attempt_at is not None
    sim.step(at=step_a.next_attempt_at)
    (retry,) = sim.started()
    assert retry.step == "a" and retry.attempt == 2
    sim.finish(ok("a", "A"))
    nxt = sim.only_start()
    assert nxt.step is None and [m.output for m in nxt.state.steps] == ["A", "B"]


def test_sleep_holds_no_execution_and_wakes_on_time() -> None:
    sim = Sim(make_run())
    until = T0 + timedelta(hours=1)
    sim.finish(Report(kind=ReportKind.SLEEP, step=ref("nap", StepType.SLEEP), until=until))
    assert sim.status.phase is RunPhase.SLEEPING and sim.status.active == []
    assert sim.decision.of(RequeueAt) == [RequeueAt(until)]
    sim.step(at=until - timedelta(seconds=1))
    assert sim.started() == [] and sim.status.phase is RunPhase.SLEEPING
    sim.step(at=until)
    step = sim.run.step("nap")
    assert step is not None and step.phase is StepPhase.SUCCEEDED and step.output is None
    assert sim.only_start().state.steps[0].done


def _waiting(if_: str | None = None) -> Sim:
    sim = Sim(make_run(upload="u1"))
    report = Report(
        kind=ReportKind.WAIT_FOR_EVENT,
        step=ref("approval", StepType.WAIT_FOR_EVENT),
        event="app/approved",
        if_=if_,
        timeout_seconds=3600,
    )
    sim.finish(report)
    return sim


def test_wait_for_event_is_resumed_by_a_matching_event_only() -> None:
    sim = _waiting(if_="async.data.upload == event.data.upload")
    assert sim.status.phase is RunPhase.WAITING and sim.status.active == []
    began = sim.now
    early = ArrivedEvent({"name": "app/approved", "data": {"upload": "u1"}}, began - timedelta(seconds=5))
    other = ArrivedEvent({"name": "app/approved", "data": {"upload": "u2"}}, began + timedelta(seconds=1))
    wrong = ArrivedEvent({"name": "app/rejected", "data": {"upload": "u1"}}, began + timedelta(seconds=1))
    sim.step(Observed(events=[early, other, wrong]), at=began + timedelta(seconds=2))
    assert sim.status.phase is RunPhase.WAITING
    good = ArrivedEvent(
        {"name": "app/approved", "data": {"upload": "u1", "by": "ann"}}, began + timedelta(seconds=3)
    )
    sim.step(Observed(events=[other, good]), at=began + timedelta(seconds=4))
    step = sim.run.step("approval")
    assert step is not None and step.phase is StepPhase.SUCCEEDED
    assert step.output == {"name": "app/approved", "data": {"upload": "u1", "by": "ann"}}
    assert sim.status.phase is RunPhase.RUNNING and len(sim.started()) == 1


def test_wait_for_event_times_out_with_null() -> None:
    sim = _waiting()
    step = sim.run.step("approval")
    assert step is not None and step.wait is not None
    assert sim.decision.of(RequeueAt) == [RequeueAt(step.wait.timeout_at)]
    sim.step(at=step.wait.timeout_at)
    step = sim.run.step("approval")
    assert step is not None and step.phase is StepPhase.SUCCEEDED and step.output is None


def test_a_broken_wait_condition_fails_the_step_with_the_expression_error() -> None:
    sim = _waiting(if_="async.data.upload ==")
    arrived = ArrivedEvent({"name": "app/approved", "data": {}}, sim.now + timedelta(seconds=1))
    sim.step(Observed(events=[arrived]), at=sim.now + timedelta(seconds=2))
    step = sim.run.step("approval")
    assert step is not None and step.phase is StepPhase.FAILED
    assert step.error is not None and step.error.type == "ExpressionError"
    assert "does not compile" in step.error.message


def test_invoke_starts_a_child_and_resumes_with_its_output_or_error() -> None:
    sim = Sim(make_run())
    report = Report(
        kind=ReportKind.INVOKE, step=ref("charge", StepType.INVOKE), workflow="billing", data={"amount": 3}
    )
    sim.finish(report)
    (child,) = sim.decision.of(StartChild)
    assert child.workflow == "billing" and child.data == {"amount": 3} and child.step == "charge"
    assert sim.status.phase is RunPhase.WAITING
    # Until the child is seen, asking for it again is harmless (same name) and survives a lost action.
    again = decide(sim.run, Observed(), sim.now)
    assert again.of(StartChild) == [child]
    sim.step(Observed(children=[ChildResult("charge", RunPhase.RUNNING)]))
    assert sim.status.phase is RunPhase.WAITING and sim.decision.of(StartChild) == []
    sim.step(Observed(children=[ChildResult("charge", RunPhase.SUCCEEDED, output={"paid": True})]))
    step = sim.run.step("charge")
    assert step is not None and step.output == {"paid": True} and step.phase is StepPhase.SUCCEEDED


def test_a_failed_child_fails_the_invoke_step() -> None:
    sim = Sim(make_run())
    sim.finish(Report(kind=ReportKind.INVOKE, step=ref("charge", StepType.INVOKE), workflow="billing"))
    from kubestep.api.run import ErrorInfo

    failure = ErrorInfo(type="CardDeclined", message="declined")
    sim.step(Observed(children=[ChildResult("charge", RunPhase.FAILED, error=failure)]))
    step = sim.run.step("charge")
    assert step is not None and step.phase is StepPhase.FAILED
    assert step.error is not None and step.error.type == "CardDeclined"
    assert sim.only_start().state.steps[0].error == {"type": "CardDeclined", "message": "declined"}


def test_send_event_publishes_once_with_deterministic_ids() -> None:
    sim = Sim(make_run())
    events = [{"name": "app/done", "data": {"n": 1}, "user": {}}]
    sim.finish(Report(kind=ReportKind.SEND_EVENT, step=ref("tell", StepType.SEND_EVENT), events=events))
    (publish,) = sim.decision.of(PublishEvents)
    assert publish.events == events and len(publish.ids) == 1
    step = sim.run.step("tell")
    assert step is not None and step.output == publish.ids and step.phase is StepPhase.SUCCEEDED
    assert sim.only_start().state.steps[0].output == publish.ids


def test_completion_records_the_output_and_the_condition() -> None:
    sim = Sim(make_run())
    sim.finish(ok("a", 1))
    sim.finish(Report(kind=ReportKind.COMPLETED, output={"imported": 5}))
    assert sim.status.phase is RunPhase.SUCCEEDED and sim.status.output == {"imported": 5}
    assert sim.status.finished_at == sim.now and sim.status.active == []
    cond = next(c for c in sim.status.conditions if c.type == "Succeeded")
    assert (cond.status, cond.reason) == ("True", "Succeeded")
    assert sim.started() == []
    # Once that is saved, the end is published, once.
    (announce,) = sim.step(at=sim.now + timedelta(days=1)).actions
    assert isinstance(announce, AnnounceEnd) and announce.payload["name"] == "kubestep/run.finished"
    assert sim.step().actions == []


def test_an_import_error_fails_the_run_at_once() -> None:
    sim = Sim(make_run())
    error = ReportError(type="ModuleNotFoundError", message="cannot import 'app.flows:main'", retriable=False)
    sim.finish(Report(kind=ReportKind.FAILED, error=error))
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and sim.status.error.type == "ModuleNotFoundError"
    assert sim.started() == []


def test_cancel_stops_running_executions() -> None:
    sim = Sim(make_run())
    sim.finish(Report(kind=ReportKind.PLANNED, planned=[ref("a"), ref("b")]))
    names = {e.name for e in sim.status.active}
    cancelled = sim.run.model_copy(update={"spec": sim.run.spec.model_copy(update={"cancel": True})})
    decision = decide(cancelled, Observed(), sim.now)
    assert {s.name for s in decision.of(StopExecution)} == names
    assert decision.status.phase is RunPhase.CANCELLED and decision.status.active == []
    assert {s.phase for s in decision.status.steps} == {StepPhase.CANCELLED}
    assert all(s.attempts[-1].result is AttemptResult.CANCELLED for s in decision.status.steps)


def test_run_timeout_fails_the_run_and_stops_its_executions() -> None:
    # (The check that the first pod started, due earlier by default, is moved past the run's timeout.)
    sim = Sim(make_run(timeouts=Timeouts(run="1h", pod_start="2h")))
    (requeue,) = sim.decision.of(RequeueAt)
    assert requeue.when == T0 + timedelta(hours=1)
    sim.step(at=T0 + timedelta(hours=1))
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and sim.status.error.type == "Timeout"
    assert len(sim.decision.of(StopExecution)) == 1


def test_attempt_history_is_bounded() -> None:
    sim = Sim(make_run(retries=RetryPolicy(limit=20, backoff=Backoff(initial="1s", max="1s", jitter="0s"))))
    for _ in range(21):
        sim.finish(err("s"))
        step = sim.run.step("s")
        assert step is not None
        if step.next_attempt_at:
            sim.step(at=step.next_attempt_at)
    step = sim.run.step("s")
    assert step is not None and step.phase is StepPhase.FAILED and step.attempt_count == 21
    assert len(step.attempts) == MAX_ATTEMPTS_KEPT
    assert step.attempts[0].number == 1 and step.attempts[-1].number == 21


def test_status_of_a_long_run_stays_small() -> None:
    sim = Sim(make_run())
    for i in range(100):
        sim.finish(ok(f"item:{i}" if i else "item", {"id": i, "ok": True}))
    size = len(json.dumps(sim.status.to_dict()))
    assert sim.status.progress == "100 done"
    assert size < 64 * 1024, f"status of 100 small steps is {size} bytes"
