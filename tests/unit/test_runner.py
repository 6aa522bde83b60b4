"""``python -m kubestep.runner`` as a step pod runs it: a real process, a state file in, a report file out."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import kubestep
from kubestep.api.report import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REPORT_UNWRITABLE,
    EXIT_STEP_FAILED,
    LOG_REPORT_MARKER,
    TERMINATION_MESSAGE_LIMIT,
    MemoEntry,
    Report,
    ReportKind,
    RunnerState,
    StepRef,
    decode_report,
)
from kubestep.api.run import StepType

MODULE = "runner_flows"
FLOWS = """
import base64
import os
import random
import sys
import time

import kubestep


@kubestep.workflow("greet")
def greet(ctx, step):
    def hello(who):
        print(f"hello from the step, {who}")
        return {"greeting": f"hi {who}"}

    greeting = step.run("say-hello", hello, ctx.event.data["who"])
    return {"said": greeting["greeting"]}


def plain_function(ctx, step):
    return step.run("plain", lambda: "plain functions work too")


@kubestep.workflow("flaky")
def flaky(ctx, step):
    def call():
        print("calling the flaky service")
        raise ConnectionError("connection reset by peer")

    step.run("call-service", call)


@kubestep.workflow("broken")
def broken(ctx, step):
    return ctx.event.data["missing"]


@kubestep.workflow("napper")
def napper(ctx, step):
    step.sleep("nap", "1h")


@kubestep.workflow("big")
def big(ctx, step):
    return step.run("big", lambda: "x" * ctx.event.data["size"])


@kubestep.workflow("noise")
def noise(ctx, step):
    def make():
        print("making noise")
        return random.Random(ctx.event.data["seed"]).randbytes(ctx.event.data["size"]).hex()

    return step.run("noise", make)


@kubestep.workflow("hang")
def hang(ctx, step):
    def wait_forever():
        print("step is running", flush=True)
        time.sleep(60)

    step.run("hang", wait_forever)
"""


@dataclass
class Result:
    code: int
    message: str
    """The report file's raw contents (the termination message)."""
    stdout: str
    stderr: str

    @property
    def report(self) -> Report | None:
        return decode_report(self.message, self.stdout)


@pytest.fixture
def flows(tmp_path):
    """A folder with a module of workflow functions, as baked into a step image."""
    (tmp_path / f"{MODULE}.py").write_text(FLOWS)
    return tmp_path


def _env(flows: Path) -> dict[str, str]:
    """The user's modules on the path, and kubestep itself (however this test process found it)."""
    sdk = Path(kubestep.__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(flows), str(sdk)])}


def state_file(flows: Path, function: str, data: dict | None = None, **fields) -> Path:
    state = RunnerState(
        run="run-1", function=function, event={"name": "test/go", "data": data or {}}, **fields
    )
    path = flows / "state.json"
    path.write_text(state.model_dump_json(by_alias=True))
    return path


def run_runner(flows: Path, state: Path, report: Path | None = None) -> Result:
    report = report or flows / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "kubestep.runner", "--state", str(state), "--report", str(report)],
        cwd=flows,
        env=_env(flows),
        capture_output=True,
        text=True,
        timeout=60,
    )
    message = report.read_text() if report.is_file() else ""
    return Result(proc.returncode, message, proc.stdout, proc.stderr)


def test_a_step_that_succeeds_exits_0_with_its_output_reported_and_its_prints_on_stdout(flows):
    result = run_runner(flows, state_file(flows, f"{MODULE}:greet", {"who": "ada"}))

    assert result.code == EXIT_OK
    assert json.loads(result.message)["kind"] == "step_succeeded"  # small reports are plain JSON
    report = result.report
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.step == StepRef(id="say-hello", name="say-hello", type=StepType.RUN)
    assert report.output == {"greeting": "hi ada"}
    assert "hello from the step, ada" in result.stdout
    assert "hello from the step" not in result.stderr
    assert "[kubestep] step 'say-hello' attempt 1 started" in result.stderr


def test_replaying_a_finished_step_reports_the_functions_return_value(flows):
    memo = MemoEntry(
        id="say-hello", name="say-hello", type=StepType.RUN, done=True, output={"greeting": "hi"}
    )
    result = run_runner(flows, state_file(flows, f"{MODULE}:greet", {"who": "ada"}, steps=[memo]))

    assert result.code == EXIT_OK
    assert result.report.kind is ReportKind.COMPLETED
    assert result.report.output == {"said": "hi"}
    assert "hello from the step" not in result.stdout  # not executed again


def test_a_plain_function_is_accepted(flows):
    result = run_runner(flows, state_file(flows, f"{MODULE}:plain_function"))

    assert result.code == EXIT_OK
    assert result.report.output == "plain functions work too"


def test_a_non_run_step_exits_0_with_its_report(flows):
    result = run_runner(flows, state_file(flows, f"{MODULE}:napper"))

    assert result.code == EXIT_OK
    assert result.report.kind is ReportKind.SLEEP
    assert result.report.step.id == "nap"


