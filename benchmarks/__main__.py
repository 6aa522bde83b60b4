"""``make bench``: figures of the engine, a local run and the operator on a local control plane.

Not a test: nothing here asserts. Prints a table and writes every figure as JSON (with the machine, the
commit and the date) to ``BENCH_OUT`` (default ``benchmarks/results/<date>.json``). ``BENCH_SCALE``
(default 0.5: 150 runs at once, under 20 minutes on 2 CPUs) scales the cluster's counts;
``BENCH_SCALE=1`` starts the full 300 runs at once, ``BENCH_SCALE=0.1`` is a quick check.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.bench_admission import bench_admission
from benchmarks.cluster_bench import bench_cluster
from benchmarks.report import machine, print_table
from kubestep.api.base import ObjectMeta
from kubestep.api.report import Report, ReportKind, RunnerState, StepRef
from kubestep.api.run import AttemptResult, RunEvent, WorkflowRef, WorkflowRun, WorkflowRunSpec
from kubestep.api.workflow import Trigger, WorkflowSpec
from kubestep.engine import ExitKind, Observed, Outcome, decide
from kubestep.engine.cel import holds
from kubestep.engine.triggers import match
from kubestep.sdk.step import Replay
from kubestep.sdk.workflow import workflow

REPO = Path(__file__).resolve().parent.parent
LATER = datetime(2026, 2, 1, tzinfo=UTC)


def timeit(fn: Callable[[], object], seconds: float = 1.0) -> tuple[float, int]:
    """Median time per call in microseconds, over batches for about ``seconds``."""
    fn()
    samples: list[float] = []
    calls = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(50):
            fn()
        samples.append((time.perf_counter() - start) / 50 * 1e6)
        calls += 50
    return statistics.median(samples), calls


def bench_status_size() -> None:
    """How large a run's status grows per step, and so the longest run whose status etcd still stores."""
    limit = 1_572_864  # etcd's default --max-request-bytes; the run's spec and metadata come on top
    for label, attempts in (("one attempt each", 1), ("ten failed attempts each", 10)):
        run = run_with_steps(200)
        status = run.status.model_copy(deep=True)
        if attempts > 1:
            first = status.steps[0].attempts[0]
            failed = first.model_copy(
                update={
                    "result": AttemptResult.ERROR,
                    "reason": "Error",
                    "message": "m" * 1000,
                    "log_tail": "t" * 1500,
                    "retry_delay_seconds": 15.0,
                }
            )
            for step in status.steps:
                step.attempts = [failed] * (attempts - 1) + step.attempts
        size = len(json.dumps(status.to_dict(), separators=(",", ":")))
        per_step = size / len(status.steps)
        print(
            f"run status per step ({label}, small outputs): {per_step:7.0f} bytes; longest run that fits "
            f"etcd's 1.5 MiB: about {int(limit / per_step):,} steps"
        )


def run_with_steps(n: int) -> WorkflowRun:
    spec = WorkflowSpec(triggers=[Trigger(event="app/go")], image="img", function="m:f")
    run = WorkflowRun(
        metadata=ObjectMeta(name="bench", uid="u"),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="w"), workflow=spec, event=RunEvent(name="app/go")
        ),
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    run = run.model_copy(update={"status": decide(run, Observed(), now).status})
    for i in range(n):
        (active,) = run.status.active
        report = Report(
            kind=ReportKind.STEP_SUCCEEDED, step=StepRef(id=f"s{i}", name=f"s{i}"), output={"i": i}
        )
        now += timedelta(seconds=1)
        out = Outcome(active.name, ExitKind.EXITED, report, 0)
        run = run.model_copy(update={"status": decide(run, Observed(outcomes=[out]), now).status})
    return run


@workflow("bench")
def many_steps(ctx: object, step: object) -> int:
    total = 0
    for i in range(100):
        total += step.run("add", lambda i=i: i)  # type: ignore[attr-defined]
    return total


def bench_engine() -> None:
    for n in (1, 10, 100):
        run = run_with_steps(n)
        (active,) = run.status.active
        report = Report(kind=ReportKind.STEP_SUCCEEDED, step=StepRef(id="next", name="next"), output=1)
        observed = Observed(outcomes=[Outcome(active.name, ExitKind.EXITED, report, 0)])
        us, _ = timeit(lambda run=run, observed=observed: decide(run, observed, LATER))
        kib = len(json.dumps(run.status.to_dict())) / 1024
        print(f"engine.decide, run with {n:>3} finished steps: {us:9.1f} µs/decision   status {kib:6.1f} KiB")


