"""Where a runner execution happens locally: a ``python -m kubestep.runner`` process, or in-process."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kubestep.api.report import EXIT_BAD_INPUT, LOG_STEP_MARKER, Report, decode_report, decode_step_lines
from kubestep.engine.actions import StartExecution
from kubestep.engine.observations import ExitKind, Outcome
from kubestep.runner.main import load_function
from kubestep.sdk.step import Replay

_TAIL_LINES = 20


class Executor(Protocol):
    """Runs executions and reports how they ended."""

    def start(self, run: str, action: StartExecution) -> None:
        """Start ``action`` for run ``run`` (a second start of the same name is ignored)."""

    def stop(self, run: str, name: str) -> None:
        """Stop an execution; its outcome is no longer reported."""

    def recover(self, run: str, names: list[str]) -> None:
        """Executions a previous driver started: report how they ended (once they have)."""

    def finished(self) -> list[tuple[str, Outcome]]:
        """Executions that ended since the last call, as ``(run, outcome)``."""

    def log(self, run: str, name: str) -> str:
        """What the execution printed."""


@dataclass
class _Process:
    run: str
    name: str
    folder: Path
    pid: int | None
    popen: subprocess.Popen[bytes] | None = None
    """Set when this driver spawned the process; None when following one a previous driver left."""
    deadline: float | None = None
    """Wall-clock time (``time.time()``) past which the process is killed: it survives a driver restart."""
    timed_out: bool = False


class ProcessExecutor:
    """Each execution is a ``python -m kubestep.runner`` subprocess, as in a step pod.

    An execution's folder (``<run>/executions/<name>/``) holds its input, its report, its output, its pid
    and its deadline, so a later driver can follow an execution that outlived the one that started it
    instead of starting it twice.
    """

    def __init__(
        self,
        root: Callable[[str], Path],
        cwd: Path,
        env: Callable[[StartExecution], dict[str, str]],
        wake: threading.Event,
    ) -> None:
        self._root = root
        self._cwd = cwd
        self._env = env
        self._wake = wake
        self._procs: dict[tuple[str, str], _Process] = {}
        self._done: list[tuple[str, Outcome]] = []
        self._lock = threading.Lock()

    def start(self, run: str, action: StartExecution) -> None:
        """Write the execution's input and spawn the runner (or follow it, if it already ran)."""
        if (run, action.name) in self._procs:
            return
        folder = self._root(run) / "executions" / action.name
        if (folder / "pid").exists():
            self.recover(run, [action.name])
            return
        folder.mkdir(parents=True, exist_ok=True)
        state = folder / "state.json"
        state.write_text(action.state.model_dump_json(by_alias=True))
        report = folder / "report"
        report.write_text("")
        base = self._env(action)
        pythonpath = os.pathsep.join(p for p in (str(self._cwd), base.get("PYTHONPATH", "")) if p)
        env = {**base, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
        deadline = None if action.timeout_seconds is None else time.time() + action.timeout_seconds
        if deadline is not None:
            (folder / "deadline").write_text(repr(deadline))
        with (folder / "log").open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "kubestep.runner", "--state", str(state), "--report", str(report)],
                cwd=self._cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (folder / "pid").write_text(str(popen.pid))
        self._follow(_Process(run, action.name, folder, popen.pid, popen, deadline))

    def recover(self, run: str, names: list[str]) -> None:
        """Follow executions started by a driver that is gone: wait for them if alive, then report."""
        for name in names:
            if (run, name) in self._procs:
                continue
            folder = self._root(run) / "executions" / name
            pid = _read_number(folder / "pid")
            deadline = _read_number(folder / "deadline")
            self._follow(_Process(run, name, folder, None if pid is None else int(pid), None, deadline))

    def _follow(self, proc: _Process) -> None:
        self._procs[(proc.run, proc.name)] = proc
        threading.Thread(target=self._watch, args=(proc,), daemon=True).start()

    def _watch(self, proc: _Process) -> None:
        while self._running(proc):
            if proc.deadline is not None and time.time() >= proc.deadline:
                proc.timed_out = True
                self._kill(proc)
            time.sleep(0.05)
        outcome = self._outcome(proc)
        with self._lock:
            if (proc.run, proc.name) in self._procs:
                del self._procs[(proc.run, proc.name)]
                self._done.append((proc.run, outcome))
        self._wake.set()

    @staticmethod
    def _running(proc: _Process) -> bool:
        if proc.popen is not None:
            return proc.popen.poll() is None
        return proc.pid is not None and _alive(proc.pid)

    def _outcome(self, proc: _Process) -> Outcome:
        outcome = self._ended(proc)
        log_path = proc.folder / "log"
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        # Chained mode: the steps the process finished before its last report are in its log.
        return dataclasses.replace(outcome, chained=decode_step_lines(log))

    def _ended(self, proc: _Process) -> Outcome:
        log_path, report_path = proc.folder / "log", proc.folder / "report"
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        message = report_path.read_text(errors="replace") if report_path.exists() else ""
        report = decode_report(message, log)
        lines = log.splitlines()
        ends = [i for i, line in enumerate(lines) if line.startswith(LOG_STEP_MARKER)]
        tail = "\n".join(lines[ends[-1] + 1 if ends else 0 :][-_TAIL_LINES:])
        now = datetime.now(UTC)
        if proc.timed_out:
            return Outcome(proc.name, ExitKind.DEADLINE, report, None, "DeadlineExceeded", "", tail, now)
        if proc.popen is None:
            # Started by a driver that is gone: only its files tell how it ended.
            if report is None or report.kind.value == "started":
                return Outcome(proc.name, ExitKind.LOST, report, None, "DriverGone", "", tail, now)
            return Outcome(proc.name, ExitKind.EXITED, report, None, "", "", tail, now)
        code = proc.popen.returncode
        if code is not None and code < 0:
            reason = "Killed" if -code == signal.SIGKILL else f"Signal{-code}"
            return Outcome(proc.name, ExitKind.EXITED, report, 128 - code, reason, "", tail, now)
        reason = "Completed" if code == 0 else ("BadInput" if code == EXIT_BAD_INPUT else "Error")
        return Outcome(proc.name, ExitKind.EXITED, report, code, reason, "", tail, now)

    def stop(self, run: str, name: str) -> None:
        """Kill the process group of the execution."""
        with self._lock:
            proc = self._procs.pop((run, name), None)
        if proc is not None:
            self._kill(proc)

    @staticmethod
    def _kill(proc: _Process) -> None:
        if proc.pid is not None and (proc.popen is not None or _alive(proc.pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def finished(self) -> list[tuple[str, Outcome]]:
        """Executions that ended since the last call."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def log(self, run: str, name: str) -> str:
        """The execution's combined output."""
        path = self._root(run) / "executions" / name / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def shutdown(self) -> None:
        """Kill whatever still runs (the driver is exiting)."""
        for run, name in list(self._procs):
            self.stop(run, name)


def _read_number(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; its state in /proc tells it has exited.
    with contextlib.suppress(OSError):
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[-1][:4]
    return True


class InProcessExecutor:
    """Runs the replay in this process, synchronously: for ``kubestep.testing``."""

    def __init__(self, functions: dict[str, Any], stubs: dict[str, Any], now: Callable[[], datetime]) -> None:
        self._functions = functions
        self._stubs = stubs
        self._now = now
        self._done: list[tuple[str, Outcome]] = []
        self._logs: dict[tuple[str, str], str] = {}

    def start(self, run: str, action: StartExecution) -> None:
        """Replay the function now; the outcome is reported by ``finished``."""
        spec = action.state.function
        workflow = self._functions.get(spec) or load_function(spec)
        replay = Replay(action.state, now=self._now)
        replay.stubs = self._stubs
        chained: list[tuple[Report, datetime]] = []
        if action.state.chain_steps > 1:
            replay.on_succeeded = lambda done: chained.append((done, self._now()))
        report = replay.run(workflow)
        failed = report.kind.value in ("step_failed", "failed")
        tail = report.error.traceback if report.error else ""
        outcome = Outcome(
            action.name, ExitKind.EXITED, report, 1 if failed else 0, "", "", tail, self._now(), chained
        )
        self._done.append((run, outcome))

    def stop(self, run: str, name: str) -> None:
        """Nothing runs in the background here."""

    def recover(self, run: str, names: list[str]) -> None:
        """In-process executions cannot outlive their driver: they are lost."""
        for name in names:
            self._done.append(
                (run, Outcome(name, ExitKind.LOST, None, None, "DriverGone", "", "", self._now()))
            )

    def finished(self) -> list[tuple[str, Outcome]]:
        """Outcomes of executions started since the last call."""
        done, self._done = self._done, []
        return done

    def log(self, run: str, name: str) -> str:
        """In-process executions print straight to this process's output."""
        return ""
