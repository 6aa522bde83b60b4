"""``kubestep send|runs|describe|logs|cancel|rerun|workflows|events``: the cluster from the terminal.

Every command takes ``--kubeconfig``, ``--context`` and ``-n/--namespace`` as kubectl does; the list
commands take ``-A``; the read commands take ``-o json|yaml`` and, where it applies, ``--local DIR`` to
read ``kubestep run``'s state directory instead of a cluster. Errors are one line on stderr, exit code 1
(not found, unreachable) or 2 (bad usage), never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, Protocol, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kubestep.api import names
from kubestep.api.event import Event
from kubestep.api.run import WorkflowRun
from kubestep.api.workflow import Workflow
from kubestep.cli import render
from kubestep.cli.cluster import (
    EVENTS,
    EXIT_FAILURE,
    EXIT_USAGE,
    RUNS,
    WORKFLOWS,
    CliError,
    Cluster,
    Obj,
    Target,
)
from kubestep.cli.local_source import LocalRuns
from kubestep.engine import rerun as reruns

P = ParamSpec("P")
R = TypeVar("R")

#: How often --watch and --follow look again.
POLL_SECONDS = 1.0

KubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig",
        help="Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).",
        show_default=False,
    ),
]
ContextOpt = Annotated[
    str | None, typer.Option("--context", help="The kubeconfig context to use.", show_default=False)
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="The namespace (default: the context's, else `default`).",
        show_default=False,
    ),
]
AllNamespacesOpt = Annotated[bool, typer.Option("--all-namespaces", "-A", help="List across all namespaces.")]
OutputOpt = Annotated[
    str, typer.Option("--output", "-o", help="`table` (default), `json` or `yaml` (the objects as stored).")
]
LocalOpt = Annotated[
    Path | None,
    typer.Option(
        "--local",
        help="Read the local runs of `kubestep run` kept in this state directory (e.g. .kubestep).",
        show_default=False,
    ),
]


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # Piped: one row a line, however long, for grep and scripts (Rich would wrap at 80 columns).
        console = Console(highlight=False, soft_wrap=True, width=1000)
    return console


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report a ``CliError`` (and Ctrl-C) in one line with its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            _err().print(f"error: {exc}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def _check_output(output: str) -> None:
    if output not in render.OUTPUTS:
        raise CliError(f"--output {output!r}: choose one of {', '.join(render.OUTPUTS)}", EXIT_USAGE)


def _cluster(
    kubeconfig: Path | None, context: str | None, namespace: str | None, all_ns: bool = False
) -> Cluster:
    return Cluster(Target(kubeconfig, context, namespace, all_ns))


def _now() -> datetime:
    return datetime.now(UTC)


def _model(model: type[R], obj: Obj) -> R:
    try:
        return model.model_validate(obj)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        name = obj.get("metadata", {}).get("name", "?")
        raise CliError(
            f"{obj.get('kind', 'object')} {name} cannot be read: {exc.errors()[0]['msg']}"
        ) from None


def _table(
    columns: tuple[str, ...],
    rows: list[list[str]],
    namespace: bool,
    styles: dict[int, Callable[[str], str]] | None = None,
) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("NAMESPACE", *columns) if namespace else columns:
        table.add_column(column, overflow="fold")
    offset = 1 if namespace else 0
    for row in rows:
        cells: list[str | Text] = list(row)
        for index, style_of in (styles or {}).items():
            value = row[index + offset]
            cells[index + offset] = Text(value, style=style_of(value))
        table.add_row(*cells)
    return table


class RunSource(Protocol):
    """Where the read commands find runs: a cluster or a local state directory."""

    def runs(self) -> list[Obj]: ...

    def run(self, name: str) -> Obj: ...

    def log(self, run: str, job: str) -> str | None: ...


class _ClusterRuns:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def runs(self) -> list[Obj]:
        return self.cluster.list(RUNS)

    def run(self, name: str) -> Obj:
        return self.cluster.get(RUNS, name)

    def log(self, run: str, job: str) -> str | None:
        return self.cluster.job_pod_logs(self.cluster.namespace, job)


def _source(
    local: Path | None,
    kubeconfig: Path | None,
    context: str | None,
    namespace: str | None,
    all_ns: bool = False,
) -> RunSource:
    if local is not None:
        if namespace or all_ns or kubeconfig or context:
            raise CliError(
                "--local reads a state directory: it takes no --kubeconfig, --context, -n or -A", EXIT_USAGE
            )
        return LocalRuns(local)
    return _ClusterRuns(_cluster(kubeconfig, context, namespace, all_ns))


def complete_runs(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of a run's name: the runs of the namespace (or local runs) that start so."""
    params = ctx.params
    try:
        source = _source(
            params.get("local"), params.get("kubeconfig"), params.get("context"), params.get("namespace")
        )
        names = [str(o["metadata"]["name"]) for o in source.runs()]
    except (CliError, OSError, KeyError):
        return []  # completion never fails loudly
    return [n for n in names if n.startswith(incomplete)]


