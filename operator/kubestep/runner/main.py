"""Load the workflow function, replay it against the run's state, write one report."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from kubestep.api.report import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REPORT_UNWRITABLE,
    EXIT_STEP_FAILED,
    Report,
    ReportError,
    ReportKind,
    RunnerState,
    encode_report,
    encode_step_line,
)
from kubestep.sdk.errors import Interrupt
from kubestep.sdk.step import Replay, classify, encodable
from kubestep.sdk.workflow import WorkflowFunction

#: Where the operator mounts the run's state in a step pod.
DEFAULT_STATE = "/var/run/kubestep/state/state.json"
#: Kubernetes' default termination message path.
DEFAULT_REPORT = "/dev/termination-log"


class ReportUnwritable(Interrupt):
    """The report path cannot be written; the runner exits with code 3."""


def load_function(spec: str) -> WorkflowFunction:
    """Import ``module:function``; a plain function is accepted as a workflow named after it."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ImportError(
            f"module {module_name!r} has no attribute {attr!r} (spec.function is {spec!r})"
        ) from None
    if isinstance(target, WorkflowFunction):
        return target
    if callable(target):
        return WorkflowFunction(id=attr, fn=target)
    raise ImportError(f"{spec!r} is a {type(target).__name__}, not a workflow function")


def write_report(report: Report, path: Path) -> None:
    """Write ``report`` where the operator reads it (and, when too large, to stdout as a marked line)."""
    message, log_line = encode_report(report)
    if log_line is not None:
        sys.stdout.flush()
        print(log_line, flush=True)
    path.write_text(message)


def run(state: RunnerState, report_path: Path) -> Report:
    """Replay the function of ``state`` once and write its report to ``report_path``."""
    try:
        workflow = load_function(state.function)
    except Exception as exc:  # any import-time error in user code is the user's to see, not a crash
        error = classify(exc, datetime.now(UTC))
        error.retriable = False
        error.message = f"cannot import {state.function!r}: {exc}"
        print(f"kubestep runner: {error.message}\n{error.traceback}", file=sys.stderr, flush=True)
        report = Report(kind=ReportKind.FAILED, error=error)
        write_report(report, report_path)
        return report
    replay = Replay(state)

    def announce(started: Report) -> None:
        assert started.step is not None
        print(
            f"[kubestep] step {started.step.id!r} attempt {state.attempt} started",
            file=sys.stderr,
            flush=True,
        )
        try:
            write_report(started, report_path)
        except OSError as exc:
            # Raised inside user code (step.run); an interrupt cannot be swallowed by `except Exception`.
            raise ReportUnwritable(exc) from exc

    def persist(succeeded: Report) -> None:
        # Replay goes on to the next boundary after this; whatever happens there, the output is kept.
        try:
            write_report(succeeded, report_path)
        except OSError as exc:
            raise ReportUnwritable(exc) from exc
        if state.chain_steps > 1:
            # A chained execution goes on to other steps: the log keeps each one it finished, durably.
            sys.stderr.flush()
            print(encode_step_line(succeeded, datetime.now(UTC)), flush=True)

    replay.on_start = announce
    replay.on_succeeded = persist
    report = replay.run(workflow)
    try:
        write_report(report, report_path)
    except OSError:
        raise
    except Exception as exc:  # a value that passed the JSON checks yet cannot be encoded: still report
        report = unencodable(report, exc)
        write_report(report, report_path)
    return report


def unencodable(report: Report, exc: Exception) -> Report:
    """The report to give instead of ``report``, which could not be encoded (``exc``).

    What the step did is kept where it can be: the step's own result without the boundary after it
    (the next execution finds that again), else a non-retriable failure of the step that names it.
    """
    if report.next is not None:
        try:
            report.model_copy(update={"next": None}).model_dump_json()
            return report.model_copy(update={"next": None})
        except Exception:  # the step's own output is what cannot be encoded
            pass
    error = ReportError(
        type=type(exc).__name__,
        message=encodable(f"the report could not be encoded: {exc}"),
        retriable=False,
    )
    if report.step is not None and report.kind in (ReportKind.STEP_SUCCEEDED, ReportKind.STEP_FAILED):
        return Report(kind=ReportKind.STEP_FAILED, step=report.step, error=error)
    return Report(kind=ReportKind.FAILED, error=error)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m kubestep.runner", description=__doc__)
    parser.add_argument("--state", default=os.environ.get("KUBESTEP_STATE", DEFAULT_STATE))
    parser.add_argument("--report", default=os.environ.get("KUBESTEP_REPORT", DEFAULT_REPORT))
    args = parser.parse_args(argv)
    try:
        state = RunnerState.model_validate_json(Path(args.state).read_text())
    except (OSError, ValueError) as exc:
        print(f"kubestep runner: cannot read the run state at {args.state}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # User modules are found relative to the working directory, as with `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        report = run(state, Path(args.report))
    except (OSError, ReportUnwritable) as exc:
        print(f"kubestep runner: cannot write the report to {args.report}: {exc}", file=sys.stderr)
        return EXIT_REPORT_UNWRITABLE
    return EXIT_STEP_FAILED if report.kind in (ReportKind.STEP_FAILED, ReportKind.FAILED) else EXIT_OK
