"""How the operator reads what the cluster shows (Jobs, pods, Events, child runs) as engine observations."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubestep.api.base import ObjectMeta
from kubestep.api.event import Event, EventSpec
from kubestep.api.report import (
    LOG_REPORT_MARKER,
    TERMINATION_MESSAGE_LIMIT,
    Report,
    ReportError,
    ReportKind,
    StepRef,
    encode_report,
)
from kubestep.api.run import (
    ErrorInfo,
    RunEvent,
    RunPhase,
    WorkflowRef,
    WorkflowRun,
    WorkflowRunSpec,
    WorkflowRunStatus,
)
from kubestep.api.workflow import Trigger, WorkflowSpec
from kubestep.controller import observe
from kubestep.engine import ExitKind
from kubestep.engine.observations import Outcome

Obj = dict[str, Any]
NAME = "contacts-7f3a9c2e41-5d1c0e9ab2f4-1"
STARTED_AT = "2026-03-01T12:00:00Z"
FINISHED_AT = "2026-03-01T12:00:04Z"
JOB_ENDED_AT = "2026-03-01T12:00:06Z"
T_FINISHED = datetime(2026, 3, 1, 12, 0, 4, tzinfo=UTC)
T_JOB_ENDED = datetime(2026, 3, 1, 12, 0, 6, tzinfo=UTC)

STEP = StepRef(id="validate", name="validate")
STARTED = Report(kind=ReportKind.STARTED, step=STEP)
SUCCEEDED = Report(kind=ReportKind.STEP_SUCCEEDED, step=STEP, output={"valid": True})
FAILED = Report(
    kind=ReportKind.STEP_FAILED,
    step=STEP,
    error=ReportError(type="ConnectionError", message="crm down", traceback="Traceback ...\nConnectionError"),
)


def _noise(size: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))


#: Compressible: travels zlib-compressed in the termination message.
ZIPPED = Report(kind=ReportKind.STEP_SUCCEEDED, step=STEP, output={"rows": ["same row"] * 2000})
#: Incompressible and large: travels in the pod log.
IN_LOG = Report(kind=ReportKind.STEP_SUCCEEDED, step=STEP, output={"blob": _noise(20000)})


def message_of(report: Report) -> str:
    message, log_line = encode_report(report)
    assert log_line is None
    return message


def job(finished: str | None = "Complete", reason: str | None = None) -> Obj:
    conditions: list[Obj] = []
    if finished == "Failed":
        conditions.append({"type": "FailureTarget", "status": "True", "lastTransitionTime": JOB_ENDED_AT})
    if finished == "Complete":
        conditions.append(
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": JOB_ENDED_AT}
        )
    if finished is not None:
        cond: Obj = {"type": finished, "status": "True", "lastTransitionTime": JOB_ENDED_AT}
        if reason:
            cond["reason"] = reason
        conditions.append(cond)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": NAME, "namespace": "team-a"},
        "status": {"conditions": conditions} if conditions else {"active": 1},
    }


def pod(
    exit_code: int | None = 0,
    message: str | None = None,
    reason: str | None = None,
    *,
    phase: str | None = None,
    pod_reason: str | None = None,
    pod_message: str | None = None,
    deleting: bool = False,
    conditions: list[Obj] | None = None,
    created: str = STARTED_AT,
) -> Obj:
    """A step pod; ``exit_code`` None: the container never terminated (still running or never started)."""
    state: Obj
    if exit_code is None:
        state = {"running": {"startedAt": STARTED_AT}}
    else:
        terminated: Obj = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": STARTED_AT,
            "finishedAt": FINISHED_AT,
        }
        if message is not None:
            terminated["message"] = message
        state = {"terminated": terminated}
    status: Obj = {
        "phase": phase or ("Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed")),
        "conditions": conditions or [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "step", "state": state}],
    }
    if pod_reason:
        status["reason"] = pod_reason
    if pod_message:
        status["message"] = pod_message
    metadata: Obj = {"name": f"{NAME}-x7k2p", "namespace": "team-a", "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = JOB_ENDED_AT
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}


@dataclass(frozen=True)
class Case:
    job: Obj | None
    pod: Obj | None
    kind: ExitKind
    reason: str
    report: Report | None = None
    exit_code: int | None = None
    log: str | None = None
    message_has: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


TRACEBACK = "\n".join(
    [
        "Traceback (most recent call last):",
        '  File "/app/contacts/workflows.py", line 12, in <module>',
        "    import crm_client",
        "ModuleNotFoundError: No module named 'crm_client'",
    ]
)

CASES = {
    "job-deleted-is-lost": Case(None, None, ExitKind.LOST, "JobDeleted", message_has=NAME),
    "json-report-in-termination-message": Case(
        job("Complete"), pod(0, message_of(SUCCEEDED)), ExitKind.EXITED, "Completed", SUCCEEDED, 0
    ),
    "zlib-report-in-termination-message": Case(
        job("Complete"), pod(0, message_of(ZIPPED)), ExitKind.EXITED, "Completed", ZIPPED, 0
    ),
    "report-in-the-log": Case(
        job("Complete"),
        pod(0, "log"),
        ExitKind.EXITED,
        "Completed",
        IN_LOG,
        0,
        log="validating 20000 rows\n" + (encode_report(IN_LOG)[1] or "") + "\n",
    ),
    "step-failed-report-exit-1": Case(
        job("Failed", "BackoffLimitExceeded"), pod(1, message_of(FAILED)), ExitKind.EXITED, "Error", FAILED, 1
    ),
    "pod-deadline-with-started-report": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(
            137,
            message_of(STARTED),
            pod_reason="DeadlineExceeded",
            pod_message="Pod was active on the node longer than the specified deadline",
        ),
        ExitKind.DEADLINE,
        "DeadlineExceeded",
        STARTED,
        137,
        message_has="longer than the specified deadline",
    ),
    "job-deadline-pod-never-started": Case(
        job("Failed", "DeadlineExceeded"),
        pod(None, phase="Pending"),
        ExitKind.DEADLINE,
        "DeadlineExceeded",
    ),
    "pod-deleted-after-started-report": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(143, message_of(STARTED), deleting=True),
        ExitKind.DISRUPTED,
        "PodDeleted",
        STARTED,
        143,
    ),
    "disruption-target-condition": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(
            137,
            message_of(STARTED),
            conditions=[
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting",
                }
            ],
        ),
        ExitKind.DISRUPTED,
        "EvictionByEvictionAPI",
        STARTED,
        137,
        message_has="Eviction API",
    ),
    "disruption-target-preemption-without-report": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(
            137,
            conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}],
        ),
        ExitKind.DISRUPTED,
        "PreemptionByScheduler",
        None,
        137,
    ),
    "kubelet-eviction-reason": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(137, pod_reason="Evicted", pod_message="The node was low on resource: memory."),
        ExitKind.DISRUPTED,
        "Evicted",
        None,
        137,
        message_has="low on resource",
    ),
    "pod-missing-on-failed-job": Case(
        job("Failed", "BackoffLimitExceeded"), None, ExitKind.DISRUPTED, "PodDeleted"
    ),
    "pod-without-container-exit": Case(
        job("Failed", "BackoffLimitExceeded"), pod(None, phase="Failed"), ExitKind.DISRUPTED, "PodLost"
    ),
    "runner-crashed-message-is-its-log": Case(
        job("Failed", "BackoffLimitExceeded"), pod(1, TRACEBACK), ExitKind.EXITED, "Error", None, 1
    ),
    "oom-killed": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(137, message_of(STARTED), "OOMKilled"),
        ExitKind.EXITED,
        "OOMKilled",
        STARTED,
        137,
    ),
    "final-report-wins-over-pod-deletion": Case(
        job("Complete"),
        pod(0, message_of(SUCCEEDED), deleting=True),
        ExitKind.EXITED,
        "Completed",
        SUCCEEDED,
        0,
    ),
    "final-report-wins-over-disruption-target": Case(
        job("Complete"),
        pod(
            0,
            message_of(SUCCEEDED),
            conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}],
        ),
        ExitKind.EXITED,
        "Completed",
        SUCCEEDED,
        0,
    ),
    "final-report-wins-over-deadline": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(1, message_of(FAILED), pod_reason="DeadlineExceeded"),
        ExitKind.EXITED,
        "Error",
        FAILED,
        1,
    ),
    "invalid-report-shape-is-no-report": Case(
        job("Failed", "BackoffLimitExceeded"),
        pod(1, '{"kind": "step_failed"}'),
        ExitKind.EXITED,
        "Error",
        None,
        1,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_how_an_execution_ended(case: Case) -> None:
    ended = observe.outcome(NAME, case.job, case.pod, case.log)
    assert ended is not None
    assert ended.name == NAME
    assert ended.kind is case.kind
    assert ended.reason == case.reason
    assert ended.report == case.report
    assert ended.exit_code == case.exit_code
    assert case.message_has in ended.message


@pytest.mark.parametrize(
    "running_job",
    [
        pytest.param(job(None), id="no-conditions"),
        pytest.param(
            {"status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}},
            id="failure-target-only",
        ),
        pytest.param(
            {"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}},
            id="success-criteria-only",
        ),
        pytest.param(
            {"status": {"conditions": [{"type": "Complete", "status": "False"}]}}, id="complete-false"
        ),
        pytest.param({"metadata": {"name": NAME}}, id="no-status"),
    ],
)
def test_a_job_the_job_controller_has_not_finished_is_still_running(running_job: Obj) -> None:
    # Unless its pod ended with a final report: the step is over, and the run goes on seconds before the
    # Job controller says so. A pod that ended without one waits for the Job's verdict (a deadline, ...).
    assert observe.job_finished(running_job) is None
    assert observe.outcome(NAME, running_job, pod(None)) is None
    assert observe.outcome(NAME, running_job, pod(137, message_of(STARTED))) is None
    assert observe.outcome(NAME, running_job, pod(1, "Traceback ...")) is None
    ended = observe.outcome(NAME, running_job, pod(0, message_of(SUCCEEDED)))
    assert ended is not None and ended.kind is ExitKind.EXITED and ended.report == SUCCEEDED


def test_test_inputs_exercise_each_report_encoding() -> None:
    assert message_of(SUCCEEDED).startswith("{")
    assert message_of(ZIPPED).startswith("z:")
    assert len(message_of(ZIPPED)) <= TERMINATION_MESSAGE_LIMIT
    message, log_line = encode_report(IN_LOG)
    assert message == "log"
    assert log_line is not None and log_line.startswith(LOG_REPORT_MARKER)


def test_a_report_in_the_log_needs_the_log_and_is_found_in_it() -> None:
    ended_pod = pod(0, "log")
    assert observe.report_needs_log(ended_pod)
    # First look, without the log: no report yet, and nothing of the word "log" as a log tail.
    first = observe.outcome(NAME, job("Complete"), ended_pod)
    assert first is not None and first.report is None and first.log_tail == ""
    _, log_line = encode_report(IN_LOG)
    assert log_line is not None
    # The runner may print more report-looking lines before; the last marked line is the report.
    stale = encode_report(
        Report(kind=ReportKind.STEP_SUCCEEDED, step=STEP, output={"blob": _noise(20000, 1)})
    )
    log = f"{stale[1]}\nrow 1 ok\nrow 2 ok\n{log_line}\n"
    second = observe.outcome(NAME, job("Complete"), ended_pod, log)
    assert second is not None
    assert second.kind is ExitKind.EXITED and second.report == IN_LOG


@pytest.mark.parametrize(
    ("the_pod", "needs"),
    [
        (pod(0, "log"), True),
        (pod(0, "log\n"), True),
        (pod(0, message_of(SUCCEEDED)), False),
        (pod(0, message_of(ZIPPED)), False),
        (pod(1, "log in failed\nTraceback"), False),
        (pod(None), False),
        (None, False),
    ],
)
def test_report_needs_log(the_pod: Obj | None, needs: bool) -> None:
    assert observe.report_needs_log(the_pod) is needs


def test_a_runner_that_died_before_reporting_leaves_its_output_as_the_log_tail() -> None:
    lines = [f"processing row {i}" for i in range(40)] + TRACEBACK.splitlines()
    ended = observe.outcome(NAME, job("Failed"), pod(1, "\n".join(lines)))
    assert ended is not None
    assert ended.kind is ExitKind.EXITED and ended.exit_code == 1 and ended.reason == "Error"
    assert ended.report is None
    tail = ended.log_tail.splitlines()
    assert tail[-1] == "ModuleNotFoundError: No module named 'crm_client'"
    assert tail == lines[-20:]


def test_the_fetched_log_is_the_tail_when_there_is_one() -> None:
    log = "\n".join(f"line {i}" for i in range(100)) + "\n"
    ended = observe.outcome(NAME, job("Failed"), pod(137, message_of(STARTED), deleting=True), log)
    assert ended is not None and ended.kind is ExitKind.DISRUPTED
    assert ended.log_tail.splitlines() == [f"line {i}" for i in range(80, 100)]


def test_a_report_in_the_message_is_not_repeated_as_the_log_tail() -> None:
    ended = observe.outcome(NAME, job("Failed"), pod(1, message_of(FAILED)))
    assert ended is not None and ended.report == FAILED
    assert ended.log_tail == ""


def test_the_report_line_in_the_log_is_not_part_of_the_log_tail() -> None:
    # A failed step whose report is too large for the termination message: the runner prints it as the
    # last log line. The attempt's log tail must show what the step printed, not the encoded report.
    failed = Report(
        kind=ReportKind.STEP_FAILED,
        step=STEP,
        error=ReportError(type="ValueError", message="bad rows", traceback=_noise(12000)),
    )
    message, log_line = encode_report(failed)
    assert message == "log" and log_line is not None
    ended = observe.outcome(NAME, job("Failed"), pod(1, message), f"row 7 is bad\n{log_line}\n")
    assert ended is not None and ended.report == failed
    assert LOG_REPORT_MARKER not in ended.log_tail
    assert ended.log_tail == "row 7 is bad"


@pytest.mark.parametrize(
    ("the_job", "the_pod", "finished_at"),
    [
        pytest.param(job("Complete"), pod(0, message_of(SUCCEEDED)), T_FINISHED, id="container-finishedAt"),
        pytest.param(job("Failed"), None, T_JOB_ENDED, id="job-condition-time-without-pod"),
        pytest.param(job("Failed", "DeadlineExceeded"), pod(None), T_JOB_ENDED, id="job-condition-time"),
    ],
)
def test_when_an_execution_ended(the_job: Obj, the_pod: Obj | None, finished_at: datetime) -> None:
    ended = observe.outcome(NAME, the_job, the_pod)
    assert ended is not None and ended.finished_at == finished_at


def test_a_lost_job_tells_no_time_and_no_report() -> None:
    ended = observe.outcome(NAME, None, None)
    assert ended is not None
    assert (ended.report, ended.exit_code, ended.finished_at) == (None, None, None)


def test_a_final_report_without_an_exit_code_counts_as_exit_zero() -> None:
    the_pod = pod(0, message_of(SUCCEEDED))
    del the_pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
    ended = observe.outcome(NAME, job("Complete"), the_pod)
    assert ended is not None and ended.kind is ExitKind.EXITED and ended.exit_code == 0


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param([], None, id="none"),
        pytest.param(
            [
                pod(created="2026-03-01T12:00:00Z"),
                pod(created="2026-03-01T12:05:00Z"),
                pod(created="2026-03-01T12:01:00Z"),
            ],
            "2026-03-01T12:05:00Z",
            id="latest-created",
        ),
    ],
)
def test_the_newest_pod_of_a_job_is_read(pods: list[Obj], expected: str | None) -> None:
    newest = observe.newest_pod(pods)
    assert (newest["metadata"]["creationTimestamp"] if newest else None) == expected


@pytest.mark.parametrize(
    ("report", "final"),
    [(None, False), (STARTED, False), (SUCCEEDED, True), (FAILED, True)],
)
def test_only_reports_other_than_started_are_final(report: Report | None, final: bool) -> None:
    assert observe.is_final(report) is final


# --- events ---------------------------------------------------------------------------------------


def make_event(created: datetime | None, ts: datetime | None = None, event_id: str | None = None) -> Event:
    return Event(
        metadata=ObjectMeta(name="approval-1", namespace="team-a", creation_timestamp=created),
        spec=EventSpec(name="app/approved", data={"order": 7}, user={"id": "u-1"}, id=event_id, ts=ts),
    )


@pytest.mark.parametrize(
    ("created", "received"),
    [
        (datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC), datetime(2026, 3, 1, 12, 0, 7, 999999, tzinfo=UTC)),
        (datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_an_event_counts_from_the_end_of_its_creation_second(created: datetime, received: datetime) -> None:
    assert observe.event_received_at(make_event(created)) == received


def test_an_event_published_in_the_second_a_wait_began_is_not_older_than_the_wait() -> None:
    wait_began = datetime(2026, 3, 1, 12, 0, 7, 400000, tzinfo=UTC)
    # The API server stamps the event created at 12:00:07.6 as 12:00:07.
    event = make_event(wait_began.replace(microsecond=0))
    assert observe.event_received_at(event) >= wait_began
    # ... while an event of the second before still is older.
    assert (
        observe.event_received_at(make_event(wait_began.replace(microsecond=0) - timedelta(seconds=1)))
        < wait_began
    )


def test_an_event_without_a_creation_time_counts_as_just_received() -> None:
    before = datetime.now(UTC)
    received = observe.event_received_at(make_event(None))
    assert before <= received <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("ts", "event_id", "expected_ts", "expected_id"),
    [
        # Without spec.id, the object's uid (here none: its name); without spec.ts, its creation time.
        pytest.param(None, None, "2026-03-01T12:00:07+00:00", "approval-1", id="defaults"),
        pytest.param(
            datetime(2026, 2, 1, 8, 0, tzinfo=UTC),
            "order-7",
            "2026-02-01T08:00:00+00:00",
            "order-7",
            id="given",
        ),
    ],
)
def test_the_event_payload_as_workflow_code_sees_it(
    ts: datetime | None, event_id: str | None, expected_ts: str, expected_id: str
) -> None:
    event = make_event(datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC), ts, event_id)
    expected = {
        "name": "app/approved",
        "data": {"order": 7},
        "user": {"id": "u-1"},
        "id": expected_id,
        "ts": expected_ts,
    }
    assert observe.event_payload(event) == expected
    found = observe.arrived(event)
    assert found.payload == expected
    assert found.source == "approval-1"
    assert found.received_at == datetime(2026, 3, 1, 12, 0, 7, 999999, tzinfo=UTC)


# --- child runs -----------------------------------------------------------------------------------


def test_a_child_result_carries_the_child_phase_output_and_error() -> None:
    child = WorkflowRun(
        metadata=ObjectMeta(name="child", namespace="team-a"),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="enrich"),
            workflow=WorkflowSpec(triggers=[Trigger(event="a/b")], image="img", function="m:f"),
            event=RunEvent(name="kubestep/function.invoked"),
        ),
        status=WorkflowRunStatus(phase=RunPhase.SUCCEEDED, output={"enriched": 3}),
    )
    result = observe.child_result("enrich-contacts", child)
    assert (result.step, result.phase, result.output, result.error) == (
        "enrich-contacts",
        RunPhase.SUCCEEDED,
        {"enriched": 3},
        None,
    )
    failed = child.model_copy(
        update={"status": WorkflowRunStatus(phase=RunPhase.FAILED, error=ErrorInfo(type="E", message="m"))}
    )
    assert observe.child_result("s", failed).error == ErrorInfo(type="E", message="m")


def test_invoking_a_missing_workflow_fails_at_once_naming_it() -> None:
    result = observe.missing_workflow("enrich-contacts", "enrich")
    assert result.step == "enrich-contacts"
    assert result.phase is RunPhase.FAILED
    assert result.error is not None
    assert result.error.type == "WorkflowNotFound"
    assert "'enrich'" in result.error.message


def test_an_end_seen_now_is_timed_by_the_operators_clock_and_a_late_one_by_the_end_of_its_second() -> None:
    stamped = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)  # Kubernetes' whole second
    ended = Outcome("job-1", ExitKind.EXITED, finished_at=stamped)
    just_now = stamped + timedelta(seconds=0, milliseconds=700)
    assert observe.timed(ended, just_now).finished_at == just_now
    after_restart = stamped + timedelta(minutes=3)
    late = observe.timed(ended, after_restart).finished_at
    assert late is not None and stamped < late < stamped + timedelta(seconds=1)
    assert observe.timed(Outcome("job-1", ExitKind.LOST), after_restart).finished_at is None


# Pods that have not started --------------------------------------------------------------------------


def _pending_pod(waiting: dict | None = None, scheduled: dict | None = None) -> dict:
    status: dict = {"phase": "Pending", "conditions": [scheduled] if scheduled else []}
    if waiting is not None:
        status["containerStatuses"] = [{"name": "step", "state": {"waiting": waiting}}]
    return {"metadata": {"name": "p"}, "status": status}


@pytest.mark.parametrize(
    ("pod", "events", "expected"),
    [
        (None, [], ("PodNotCreated", "the Job has created no pod yet")),
        (
            None,
            [
                {"type": "Normal", "reason": "SuccessfulCreate", "lastTimestamp": "2026-01-01T00:00:09Z"},
                {
                    "type": "Warning",
                    "reason": "FailedCreate",
                    "message": "old",
                    "lastTimestamp": "2026-01-01T00:00:01Z",
                },
                {
                    "type": "Warning",
                    "reason": "FailedCreate",
                    "message": 'serviceaccount "ci" not found',
                    "lastTimestamp": "2026-01-01T00:00:05Z",
                },
            ],
            ("FailedCreate", 'serviceaccount "ci" not found'),
        ),
        (_pending_pod({"reason": "ContainerCreating"}), [], ("ContainerCreating", "the pod is starting")),
        (
            _pending_pod({"reason": "ImagePullBackOff", "message": "Back-off pulling image"}),
            [],
            ("ImagePullBackOff", "Back-off pulling image"),
        ),
        (
            _pending_pod(
                scheduled={
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes",
                }
            ),
            [],
            ("Unschedulable", "0/1 nodes"),
        ),
        ({"metadata": {"name": "p"}, "status": {"phase": "Running"}}, [], None),
        ({"metadata": {"name": "p"}, "status": {"phase": "Failed"}}, [], None),
    ],
    ids=["no-pod", "failed-create", "creating", "image-pull", "unschedulable", "running", "ended"],
)
def test_why_a_pod_has_not_started(pod, events, expected) -> None:
    assert observe.not_started(pod, events) == expected


@pytest.mark.parametrize(
    ("pod", "held"),
    [
        (_pending_pod(), False),  # just created: on its way
        (_pending_pod({"reason": "ContainerCreating"}), False),
        (_pending_pod({"reason": "ErrImagePull", "message": "not found"}), True),
        (_pending_pod({"reason": "ImagePullBackOff"}), True),
        (_pending_pod({"reason": "CreateContainerConfigError"}), True),
        (
            _pending_pod(scheduled={"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}),
            True,
        ),
        ({"status": {"phase": "Running"}}, False),
        ({"status": {"phase": "Succeeded"}}, False),
    ],
    ids=[
        "new",
        "creating",
        "pull-error",
        "pull-back-off",
        "config-error",
        "unschedulable",
        "running",
        "done",
    ],
)
def test_a_pod_held_up_on_its_way_to_running_is_told_from_one_starting(pod, held) -> None:
    # The operator looks at the run again when a step pod is held up (only the pod's status says so).
    assert observe.held_up(pod) is held
