"""``kubestep run``: a whole run on this machine, with the same engine as the operator."""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from kubestep.api.cron import zone
from kubestep.api.run import RunEvent, RunPhase, WorkflowRun
from kubestep.api.workflow import Workflow
from kubestep.engine.actions import StartExecution
from kubestep.engine.schedule import Tick
from kubestep.local.clock import RealClock
from kubestep.local.driver import Driver, NoTriggerMatchError, held_by_pause
from kubestep.local.executors import ProcessExecutor
from kubestep.local.loading import ManifestError, load_event, load_workflows
from kubestep.local.store import RunNotFoundError, Store
from kubestep.local.timeline import Timeline

EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


def run(
    workflow_file: Annotated[
        Path | None, typer.Argument(help="YAML file with one or more Workflow resources.", show_default=False)
    ] = None,
    event: Annotated[
        Path | None,
        typer.Option("--event", "-e", help="YAML file with the Event to publish.", show_default=False),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Resume the local run of this name (deliver --event to it, if given)."),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="`text` (timeline) or `json` (final record).")
    ] = "text",
    state_dir: Annotated[Path, typer.Option("--state-dir", help="Where local runs are kept.")] = Path(
        ".kubestep"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the steps' own output.")] = False,
    tick: Annotated[
        bool,
        typer.Option("--tick", help="Start the workflows' `cron` triggers' runs as a tick due now would."),
    ] = False,
) -> None:
    """Run a workflow on this machine: every step attempt is a local `python -m kubestep.runner` process.

    Backoff waits and sleeps are real. A run waiting for an event is resumed with
    `kubestep run --resume RUN --event EVENT.yaml`, from any terminal. A run of a paused workflow
    (`spec.paused`) stops before its next step; set `paused: false` in the file and resume it with
    `kubestep run --resume RUN`. Exits 0 only when the run succeeded.
    """
    if output not in ("text", "json"):
        _fail(f"--output must be text or json, not {output!r}")
    console = Console(stderr=output == "json", highlight=False)
    store = Store(state_dir.resolve())
    targets: list[str] = []
    try:
        if resume is not None:
            driver, targets = _resume(resume, event, store, console, quiet)
        elif tick and workflow_file is not None and event is None:
            driver, targets = _tick(workflow_file, store, console, quiet)
        elif workflow_file is None or event is None:
            _fail("give a workflow file and --event (or --tick), or --resume RUN")
        else:
            driver, targets = _start(workflow_file, event, store, console, quiet)
        if driver is None:
            _finish([store.load(t) for t in targets], output, console)
            return
        try:
            runs = driver.drive(targets)
        finally:
            driver.executor.shutdown()  # type: ignore[attr-defined]
            for name in targets:
                store.release(name)
    except (ManifestError, RunNotFoundError, NoTriggerMatchError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        hint = " ".join(f"kubestep run --resume {t}" for t in targets) or "nothing to resume"
        console.print(f"[yellow]interrupted; resume with:[/yellow] {hint}")
        raise typer.Exit(130) from None
    _finish(runs, output, console)


def _start(
    workflow_file: Path, event: Path, store: Store, console: Console, quiet: bool
) -> tuple[Driver, list[str]]:
    driver = _driver(workflow_file, store, console, quiet)
    ev = load_event(event)
    run_event = RunEvent(
        name=ev.spec.name,
        data=ev.spec.data,
        user=ev.spec.user,
        id=ev.spec.id,
        ts=ev.spec.ts,
        source=ev.metadata.name or None,
    )
    targets = driver.start(run_event)
    if not targets:
        _fail(
            f"event {ev.spec.name!r} starts none of the workflows in {workflow_file} "
            f"({', '.join(driver.workflows)}): no trigger matches it"
        )
    for name in targets:
        store.claim(name)
    return driver, targets


def _tick(workflow_file: Path, store: Store, console: Console, quiet: bool) -> tuple[Driver, list[str]]:
    """One run per workflow with a `cron` trigger, as its first such trigger's tick would start now."""
    driver = _driver(workflow_file, store, console, quiet)
    now = datetime.now(UTC).replace(microsecond=0)
    targets = []
    for name, wf in driver.workflows.items():
        index = next((i for i, t in enumerate(wf.spec.triggers) if t.cron), None)
        if index is None:
            continue
        scheduled = Tick(index, now.astimezone(zone(wf.spec.triggers[index].timezone)))
        event = RunEvent.model_validate(scheduled.event(wf.spec))
        targets.append(driver.create_run(name, event, scheduled.run_name(name)))
    if not targets:
        _fail(
            f"none of the workflows in {workflow_file} ({', '.join(driver.workflows)}) has a `cron` trigger"
        )
    for name in targets:
        store.claim(name)
    return driver, targets


def _driver(workflow_file: Path, store: Store, console: Console, quiet: bool) -> Driver:
    workflows = load_workflows(workflow_file)
    wake = threading.Event()
    cwd = workflow_file.resolve().parent
    executor = ProcessExecutor(store.run_dir, cwd, _env_of(workflows), wake)
    source = {"workflows": str(workflow_file.resolve()), "cwd": os.getcwd()}
    timeline = Timeline(console, show_logs=not quiet)
    return Driver(workflows, executor, RealClock(), wake, store, timeline, source=source)


def _env_of(workflows: dict[str, Workflow]) -> Any:
    """Each step process gets this environment plus the plain `value`s of its workflow's pod template."""
    extra = {
        wf.spec.function: {v.name: v.value for v in wf.spec.pod_template.env if v.value is not None}
        for wf in workflows.values()
    }

    def env(action: StartExecution) -> dict[str, str]:
        return {**os.environ, **extra.get(action.state.function, {})}

    return env


def _resume(
    name: str, event: Path | None, store: Store, console: Console, quiet: bool
) -> tuple[Driver | None, list[str]]:
    run = store.load(name)
    if event is not None:
        ev = load_event(event)
        now = datetime.now(UTC)
        spec = RunEvent(name=ev.spec.name, data=ev.spec.data, user=ev.spec.user, id=ev.spec.id, ts=ev.spec.ts)
        payload = spec.completed(uuid.uuid4().hex, now).as_payload()
        store.deliver(name, payload, now, ev.metadata.name)
        console.print(f"delivered event {ev.spec.name!r} to run {name}")
    if run.status.phase.finished:
        return None, [name]
    owner = store.claim(name)
    if owner is not None:
        console.print(f"run {name} is being driven by process {owner}; it picks the event up from there")
        raise typer.Exit(0)
    driver = _driver(Path(store.load_source(name)["workflows"]), store, console, quiet)
    driver.adopt(run, recover=True)
    return driver, [name]


def _finish(runs: list[WorkflowRun], output: str, console: Console) -> None:
    for r in runs:
        if held_by_pause(r):
            console.print(
                f"[yellow]run {r.metadata.name} waits: workflow {r.spec.workflow_ref.name!r} is paused "
                "(spec.paused); set `paused: false` in its file and resume it with "
                f"`kubestep run --resume {r.metadata.name}`[/yellow]"
            )
    if output == "json":
        records = [_record(r) for r in runs]
        sys.stdout.write(json.dumps(records[0] if len(records) == 1 else records, indent=2) + "\n")
    else:
        for r in runs:
            style = "green" if r.status.phase is RunPhase.SUCCEEDED else "red"
            console.print(
                f"[bold {style}]run {r.metadata.name}: {r.status.phase.value}[/] (steps: {r.status.progress})"
            )
            if r.status.error:
                console.print(f"[red]{r.status.error.type}: {r.status.error.message}[/red]")
    if not all(r.status.phase is RunPhase.SUCCEEDED for r in runs):
        raise typer.Exit(EXIT_RUN_FAILED)


def _record(run: WorkflowRun) -> dict[str, Any]:
    status = run.status.to_dict()
    for key in ("active", "conditions", "currentStep", "currentAttempt", "discoveryFailures", "retryAt"):
        status.pop(key, None)
    return {"name": run.metadata.name, "workflow": run.spec.workflow_ref.name, **status}


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(EXIT_USAGE)