def bench_replay() -> None:
    memo = [
        {"id": "add" if i == 0 else f"add:{i}", "name": "add", "type": "run", "done": True, "output": i}
        for i in range(100)
    ]
    state = RunnerState.model_validate({"run": "r", "function": "m:f", "event": {"name": "e"}, "steps": memo})
    report = Replay(state).run(many_steps)
    assert report.kind is ReportKind.COMPLETED and report.output == sum(range(100)), report
    us, _ = timeit(lambda: Replay(state).run(many_steps))
    print(f"replay of 100 memoized steps:                {us:9.1f} µs/replay")


def bench_cel() -> None:
    spec = WorkflowSpec(
        triggers=[Trigger(event="api/contact_list.uploaded", if_="event.data.filename.endsWith('.csv')")],
        image="img",
        function="m:f",
    )
    event = {"name": "api/contact_list.uploaded", "data": {"filename": "a.csv", "id": 7}, "user": {}}
    us, _ = timeit(lambda: match(spec, event))
    print(f"trigger match with a CEL `if`:               {us:9.1f} µs/event")
    us, _ = timeit(lambda: holds("async.data.id == event.data.id", {"event": event, "async": event}))
    print(f"wait_for_event CEL condition:                {us:9.1f} µs/evaluation")


def bench_local_run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        example = Path(tmp) / "contacts"
        shutil.copytree(
            REPO / "examples" / "contacts", example, ignore=shutil.ignore_patterns(".demo", ".kubestep")
        )
        times = []
        for _ in range(3):
            shutil.rmtree(example / ".kubestep", ignore_errors=True)
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kubestep.cli.main",
                    "run",
                    "workflow.yaml",
                    "-e",
                    "event.yaml",
                    "-o",
                    "json",
                ],
                cwd=example,
                capture_output=True,
                text=True,
                env={**os.environ, "CONTACTS_ENRICH_FAILURES": "0"},
                check=True,
            )
            times.append(time.perf_counter() - start)
            steps = len(json.loads(proc.stdout)["steps"])
        per_step = statistics.median(times) / steps
        print(
            f"kubestep run, contacts example ({steps} steps):  {statistics.median(times):6.2f} s/run  "
            f"({per_step * 1000:.0f} ms per step, incl. one runner process each)"
        )


def bench_local_hundred() -> dict[str, float]:
    """``kubestep run`` of a 100-step workflow: total and per step (one runner process per step)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "workflow.yaml").write_text(
            "apiVersion: kubestep.dev/v1alpha1\nkind: Workflow\nmetadata: {name: hundred}\n"
            "spec: {triggers: [{event: bench/hundred}], image: bench, function: bench_flows:hundred_steps}\n"
        )
        (Path(tmp) / "event.yaml").write_text(
            "apiVersion: kubestep.dev/v1alpha1\nkind: Event\nmetadata: {name: go}\n"
            "spec: {name: bench/hundred}\n"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
        }
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kubestep.cli.main",
                "run",
                "workflow.yaml",
                "-e",
                "event.yaml",
                "-o",
                "json",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        total = time.perf_counter() - start
    print(f"kubestep run, 100-step workflow:             {total:6.1f} s ({total * 10:.0f} ms per step)")
    return {"seconds": total, "seconds_per_step": total / 100}


def main() -> None:
    started = datetime.now(UTC)
    scale = float(os.environ.get("BENCH_SCALE", "0.5"))
    print(
        f"kubestep benchmarks — Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, BENCH_SCALE={scale}"
    )
    bench_engine()
    bench_status_size()
    bench_replay()
    bench_cel()
    bench_admission(timeit)
    bench_local_run()
    figures: dict[str, object] = {"local_100_steps": bench_local_hundred()}
    with tempfile.TemporaryDirectory(prefix="kubestep-bench-") as tmp:
        figures["cluster"] = bench_cluster(Path(tmp), scale, lambda line: print(line, flush=True))
    document = {
        "machine": machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "date": started.isoformat(timespec="seconds"),
        "command": f"BENCH_SCALE={scale} make bench",
        "minutes": (datetime.now(UTC) - started).total_seconds() / 60,
        "figures": figures,
    }
    out = Path(
        os.environ.get("BENCH_OUT") or REPO / "benchmarks" / "results" / f"{started:%Y%m%dT%H%M%SZ}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print_table(document)
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