RunNameArg = Annotated[
    str, typer.Argument(help="The run's name.", show_default=False, autocompletion=complete_runs)
]


# send ---------------------------------------------------------------------------------------------------


def _json_option(flag: str, value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise CliError(f"{flag} {value}: cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{flag} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f'give a JSON object such as \'{{"filename": "a.csv"}}\' or @file.json',
            EXIT_USAGE,
        ) from None
    if not isinstance(data, dict):
        raise CliError(f"{flag} must be a JSON object, not {type(data).__name__}: {text[:60]}", EXIT_USAGE)
    return data


def _object_name(event_name: str) -> str:
    """A Kubernetes name prefix from an event's name: ``api/contact_list.uploaded`` gives
    ``api-contact-list-uploaded-``."""
    cleaned = "".join(c if c.isalnum() else "-" for c in event_name.lower())
    cleaned = "-".join(part for part in cleaned.split("-") if part)[:50] or "event"
    return cleaned + "-"


@one_line_errors
def send(
    name: Annotated[
        str, typer.Argument(help="The event's name, e.g. api/contact_list.uploaded.", show_default=False)
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="The event's data: a JSON object, or @file.json.", show_default=False
        ),
    ] = None,
    event_id: Annotated[
        str | None,
        typer.Option("--id", help="Idempotency key (default: a new random id).", show_default=False),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", help="The event's user: a JSON object, or @file.json.", show_default=False),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Do not wait for the operator to start runs.")
    ] = False,
    wait_seconds: Annotated[
        float, typer.Option("--wait-timeout", help="How long to wait for the operator, in seconds.")
    ] = 10.0,
    output: OutputOpt = "table",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Publish an Event and print the runs it started (waiting briefly for the operator)."""
    _check_output(output)
    spec: dict[str, Any] = {
        "name": name,
        "data": _json_option("--data", data),
        "id": event_id or uuid.uuid4().hex,
        "ts": _now().isoformat().replace("+00:00", "Z"),
    }
    if user is not None:
        spec["user"] = _json_option("--user", user)
    body = {
        "apiVersion": "kubestep.dev/v1alpha1",
        "kind": "Event",
        "metadata": {"generateName": _object_name(name)},
        "spec": spec,
    }
    try:
        Event.model_validate({**body, "metadata": {"name": "x"}})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"the event is invalid: {where}: {first['msg']}", EXIT_USAGE) from None
    cluster = _cluster(kubeconfig, context, namespace)
    created = cluster.create(EVENTS, body)
    event_name = created["metadata"]["name"]
    deadline = time.monotonic() + (0 if no_wait else max(0.0, wait_seconds))
    while True:
        processed = any(
            c.get("type") == "Processed" for c in (created.get("status") or {}).get("conditions") or []
        )
        if processed or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
        created = cluster.get(EVENTS, event_name)
    started = [r["run"] for r in (created.get("status") or {}).get("started") or []]
    runs = [cluster.get(RUNS, r) for r in started]
    if output != "table":
        print(render.dump([created, *runs], output))
        return
    out = _out()
    out.print(f"event {event_name} sent: {name} (id {spec['id']}, ts {spec['ts']})", markup=False)
    event = _model(Event, created)
    if not processed:
        out.print(
            "the operator has not processed it yet" + ("" if no_wait else f" (waited {wait_seconds:g}s)"),
            markup=False,
        )
    elif not runs:
        out.print(f"started no run: {render.event_row(event, _now())[4]}", markup=False)
    else:
        rows = [render.run_row(_model(WorkflowRun, r), _now()) for r in runs]
        out.print(_table(render.RUN_COLUMNS, rows, False, {2: render.phase_style}))


# runs ---------------------------------------------------------------------------------------------------


def _run_rows(
    objs: list[Obj], workflow: str | None, phase: str | None, all_ns: bool
) -> tuple[list[Obj], list[list[str]]]:
    now = _now()
    kept, rows = [], []
    for obj in objs:
        run = _model(WorkflowRun, obj)
        if workflow and run.spec.workflow_ref.name != workflow:
            continue
        if phase and run.status.phase.value.lower() != phase.lower():
            continue
        kept.append(obj)
        rows.append(render.run_row(run, now, all_ns))
    return kept, rows


@one_line_errors
def runs(
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only runs of this workflow.", show_default=False)
    ] = None,
    phase: Annotated[
        str | None,
        typer.Option(
            "--phase", "-p", help="Only runs in this phase (Running, Failed, ...).", show_default=False
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep watching: print a run's line again whenever it changes.")
    ] = False,
    output: OutputOpt = "table",
    local: LocalOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
) -> None:
    """List runs: phase, progress, the step being worked on, its attempt, age and duration."""
    _check_output(output)
    phases = ("Pending", "Running", "Sleeping", "Waiting", "Succeeded", "Failed", "Cancelled")
    if phase is not None and phase.lower() not in (p.lower() for p in phases):
        raise CliError(f"--phase {phase!r}: choose one of {', '.join(phases)}", EXIT_USAGE)
    source = _source(local, kubeconfig, context, namespace, all_namespaces)
    objs, rows = _run_rows(source.runs(), workflow, phase, all_namespaces)
    out = _out()
    if watch:
        _watch(source, objs, rows, workflow, phase, all_namespaces, output, out)
    elif output != "table":
        print(render.dump(objs, output))
    elif rows:
        out.print(_table(render.RUN_COLUMNS, rows, all_namespaces, {2: render.phase_style}))
    else:
        out.print("no runs found", markup=False)


def _watch(
    source: RunSource,
    objs: list[Obj],
    rows: list[list[str]],
    workflow: str | None,
    phase: str | None,
    all_ns: bool,
    output: str,
    out: Console,
) -> None:
    """As ``kubectl get -w``: every run once, then a run again whenever it changed (not just its age)."""
    header = (["NAMESPACE"] if all_ns else []) + list(render.RUN_COLUMNS)
    if output == "table":
        out.print(render.watch_line(header), markup=False)
    seen: dict[str, tuple[str, ...]] = {}
    while True:
        for obj, row in zip(objs, rows, strict=True):
            key = f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
            if seen.get(key) == render.watch_key(row):
                continue
            seen[key] = render.watch_key(row)
            if output == "table":
                out.print(render.watch_line(row), markup=False)
            else:
                print(json.dumps(obj) if output == "json" else render.dump(obj, "yaml") + "---")
        sys.stdout.flush()
        time.sleep(POLL_SECONDS)
        objs, rows = _run_rows(source.runs(), workflow, phase, all_ns)


# describe -----------------------------------------------------------------------------------------------

describe_app = typer.Typer(help="Show one object in detail.", no_args_is_help=True, add_completion=False)


@describe_app.command("run")
@one_line_errors
def describe_run(
    name: RunNameArg,
    output: OutputOpt = "table",
    local: LocalOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """The run's timeline: every step and attempt (start, duration, result, reason, exit code, backoff),
    its event, its output or error, its child runs."""
    _check_output(output)
    source = _source(local, kubeconfig, context, namespace)
    obj = source.run(name)
    if output != "table":
        print(render.dump(obj, output))
        return
    run = _model(WorkflowRun, obj)
    children = [
        _model(WorkflowRun, o)
        for o in source.runs()
        if (o.get("spec") or {}).get("parent", {}) and o["spec"]["parent"].get("run") == name
    ]
    out = _out()
    for line in render.timeline(run, _now(), children):
        out.print(line)


# logs ---------------------------------------------------------------------------------------------------


def _colour_of(step: str, order: dict[str, str]) -> str:
    if step not in order:
        order[step] = render.STEP_COLOURS[len(order) % len(render.STEP_COLOURS)]
    return order[step]


def _log_records(
    source: RunSource, run: WorkflowRun, step: str | None, attempt: int | None
) -> Iterator[tuple[render.AttemptLog, bool, list[str]]]:
    """Each attempt with where its lines come from (True: the recorded tail) and the lines."""
    for entry in render.attempt_logs(run, step, attempt):
        text = source.log(run.metadata.name, entry.job)
        if text is None:
            if entry.recorded:
                yield entry, True, render.log_lines(entry.recorded)
            elif entry.finished:
                yield entry, True, []
            continue
        yield entry, False, render.log_lines(text)


@one_line_errors
def logs(
    name: RunNameArg,
    step: Annotated[
        str | None, typer.Option("--step", "-s", help="Only this step's attempts.", show_default=False)
    ] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="Only this attempt number.", min=1, show_default=False)
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")
    ] = False,
    output: OutputOpt = "table",
    local: LocalOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Every step attempt's log, in the order the attempts ran, each line prefixed by step and attempt.

    Once a pod is gone, the lines come from the tail recorded in the run's status, marked `(recorded)`.
    """
    _check_output(output)
    source = _source(local, kubeconfig, context, namespace)
    run = _model(WorkflowRun, source.run(name))
    known = [s.id for s in run.status.steps]
    if step is not None and step not in known and not follow:
        raise CliError(f"run {name} has no step {step!r} (steps: {', '.join(known) or 'none yet'})")
    out = _out()
    colours: dict[str, str] = {}
    printed: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    reused = [s for s in run.status.steps if s.reused_from and (step is None or s.id == step)]
    if output == "table":
        for s in reused:
            out.print(
                f"{s.id} (reused) | output reused from run {s.reused_from}: not run in this run",
                markup=False,
                style="dim",
            )
    while True:
        for entry, recorded, lines in _log_records(source, run, step, attempt):
            done = printed.get(entry.job, 0)
            if recorded and done:
                continue  # its lines were printed from the pod while it existed
            label = render.prefix(entry, recorded)
            for line in lines[done:]:
                if output == "table":
                    colour = _colour_of(entry.step, colours)
                    text = Text(label, style=colour)
                    text.append(" | ", style="dim")
                    text.append(line)
                    out.print(text)
                else:
                    records.append(
                        {
                            "step": entry.step,
                            "attempt": entry.attempt,
                            "job": entry.job,
                            "recorded": recorded,
                            "line": line,
                        }
                    )
            printed[entry.job] = max(done, len(lines))
        sys.stdout.flush()
        if not follow or render.run_finished(run):
            break
        time.sleep(POLL_SECONDS)
        run = _model(WorkflowRun, source.run(name))
    if output != "table":
        print(json.dumps(records, indent=2) if output == "json" else render.dump({"lines": records}, "yaml"))


# cancel and rerun ---------------------------------------------------------------------------------------


@one_line_errors
def cancel(
    name: RunNameArg,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Cancel a run: sets its spec.cancel; the operator stops its step pods and ends it Cancelled."""
    cluster = _cluster(kubeconfig, context, namespace)
    run = _model(WorkflowRun, cluster.get(RUNS, name))
    if run.status.phase.finished:
        raise CliError(f"run {name} already ended {run.status.phase.value}: nothing to cancel")
    cluster.merge_patch(RUNS, name, {"spec": {"cancel": True}})
    _out().print(f"run {name} cancelling (spec.cancel set; the operator stops its steps)", markup=False)


@one_line_errors
def rerun(
    name: RunNameArg,
    from_step: Annotated[
        str | None,
        typer.Option(
            "--from", help="The first step to run again (default: the first failed step).", show_default=False
        ),
    ] = None,
    wait_seconds: Annotated[
        float, typer.Option("--wait-timeout", help="How long to wait for the operator, in seconds.")
    ] = 10.0,
    output: OutputOpt = "table",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Start a new run of the same event that reuses the recorded outputs of the steps before --from.

    Appends to the run's spec.rerunRequests; the operator starts the rerun with the Workflow as it is now
    (a fixed image or setting applies) and links both: `rerunOf` in the new run's status, `reruns` in the
    original's.
    """
    _check_output(output)
    cluster = _cluster(kubeconfig, context, namespace)
    obj = cluster.get(RUNS, name)
    original = _model(WorkflowRun, obj)
    try:
        spec = reruns.plan(original, from_step)  # the operator decides the same; say why here, at once
    except reruns.RerunError as exc:
        raise CliError(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILURE) from None
    # Appended under the version read: a rerun asked for meanwhile by someone else is never overwritten.
    requests = [*(obj.get("spec") or {}).get("rerunRequests", []), {"fromStep": spec.from_step}]
    patch = {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "spec": {"rerunRequests": requests},
    }
    cluster.merge_patch(RUNS, name, patch)
    new_name = names.rerun_name(name, len(requests) - 1)
    deadline = time.monotonic() + max(0.0, wait_seconds)
    created: Obj | None = None
    while created is None:
        try:
            created = cluster.get(RUNS, new_name)
        except CliError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.3)
    if output != "table":
        print(render.dump(created or cluster.get(RUNS, name), output))
        return
    reused = ", ".join(s.id for s in spec.steps) or "none"
    state = "started" if created is not None else "asked for (the operator has not started it yet)"
    _out().print(
        f"run {new_name} {state}: rerun of {name} from step {spec.from_step} (reusing: {reused})",
        markup=False,
    )


# workflows and events -----------------------------------------------------------------------------------


def _list(
    plural: str,
    what: str,
    row: Callable[[Any, datetime, bool], list[str]],
    model: type[Any],
    columns: Any,
    output: str,
    cluster: Any,
    all_namespaces: bool,
    styles: dict[int, Callable[[str], str]] | None = None,
) -> None:
    """A list command's body: the objects as JSON/YAML, or a table of ``row`` of each."""
    objs = cluster.list(plural)
    if output != "table":
        print(render.dump(objs, output))
        return
    now = _now()
    rows = [row(_model(model, o), now, all_namespaces) for o in objs]
    out = _out()
    if not rows:
        out.print(f"no {what} found", markup=False)
        return
    out.print(_table(columns, rows, all_namespaces, styles))


@one_line_errors
def workflows(
    output: OutputOpt = "table",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
) -> None:
    """List workflows: Ready, triggers, and counts of active, succeeded and failed runs."""
    _check_output(output)
    cluster = _cluster(kubeconfig, context, namespace, all_namespaces)
    ready: dict[int, Callable[[str], str]] = {1: lambda v: "green" if v == "True" else "red"}
    _list(
        WORKFLOWS,
        "workflows",
        render.workflow_row,
        Workflow,
        render.WORKFLOW_COLUMNS,
        output,
        cluster,
        all_namespaces,
        ready,
    )


@one_line_errors
def events(
    output: OutputOpt = "table",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
) -> None:
    """List events: their name, id, the runs they started or resumed, or why they started none."""
    _check_output(output)
    cluster = _cluster(kubeconfig, context, namespace, all_namespaces)
    _list(EVENTS, "events", render.event_row, Event, render.EVENT_COLUMNS, output, cluster, all_namespaces)


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the ``kubestep`` app."""
    app.command("send")(send)
    app.command("runs")(runs)
    app.add_typer(describe_app, name="describe")
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("rerun")(rerun)
    app.command("workflows")(workflows)
    app.command("events")(events)
