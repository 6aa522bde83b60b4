"""The machine a benchmark ran on, and the table it prints."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """CPU model and count, memory, kernel and Python, and the load when the run started."""
    model = ""
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.exists():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory = int(meminfo.read_text().split("MemTotal:", 1)[1].split()[0]) * 1024
    return {
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(document: dict[str, Any]) -> None:
    """Print the cluster figures as one table (Markdown, so that BENCHMARKS.md can quote it)."""
    cluster = document["figures"]["cluster"]
    ceiling = cluster["ceiling"]["jobs_per_min"]
    mib = 2**20
    m = document["machine"]
    runner = cluster["ceiling-runner"]["jobs_per_min"]
    rows: list[tuple[str, str]] = [
        (
            "cluster ceiling (bare Jobs running `python -c pass`, no operator)",
            f"{ceiling:.0f} Jobs/min ({cluster['ceiling']['jobs']} Jobs)",
        ),
        ("bare Jobs importing the runner (a step pod's interpreter start)", f"{runner:.0f} Jobs/min"),
        (
            "operator start to first reconcile (an Event waiting at its start, processed)",
            f"{cluster['operator_start_to_first_reconcile_s']:.2f} s",
        ),
    ]
    for label in ("one-step", "five-steps"):
        f = cluster[label]
        share = f["jobs_per_min"] / ceiling * 100
        rows.append(
            (
                f"{f['runs']} {label} runs at once",
                f"{f['runs_per_min']:.0f} runs/min, {f['steps_per_min']:.0f} steps/min, "
                f"{f['jobs_per_run']:.2f} Jobs/run; {share:.0f} % of the ceiling "
                f"({f['jobs_per_min'] / runner * 100:.0f} % of the runner-import one)",
            )
        )
    for label in ("handoff-10", "handoff-100", "five-steps"):
        f = cluster[label]
        h, lag = f["handoff_s"], f["job_controller_lag_s"]
        rows.append(
            (
                f"handoff at {f['runs']} concurrent runs (pod ended → next Job) p50/p95/p99",
                f"{_s(h[50])} / {_s(h[95])} / {_s(h[99])} s (pod ended → Job finished p50 {_s(lag[50])} s)",
            )
        )
    for label in ("one-step", "five-steps"):
        e = cluster[label]["event_to_first_job_s"]
        rows.append((f"event → first Job ({label}) p50/p99", f"{_s(e[50])} / {_s(e[99])} s"))
    for label in ("one-step", "five-steps"):
        f = cluster[label]
        o, c = f["operator_requests_per_attempt"], f["cluster_requests_per_attempt"]
        rows.append(
            (
                f"API requests per step attempt ({label}): operator reads / writes",
                f"{o['reads']:.1f} / {o['writes']:.1f} (all clients: {c['reads']:.1f} / {c['writes']:.1f})",
            )
        )
    per_pod, chained = cluster["ratio-pod-per-step"], cluster["ratio-chained"]
    ratio = (chained["run_seconds"][50] or 0) / (per_pod["run_seconds"][50] or 1)
    rows.append(
        (
            f"5-step run, chained vs pod per step ({per_pod['runs']} runs each, median)",
            f"{chained['run_seconds'][50]:.1f} s vs {per_pod['run_seconds'][50]:.1f} s: {ratio * 100:.0f} %, "
            f"{chained['jobs_per_run']:.1f} vs {per_pod['jobs_per_run']:.1f} Jobs per run",
        )
    )
    # What one more step costs: the writes of a 5-step run less those of a 1-step run, over four steps
    # (what every run pays once, its Event, its creation, its start and end, cancels out).
    one, five = cluster["one-step"], cluster["five-steps"]
    per_run = {
        label: sum(cluster[label]["operator_writes"].values()) / cluster[label]["runs"]
        for label in ("one-step", "five-steps")
    }
    rows.append(
        (
            "operator writes per run: one-step / five-steps; per step beyond the first",
            f"{per_run['one-step']:.1f} / {per_run['five-steps']:.1f}; "
            f"{(per_run['five-steps'] - per_run['one-step']) / 4:.2f}",
        )
    )
    rows.append(
        ("operator writes per attempt by kind (one-step)", _kinds(one["operator_writes"], one["jobs"]))
    )
    f = five
    after = cluster["operator_after_runs"]
    caches = cluster["caches"]
    gc = cluster["collected_events"]
    local = document["figures"]["local_100_steps"]
    rows += [
        ("operator writes per attempt by kind (five-steps)", _kinds(f["operator_writes"], f["jobs"])),
        ("operator reads per attempt by kind (five-steps)", _kinds(f["operator_reads"], f["jobs"])),
        ("operator CPU per 1,000 steps (five-steps)", f"{f['operator_cpu_s_per_1000_steps']:.1f} s"),
        ("operator peak RSS after the runs", f"{after['peak_rss_bytes'] / mib:.0f} MiB"),
        ("WorkflowRun status bytes per step (five-steps)", f"{f['status_bytes_per_step']:.0f}"),
        (
            f"operator RSS with {caches['finished_runs']} finished + {caches['live_runs']} live runs",
            f"{caches['rss_bytes'] / mib:.0f} MiB",
        ),
        (
            f"operator RSS before / after each round of {gc['events_per_round']} Events handled, collected",
            f"{gc['rss_before_bytes'] / mib:.1f} / "
            + " / ".join(f"{a / mib:.1f}" for a in gc["rss_after_rounds_bytes"])
            + f" MiB ({gc['window_s']} s dedupe window)",
        ),
        (
            "`kubestep run`, 100-step workflow",
            f"{local['seconds']:.1f} s, {local['seconds_per_step'] * 1000:.0f} ms per step",
        ),
    ]
    print()
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_bytes'] / 2**30:.1f} GiB")
    print(f"load average at start: {m['load_average']}")
    print(f"commit {document['commit'][:12]}, {document['date']}, `{document['command']}`")
    print(f"took {document['minutes']:.1f} min")
    print()
    print("| figure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()


def _kinds(counts: dict[str, int], attempts: int) -> str:
    return ", ".join(f"{what} {n / attempts:.2f}" for what, n in counts.items()) or "-"