def test_a_failing_step_exits_1_with_the_error_reported(flows):
    result = run_runner(flows, state_file(flows, f"{MODULE}:flaky", attempt=2))

    assert result.code == EXIT_STEP_FAILED
    report = result.report
    assert report.kind is ReportKind.STEP_FAILED
    assert report.step.id == "call-service"
    assert report.error.type == "ConnectionError"
    assert report.error.message == "connection reset by peer"
    assert report.error.retriable is True
    assert "calling the flaky service" in result.stdout
    assert "[kubestep] step 'call-service' attempt 2 started" in result.stderr


def test_a_function_failing_outside_steps_exits_1(flows):
    result = run_runner(flows, state_file(flows, f"{MODULE}:broken"))

    assert result.code == EXIT_STEP_FAILED
    assert result.report.kind is ReportKind.FAILED
    assert result.report.error.type == "KeyError"
    assert result.report.error.retriable is False


@pytest.mark.parametrize(
    "contents", [None, "", "{not json", '{"run": "r"}'], ids=["missing", "empty", "corrupt", "incomplete"]
)
def test_an_unusable_state_file_exits_2_without_a_report(flows, contents):
    state = flows / "state.json"
    if contents is not None:
        state.write_text(contents)
    report = flows / "report"

    result = run_runner(flows, state, report)

    assert result.code == EXIT_BAD_INPUT
    assert not report.exists()
    assert f"cannot read the run state at {state}" in result.stderr


@pytest.mark.parametrize(
    ("function", "module_text", "expected"),
    [
        ("no_such_module:flow", None, "No module named 'no_such_module'"),
        (f"{MODULE}:no_such_function", None, "has no attribute 'no_such_function'"),
        (
            "crashes_on_import:flow",
            "raise RuntimeError('DATABASE_URL is not set')",
            "DATABASE_URL is not set",
        ),
        ("bad_syntax:flow", "def flow(ctx, step) return 1", "bad_syntax.py, line 1"),
    ],
    ids=["missing-module", "missing-function", "import-time-error", "syntax-error"],
)
def test_a_function_that_cannot_be_imported_fails_the_run_for_good(flows, function, module_text, expected):
    if module_text is not None:
        (flows / f"{function.split(':')[0]}.py").write_text(module_text)

    result = run_runner(flows, state_file(flows, function))

    assert result.code == EXIT_STEP_FAILED
    report = result.report
    assert report.kind is ReportKind.FAILED
    assert report.error.retriable is False
    assert f"cannot import '{function}'" in report.error.message
    assert expected in report.error.message


def test_an_unwritable_report_path_exits_3(flows):
    result = run_runner(flows, state_file(flows, f"{MODULE}:napper"), flows / "missing-dir" / "report")

    assert result.code == EXIT_REPORT_UNWRITABLE
    assert "cannot write the report" in result.stderr


def test_a_report_over_the_termination_message_limit_is_compressed(flows):
    size = 20_000
    result = run_runner(flows, state_file(flows, f"{MODULE}:big", {"size": size}))

    assert result.code == EXIT_OK
    assert len(result.message.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert not result.message.startswith("{")  # not plain JSON any more
    assert LOG_REPORT_MARKER not in result.stdout
    report = decode_report(result.message)
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.output == "x" * size


def test_a_report_too_large_even_compressed_goes_to_the_log_as_its_last_line(flows):
    seed, size = 7, 6000  # 12000 hex characters of random bytes: they compress to about half
    expected = random.Random(seed).randbytes(size).hex()

    result = run_runner(
        flows, state_file(flows, f"{MODULE}:noise", {"seed": seed, "size": size}, max_output_bytes=100_000)
    )

    assert result.code == EXIT_OK
    assert len(result.message.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert result.message == "log"  # the termination message points to the log
    assert decode_report(result.message) is None
    lines = result.stdout.splitlines()
    assert lines[0] == "making noise"
    assert lines[-1].startswith(LOG_REPORT_MARKER)
    report = decode_report(result.message, result.stdout)
    assert report.kind is ReportKind.STEP_SUCCEEDED
    assert report.step.id == "noise"
    assert report.output == expected


@pytest.mark.timeout(60)
def test_a_process_killed_mid_step_leaves_the_started_report_naming_the_step(flows):
    state = state_file(flows, f"{MODULE}:hang", attempt=3)
    report_path = flows / "report"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubestep.runner", "--state", str(state), "--report", str(report_path)],
        cwd=flows,
        env=_env(flows),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        # Blocks until the step prints: by then it is executing.
        assert proc.stdout.readline() == "step is running\n"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    report = decode_report(report_path.read_text())
    assert report.kind is ReportKind.STARTED
    assert report.step == StepRef(id="hang", name="hang", type=StepType.RUN)


def test_a_step_pods_runner_does_not_load_the_resource_models() -> None:
    # Every step pod starts an interpreter that imports the runner: the Workflow and WorkflowRun models
    # (a third of that start's CPU) are the operator's, not the pod's.
    code = "import sys, kubestep.runner.main; print(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(kubestep.__file__).parent.parent)}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    modules = set(loaded.stdout.split())
    assert "kubestep.api.report" in modules
    assert not modules & {"kubestep.api.workflow", "kubestep.api.run", "kubestep.api.event"}, modules
