"""The cluster commands' renderers and argument checks, without a cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kubestep.api.base import ObjectMeta
from kubestep.api.event import Event, EventRunRef, EventSpec, EventStatus
from kubestep.api.run import (
    Attempt,
    AttemptResult,
    ErrorInfo,
    Execution,
    RunEvent,
    RunPhase,
    StepPhase,
    StepStatus,
    WorkflowRef,
    WorkflowRun,
    WorkflowRunSpec,
    WorkflowRunStatus,
)
from kubestep.api.workflow import Trigger, Workflow, WorkflowSpec
from kubestep.cli import render
from kubestep.cli.cluster import CliError
from kubestep.cli.cluster_cmds import _json_option, _object_name, complete_runs
from kubestep.cli.main import app

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def attempt(
    number: int, start: float, end: float | None, result: AttemptResult | None, **kw: object
) -> Attempt:
    return Attempt(
        number=number,
        job=f"job-{number}-{start}",
        started_at=at(start),
        finished_at=None if end is None else at(end),
        result=result,
        **kw,  # type: ignore[arg-type]
    )


def run_with(
    steps: list[StepStatus], phase: RunPhase = RunPhase.RUNNING, active: list[Execution] | None = None
) -> WorkflowRun:
    return WorkflowRun(
        metadata=ObjectMeta(name="r1", namespace="ns", creation_timestamp=T0),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="wf"),
            workflow=WorkflowSpec(triggers=[Trigger(event="app/go")], image="img", function="m:f"),
            event=RunEvent(name="app/go", data={"n": 1}, id="e-1", source="ev1"),
        ),
        status=WorkflowRunStatus(
            phase=phase,
            started_at=T0,
            finished_at=at(30) if phase.finished else None,
            steps=steps,
            active=active or [],
        ),
    )


VALIDATE = StepStatus(
    id="validate",
    name="validate",
    phase=StepPhase.SUCCEEDED,
    output={"ok": True},
    started_at=T0,
    finished_at=at(2),
    attempt_count=1,
    attempts=[
        attempt(1, 0, 2, AttemptResult.SUCCEEDED, reason="Completed", exit_code=0, log_tail="read 5 rows")
    ],
)
ENRICH_RETRYING = StepStatus(
    id="enrich",
    name="enrich",
    phase=StepPhase.RETRYING,
    started_at=at(3),
    attempt_count=1,
    failures=1,
    next_attempt_at=at(10),
    attempts=[
        attempt(
            1,
            3,
            4,
            AttemptResult.ERROR,
            reason="Unavailable",
            exit_code=1,
            message="HTTP 503\ntraceback...",
            retry_delay_seconds=6.0,
            log_tail="calling\n::kubestep-report::abc",
        )
    ],
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (12.34, "12.3s"), (65, "1m5s"), (3 * 3600 + 120, "3h2m"), (2 * 86400 + 3600, "2d1h")],
)
def test_durations_read_like_kubectl(seconds: float, text: str) -> None:
    assert render.short_duration(seconds) == text


@pytest.mark.parametrize(
    ("steps", "phase", "active", "current", "progress"),
    [
        ([], RunPhase.RUNNING, [Execution(name="x", started_at=T0)], ("(next)", "1"), "0 done"),
        ([VALIDATE, ENRICH_RETRYING], RunPhase.RUNNING, [], ("enrich (retrying)", "2"), "1 done"),
        (
            [VALIDATE, ENRICH_RETRYING.model_copy(update={"phase": StepPhase.RUNNING})],
            RunPhase.RUNNING,
            [Execution(name="e2", step="enrich", attempt=2, started_at=at(10))],
            ("enrich", "2"),
            "1 done",
        ),
        (
            [VALIDATE, ENRICH_RETRYING.model_copy(update={"phase": StepPhase.FAILED})],
            RunPhase.FAILED,
            [],
            ("", ""),
            "1 done, 1 failed",
        ),
    ],
)
def test_the_current_step_and_progress_come_from_the_status(
    steps: list[StepStatus],
    phase: RunPhase,
    active: list[Execution],
    current: tuple[str, str],
    progress: str,
) -> None:
    run = run_with(steps, phase, active)
    assert render.current(run) == current
    assert render.progress(run) == progress


def test_a_runs_row_has_every_column_and_the_namespace_with_all_namespaces() -> None:
    run = run_with([VALIDATE, ENRICH_RETRYING])
    row = render.run_row(run, at(90))
    assert row == ["r1", "wf", "Running", "1 done", "enrich (retrying)", "2", "1m30s", "1m30s"]
    assert render.run_row(run, at(90), namespace=True)[0] == "ns"
    assert len(row) == len(render.RUN_COLUMNS)


def plain(lines: list[str]) -> str:
    console = Console(width=300, record=True, force_terminal=False)
    for line in lines:
        console.print(line)
    return console.export_text()


def test_the_timeline_shows_every_attempt_its_class_reason_exit_code_and_backoff() -> None:
    failed_run = run_with(
        [VALIDATE, ENRICH_RETRYING.model_copy(update={"phase": StepPhase.FAILED, "next_attempt_at": None})],
        RunPhase.FAILED,
    )
    failed_run.status.error = ErrorInfo(type="Unavailable", message="HTTP 503", step="enrich")
    text = plain(render.timeline(failed_run, at(60), [run_with([], RunPhase.SUCCEEDED)]))
    assert "Event:      app/go (Event ev1, id e-1, ts -)" in text
    assert "1. validate  Succeeded  2.0s" in text
    assert "#1  12:00:00  2.0s  Succeeded  Completed  exit 0" in text
    assert "#1  12:00:03  1.0s  Error  Unavailable  exit 1  HTTP 503" in text
    assert "traceback" not in text  # only the message's first line
    assert "backoff 6.0s before the next attempt" in text
    assert "Error:      Unavailable: HTTP 503 (step enrich)" in text
    assert "Child runs:" in text
    assert text.index("validate") < text.index("enrich")


def test_rich_markup_in_user_text_is_printed_as_is() -> None:
    step = VALIDATE.model_copy(update={"error": ErrorInfo(type="E", message="[red]not markup[/red]")})
    assert "[red]not markup[/red]" in plain(render.step_lines(step, 1))


def test_attempt_logs_are_in_start_order_and_filtered() -> None:
    run = run_with(
        [ENRICH_RETRYING, VALIDATE],  # discovery order need not be start order
        active=[Execution(name="e2", step="enrich", attempt=2, started_at=at(10))],
    )
    entries = render.attempt_logs(run)
    assert [(e.step, e.attempt) for e in entries] == [("validate", 1), ("enrich", 1), ("enrich", 2)]
    assert [e.finished for e in entries] == [True, True, False]
    assert [(e.step, e.attempt) for e in render.attempt_logs(run, step="enrich", attempt=2)] == [
        ("enrich", 2)
    ]
    assert render.log_lines(entries[1].recorded) == ["calling"]  # the report line is data, not output
    assert render.prefix(entries[0], recorded=True) == "validate #1 (recorded)"


def test_workflow_and_event_rows() -> None:
    wf = WorkflowSpec(
        triggers=[Trigger.model_validate({"event": "app/go", "if": "event.data.n > 0"})],
        image="i",
        function="m:f",
    )

    row = render.workflow_row(Workflow(metadata=ObjectMeta(name="wf"), spec=wf), T0)
    assert row[:3] == ["wf", "Unknown", "app/go if event.data.n > 0"]
    event = Event(
        metadata=ObjectMeta(name="ev1", creation_timestamp=T0),
        spec=EventSpec(name="app/go", id="e-1"),
        status=EventStatus(started=[EventRunRef(workflow="wf", run="r1")]),
    )
    assert render.event_row(event, at(5)) == ["ev1", "app/go", "e-1", "r1", "-", "5s"]


def test_dump_prints_lists_as_kubectl_does() -> None:
    assert json.loads(render.dump([{"a": 1}], "json")) == {
        "apiVersion": "v1",
        "kind": "List",
        "items": [{"a": 1}],
    }
    assert render.dump({"a": 1}, "yaml") == "a: 1\n"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{nope", ["--data is not valid JSON", "line 1 column 2", "@file.json"]),
        ("[1]", ["--data must be a JSON object, not list"]),
        ("@/no/such/file", ["--data @/no/such/file: cannot read /no/such/file"]),
    ],
)
def test_malformed_json_options_are_usage_errors(value: str, words: list[str]) -> None:
    with pytest.raises(CliError) as caught:
        _json_option("--data", value)
    assert caught.value.exit_code == 2
    for word in words:
        assert word in str(caught.value)


def test_json_options_read_files(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"filename": "a.csv"}')
    assert _json_option("--data", f"@{path}") == {"filename": "a.csv"}
    assert _json_option("--data", None) == {}


def test_event_object_names_come_from_the_event_name() -> None:
    assert _object_name("api/contact_list.uploaded") == "api-contact-list-uploaded-"
    assert _object_name("///") == "event-"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["send", "api/x", "--data", "{"], 2, ["--data is not valid JSON"]),
        (["send", "bad name!", "--data", "{}"], 2, ["the event is invalid: spec.name"]),
        (["runs", "-o", "xml"], 2, ["--output 'xml'", "json"]),
        (["runs", "--phase", "Done"], 2, ["--phase 'Done'", "Succeeded"]),
        (["runs", "--local", "/no/such/dir"], 2, ["no local runs there"]),
        (["describe", "run", "x", "--local", ".", "-n", "ns"], 2, ["--local", "takes no"]),
        (
            ["runs", "--kubeconfig", "/no/such/kubeconfig"],
            2,
            ["--kubeconfig /no/such/kubeconfig: no such file"],
        ),
    ],
)
def test_bad_arguments_are_one_line_errors_before_any_cluster_call(
    args: list[str], code: int, words: list[str]
) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    for word in words:
        assert word in line, line


def test_run_names_complete_from_the_runs_there(tmp_path: Path) -> None:
    for name in ("contacts-1", "contacts-2", "other"):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        run = run_with([]).model_copy(update={"metadata": ObjectMeta(name=name)})
        (folder / "run.json").write_text(run.model_dump_json(by_alias=True))

    class Ctx:
        params = {"local": tmp_path}

    assert complete_runs(Ctx(), "contacts") == ["contacts-1", "contacts-2"]  # type: ignore[arg-type]
    Ctx.params = {"local": tmp_path / "missing"}
    assert complete_runs(Ctx(), "") == []  # type: ignore[arg-type]


def test_watch_prints_a_run_again_only_when_more_than_its_age_changed() -> None:
    run = run_with([VALIDATE, ENRICH_RETRYING])
    later = render.run_row(run, at(95))
    assert render.watch_key(render.run_row(run, at(90))) == render.watch_key(later)
    moved = run_with([VALIDATE, ENRICH_RETRYING.model_copy(update={"phase": StepPhase.RUNNING})])
    assert render.watch_key(render.run_row(moved, at(95))) != render.watch_key(later)
    header = render.watch_line(list(render.RUN_COLUMNS))
    line = render.watch_line(later)
    assert line.index("Running") == header.index("PHASE") and line.index("1 done") == header.index("PROGRESS")


def test_objects_are_printed_without_managed_fields_as_kubectl_does() -> None:
    obj = {"metadata": {"name": "r1", "managedFields": [{"manager": "x"}]}, "spec": {}}
    assert "managedFields" not in render.dump(obj, "yaml")
    assert "managedFields" not in render.dump([obj], "json")
    assert obj["metadata"]["managedFields"]  # the caller's object is left alone
