"""Knowing each execution's step before its Job exists: after a step returns, replay goes on to the next
boundary (no step body runs) and reports it with the output, so the engine starts the next execution for a
known step, or needs none at all."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from test_engine import T0, Sim, make_run, ok, ref
from test_replay import NOW, Calls, done, reached, state

import kubestep
from kubestep.api.names import discovery_execution_name, sent_event_name, step_execution_name
from kubestep.api.report import Report, ReportKind, decode_report, encode_report
from kubestep.api.run import AttemptResult, RunPhase, StepPhase, StepType
from kubestep.engine import PublishEvents
from kubestep.engine.observations import ExitKind
from kubestep.sdk.step import Replay


def run_once(flow: Any, run_state: Any) -> tuple[Report, list[Report]]:
    """Replay once; return the report and the interim reports persisted on the way."""
    persisted: list[Report] = []
    r = Replay(run_state, now=lambda: NOW)
    r.on_start = persisted.append
    r.on_succeeded = persisted.append
    return r.run(flow), persisted


# Replay ----------------------------------------------------------------------------------------------


def test_after_a_step_returns_replay_names_the_next_step_without_running_it():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        rows = step.run("validate", calls.fn("validate", {"rows": 3}))
        step.run("enrich", calls.fn("enrich"), rows)

    report, persisted = run_once(flow, state())
    assert calls.calls == ["validate"]
    assert report.kind is ReportKind.STEP_SUCCEEDED and report.output == {"rows": 3}
    assert report.next == Report(kind=ReportKind.NEXT_STEP, step=ref("enrich"))
    # The output was persisted on its own before replay went on: it outlives whatever comes next.
    assert [p.kind for p in persisted] == [ReportKind.STARTED, ReportKind.STEP_SUCCEEDED]
    assert persisted[1].next is None and persisted[1].output == {"rows": 3}


def test_a_retry_of_a_known_step_also_reports_what_follows_it():
    calls = Calls()

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("validate", calls.fn("validate"))
        step.run("enrich", calls.fn("enrich", 5))
        step.sleep("pause", "1h")

    report, _ = run_once(flow, state(done("validate"), reached("enrich"), target="enrich", attempt=2))
    assert calls.calls == ["enrich"]
    assert report.output == 5
    assert report.next is not None and report.next.kind is ReportKind.SLEEP
    assert report.next.until == NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("tail", "kind"),
    [
        (lambda step: {"imported": 3}, ReportKind.COMPLETED),
        (
            lambda step: step.wait_for_event("approval", "app/approved", timeout="1d"),
            ReportKind.WAIT_FOR_EVENT,
        ),
        (lambda step: step.invoke("child", "other-flow", {"x": 1}), ReportKind.INVOKE),
        (
            lambda step: step.parallel(lambda: step.run("a", lambda: 1), lambda: step.run("b", lambda: 2)),
            ReportKind.PLANNED,
        ),
        (lambda step: {}["missing"], ReportKind.FAILED),
    ],
)
def test_every_kind_of_boundary_rides_on_the_output(tail: Any, kind: ReportKind):
    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("first", lambda: "out")
        return tail(step)

    report, _ = run_once(flow, state())
    assert report.kind is ReportKind.STEP_SUCCEEDED and report.output == "out"
    assert report.next is not None and report.next.kind is kind


def test_sends_after_a_step_get_their_ids_and_replay_goes_on_past_them():
    seen: list[list[str]] = []

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("notify", lambda: "sent")
        seen.append(step.send_event("announce", "app/done", {"n": 1}))
        return {"ok": True}

    report, _ = run_once(flow, state())
    assert seen == [[sent_event_name("run-1", "announce", 0)]]
    send = report.next
    assert (
        send is not None
        and send.kind is ReportKind.SEND_EVENT
        and send.step == ref("announce", StepType.SEND_EVENT)
    )
    assert send.next == Report(kind=ReportKind.COMPLETED, output={"ok": True})


def test_a_step_of_a_parallel_group_reports_only_its_own_output():
    @kubestep.workflow("flow")
    def flow(ctx, step):
        a, b = step.parallel(lambda: step.run("a", lambda: 1), lambda: step.run("b", lambda: 2))
        return a + b

    report, _ = run_once(flow, state(reached("a"), reached("b"), target="b"))
    assert report.kind is ReportKind.STEP_SUCCEEDED and report.output == 2 and report.next is None


def test_sys_exit_outside_a_step_fails_the_run_at_once_with_a_message_saying_so():
    import sys

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("first", lambda: 1)
        sys.exit(3)

    report, _ = run_once(flow, state(done("first", 1)))
    assert report.kind is ReportKind.FAILED and report.error is not None
    assert not report.error.retriable
    assert "sys.exit(3)" in report.error.message and "outside any step" in report.error.message


def test_sys_exit_inside_a_step_is_a_failed_attempt_of_that_step():
    import sys

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("first", lambda: sys.exit(4))

    report, _ = run_once(flow, state())
    assert report.kind is ReportKind.STEP_FAILED and report.step == ref("first")
    assert report.error is not None and report.error.retriable and report.error.type == "SystemExit"


def test_a_message_with_lone_surrogates_is_made_encodable_and_stays_on_its_step():
    name = b"caf\xe9.csv".decode("utf-8", "surrogateescape")

    def fail() -> None:
        raise FileNotFoundError(f"no such file: {name}")

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("read", fail)

    report, _ = run_once(flow, state())
    assert report.kind is ReportKind.STEP_FAILED and report.error is not None and report.error.retriable
    assert "no such file: caf\\udce9.csv" in report.error.message
    message, _ = encode_report(report)
    assert decode_report(message) == report


def test_an_output_with_lone_surrogates_fails_the_step_naming_it_not_retried():
    name = b"caf\xe9.csv".decode("utf-8", "surrogateescape")

    @kubestep.workflow("flow")
    def flow(ctx, step):
        step.run("list-files", lambda: [name])

    report, _ = run_once(flow, state())
    assert report.kind is ReportKind.STEP_FAILED and report.error is not None
    assert not report.error.retriable
    assert "step 'list-files'" in report.error.message and "not valid Unicode" in report.error.message
    json.loads(encode_report(report)[0])


# Engine ----------------------------------------------------------------------------------------------


def with_next(report: Report, nxt: Report) -> Report:
    return report.model_copy(update={"next": nxt})


def test_the_next_execution_is_started_for_the_step_the_report_named():
    sim = Sim(make_run())
    sim.finish(with_next(ok("validate", {"rows": 3}), Report(kind=ReportKind.NEXT_STEP, step=ref("enrich"))))
    start = sim.only_start()
    assert start.step == "enrich" and start.attempt == 1
    assert start.name == step_execution_name("main-run", "enrich", 1)
    assert start.state.target == "enrich"
    enrich = sim.run.step("enrich")
    assert enrich is not None and enrich.phase is StepPhase.RUNNING
    assert sim.status.current_step == "enrich"


def test_a_function_that_returns_after_its_last_step_needs_no_other_execution():
    sim = Sim(make_run())
    sim.finish(with_next(ok("only", 1), Report(kind=ReportKind.COMPLETED, output={"done": True})))
    assert sim.status.phase is RunPhase.SUCCEEDED and sim.status.output == {"done": True}
    assert sim.started() == []


def test_a_send_chain_publishes_then_completes_without_another_execution():
    sim = Sim(make_run())
    send = Report(
        kind=ReportKind.SEND_EVENT,
        step=ref("announce", StepType.SEND_EVENT),
        events=[{"name": "app/done", "data": {}}],
        next=Report(kind=ReportKind.COMPLETED, output=1),
    )
    sim.finish(with_next(ok("notify", "sent"), send))
    (publish,) = sim.decision.of(PublishEvents)
    assert publish.ids == [sent_event_name("main-run", "announce", 0)]
    assert sim.status.phase is RunPhase.SUCCEEDED and sim.started() == []


def test_a_boundary_naming_a_finished_step_is_nondeterminism():
    sim = Sim(make_run())
    sim.finish(with_next(ok("a", 1), Report(kind=ReportKind.NEXT_STEP, step=ref("b"))))
    sim.finish(with_next(ok("b", 2), Report(kind=ReportKind.NEXT_STEP, step=ref("a"))))
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and sim.status.error.type == "NondeterminismError"


def test_an_output_over_the_run_budget_ignores_the_boundary_after_it():
    run = make_run()
    run.spec.workflow.limits.run_output_bytes = 10
    sim = Sim(run)
    sim.finish(with_next(ok("big", "x" * 50), Report(kind=ReportKind.COMPLETED, output=1)))
    big = sim.run.step("big")
    assert big is not None and big.phase is StepPhase.FAILED
    assert sim.status.phase is RunPhase.RUNNING  # the next replay meets the StepError
    assert sim.only_start().step is None


def test_a_pod_deleted_under_a_known_step_is_a_disruption_of_that_step():
    sim = Sim(make_run())
    sim.finish(with_next(ok("a", 1), Report(kind=ReportKind.NEXT_STEP, step=ref("b"))))
    # Deleted before the runner wrote anything: no report at all, yet the step is known.
    sim.finish(None, kind=ExitKind.DISRUPTED, reason="PodDeleted")
    b = sim.run.step("b")
    assert b is not None
    assert [(a.number, a.result, a.reason) for a in b.attempts] == [
        (1, AttemptResult.DISRUPTION, "PodDeleted")
    ]
    assert b.failures == 0 and sim.status.discovery_failures == 0
    retry = sim.only_start()
    assert retry.step == "b" and retry.attempt == 2 and retry.state.attempt == 2


def test_a_lost_job_under_a_known_step_is_lost_on_that_step_and_the_next_attempt_gets_a_new_name():
    sim = Sim(make_run())
    sim.finish(with_next(ok("a", 1), Report(kind=ReportKind.NEXT_STEP, step=ref("b"))))
    first = sim.only_start().name
    sim.finish(None, kind=ExitKind.LOST, reason="JobDeleted")
    b = sim.run.step("b")
    assert b is not None and [a.result for a in b.attempts] == [AttemptResult.LOST]
    assert sim.only_start().name not in (first, discovery_execution_name("main-run", 1, 1))


def test_the_first_execution_is_still_a_discovery():
    sim = Sim(make_run(), now=T0)
    assert sim.only_start().step is None


def test_a_status_the_platform_cannot_store_ends_the_run_with_what_fits():
    from kubestep.engine import StopExecution
    from kubestep.engine.observations import Observed, Outcome

    sim = Sim(make_run())
    sim.finish(with_next(ok("a", "x" * 1000), Report(kind=ReportKind.NEXT_STEP, step=ref("b"))))
    (active,) = sim.status.active
    out = Outcome(active.name, ExitKind.EXITED, ok("b", "y" * 1000), exit_code=0)
    refused = Observed(outcomes=[out], status_too_large="etcdserver: request is too large")
    decision = sim.step(refused)
    status = decision.status
    assert status.phase is RunPhase.FAILED
    assert status.error is not None and status.error.type == "StatusTooLarge"
    assert "request is too large" in status.error.message and "references" in status.error.message
    assert [(s.id, s.phase, s.output) for s in status.steps] == [
        ("a", StepPhase.SUCCEEDED, None),
        ("b", StepPhase.SUCCEEDED, None),
    ]
    assert all(len(s.attempts) == 1 and not s.attempts[0].log_tail for s in status.steps)
    # Nothing new starts, and the execution this decision would have started is not stopped: it never ran.
    assert status.active == [] and sim.started() == [] and decision.of(StopExecution) == []
    condition = next(c for c in status.conditions if c.type == "Succeeded")
    assert (condition.status, condition.reason) == ("False", "Failed")


# Pods that never start ------------------------------------------------------------------------------


def _known_step_sim(**timeouts: Any) -> Sim:
    from kubestep.api.workflow import Timeouts

    sim = Sim(make_run(timeouts=Timeouts(**timeouts)))
    sim.finish(with_next(ok("a", 1), Report(kind=ReportKind.NEXT_STEP, step=ref("b"))))
    return sim


def test_a_pod_that_cannot_pull_its_image_is_shown_on_its_step_then_fails_the_attempt_when_due():
    from kubestep.engine import RequeueAt, StopExecution
    from kubestep.engine.observations import Observed, Stalled

    sim = _known_step_sim(pod_start="2m")
    (active,) = sim.status.active
    stall = Stalled(active.name, "ImagePullBackOff", 'Back-off pulling image "example.invalid/x:1"')
    sim.step(Observed(stalled=[stall]), at=sim.now + timedelta(seconds=30))
    b = sim.run.step("b")
    assert b is not None and b.phase is StepPhase.RUNNING
    assert b.pending == 'ImagePullBackOff: Back-off pulling image "example.invalid/x:1"'
    assert [r.when for r in sim.decision.of(RequeueAt)] == [active.started_at + timedelta(minutes=2)]
    # Never before it is due, whatever is observed.
    sim.step(Observed(stalled=[stall]), at=active.started_at + timedelta(minutes=2) - timedelta(seconds=1))
    assert sim.status.active == [active]
    sim.step(Observed(stalled=[stall]), at=active.started_at + timedelta(minutes=2))
    b = sim.run.step("b")
    assert b is not None and b.pending == ""
    (attempt,) = b.attempts
    assert (attempt.result, attempt.reason) == (AttemptResult.ERROR, "ImagePullBackOff")
    assert "did not start within spec.timeouts.podStart (2m)" in attempt.message
    assert b.failures == 1 and b.phase is StepPhase.RETRYING
    assert [s.name for s in sim.decision.of(StopExecution)] == [active.name]


def test_a_pod_on_its_way_is_not_reported_and_a_started_one_clears_the_reason():
    from kubestep.engine.observations import Observed, Stalled

    sim = _known_step_sim()
    (active,) = sim.status.active
    sim.step(Observed(stalled=[Stalled(active.name, "ContainerCreating", "the pod is starting")]))
    b = sim.run.step("b")
    assert b is not None and b.pending == ""
    sim.step(Observed(stalled=[Stalled(active.name, "FailedCreate", 'serviceaccount "x" not found')]))
    assert sim.run.step("b").pending == 'FailedCreate: serviceaccount "x" not found'
    sim.step(Observed())
    assert sim.run.step("b").pending == ""


def test_a_discovery_whose_pod_never_starts_is_retried_with_backoff():
    from kubestep.engine.observations import Observed, Stalled

    sim = Sim(make_run())
    (active,) = sim.status.active
    sim.step(Observed(stalled=[Stalled(active.name, "FailedCreate", "quota")]), at=T0 + timedelta(minutes=5))
    assert sim.status.discovery_failures == 1 and sim.status.retry_at is not None
    assert sim.status.retry_at > sim.now


def test_a_long_run_of_sends_is_carried_in_shallow_reports_and_goes_on_in_the_next_execution():
    from kubestep.sdk.step import MAX_CHAINED_SENDS

    @kubestep.workflow("flow")
    def flow(ctx, step):
        for i in range(50):
            step.send_event("announce", "app/x", {"i": i})
        step.run("after", lambda: 1)

    report, _ = run_once(flow, state())
    chain = []
    while report is not None:
        chain.append(report)
        report = report.next
    assert [r.kind for r in chain] == [ReportKind.SEND_EVENT] * (MAX_CHAINED_SENDS + 1)
    assert decode_report(*encode_report(chain[0])) == chain[0]
    # Sends before a step ask for its execution instead of running its body here.
    short, _ = run_once(
        flow,
        state(
            *(
                done("announce" if i == 0 else f"announce:{i}", [], type=StepType.SEND_EVENT)
                for i in range(49)
            )
        ),
    )
    assert short.kind is ReportKind.SEND_EVENT and short.next == Report(
        kind=ReportKind.NEXT_STEP, step=ref("after")
    )


def _succeeded_condition(sim: Sim) -> Any:
    return next(c for c in sim.status.conditions if c.type == "Succeeded")


def test_the_first_execution_has_no_step_so_the_run_says_why_its_pod_has_not_started():
    from kubestep.api.workflow import Timeouts
    from kubestep.engine import Note
    from kubestep.engine.observations import Observed, Stalled

    sim = Sim(make_run(timeouts=Timeouts(pod_start="1m")))
    (active,) = sim.status.active
    pull = Stalled(active.name, "ErrImagePull", 'manifest unknown: "127.0.0.1:5000/contacts:9" not found')
    sim.step(Observed(stalled=[pull]), at=T0 + timedelta(seconds=10))
    condition = _succeeded_condition(sim)
    assert sim.status.phase is RunPhase.RUNNING and condition.status == "Unknown"
    assert (
        condition.message == f"progress: 0 done; the run's pod has not started: {pull.reason}: {pull.message}"
    )
    assert [n.reason for n in sim.decision.of(Note)] == ["RunPending"]
    # Told once per reason, not at every look.
    sim.step(Observed(stalled=[pull]), at=T0 + timedelta(seconds=20))
    assert sim.decision.of(Note) == []
    back_off = Stalled(active.name, "ImagePullBackOff", 'Back-off pulling image "127.0.0.1:5000/contacts:9"')
    sim.step(Observed(stalled=[back_off]), at=T0 + timedelta(seconds=30))
    assert "ImagePullBackOff: Back-off pulling image" in _succeeded_condition(sim).message
    assert [n.reason for n in sim.decision.of(Note)] == ["RunPending"]
    # On its way, or started: nothing to say.
    sim.step(Observed(stalled=[Stalled(active.name, "ContainerCreating")]), at=T0 + timedelta(seconds=40))
    assert _succeeded_condition(sim).message == "progress: 0 done"
    # Past spec.timeouts.podStart it fails with Kubernetes' reason, and the condition no longer waits on it.
    sim.step(Observed(stalled=[back_off]), at=T0 + timedelta(minutes=1))
    assert sim.status.discovery_failures == 1 and sim.status.active == []
    assert _succeeded_condition(sim).message == "progress: 0 done"
    (failed,) = [n for n in sim.decision.of(Note) if n.reason == "RunnerFailed"]
    assert (
        "the run's pod did not start within spec.timeouts.podStart (1m): ImagePullBackOff" in failed.message
    )


def test_a_run_whose_first_pod_never_starts_fails_with_the_reason_when_no_retry_is_left():
    from kubestep.api.workflow import RetryPolicy, Timeouts
    from kubestep.engine.observations import Observed, Stalled

    sim = Sim(make_run(timeouts=Timeouts(pod_start="20s"), retries=RetryPolicy(limit=0, disruption_limit=0)))
    (active,) = sim.status.active
    pull = Stalled(active.name, "ErrImagePull", "not found")
    sim.step(Observed(stalled=[pull]), at=T0 + timedelta(seconds=20))
    assert sim.status.phase is RunPhase.FAILED
    assert sim.status.error is not None and sim.status.error.type == "ErrImagePull"
    assert (
        "did not start within spec.timeouts.podStart (20s): ErrImagePull: not found"
        in sim.status.error.message
    )
    condition = _succeeded_condition(sim)
    assert (condition.status, condition.reason) == ("False", "Failed")
