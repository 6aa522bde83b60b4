"""Admission under `spec.concurrency`: the pure function, table by table, on an injected clock; the engine's
side of it; and whole simulations of many runs, engine and admission interleaved, never past a limit."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from kubestep.api.base import ObjectMeta
from kubestep.api.flow import ADMITTED, Concurrency, ConcurrencyScope, RunAdmission
from kubestep.api.report import Report, ReportKind, StepRef
from kubestep.api.run import RunEvent, RunPhase, WorkflowRef, WorkflowRun, WorkflowRunSpec
from kubestep.api.workflow import Priority, Throttle, Trigger, WorkflowSpec
from kubestep.engine import ExitKind, Observed, Outcome, StartExecution, decide
from kubestep.engine.admission import (
    Candidate,
    Verdict,
    admit,
    apply,
    candidate,
    key_value,
    priority_seconds,
)
from kubestep.engine.triggers import duplicate, id_run_seed

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STEPS = ConcurrencyScope.STEPS
RUNS = ConcurrencyScope.RUNS


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def waiting(name: str, t: float, tenant: str = "a", **kw: Any) -> Candidate:
    """A run not started yet (its first execution waits), created at ``t``."""
    return Candidate(name=name, queued_at=at(t), event={"name": "go", "data": {"tenant": tenant}}, **kw)


def running(name: str, t: float, tenant: str = "a", active: int = 1, **kw: Any) -> Candidate:
    """A started run with ``active`` executions in flight."""
    return waiting(name, t, tenant, started=True, admitted=True, active=active, **kw)


PER_TENANT = [Concurrency(limit=2, key="event.data.tenant")]
GLOBAL_2_FAIR = [Concurrency(limit=2), Concurrency(limit=2, key="event.data.tenant")]


def granted(entries: list[Concurrency], runs: list[Candidate]) -> dict[str, int]:
    """Step starts granted now, by run."""
    return {name: v.tickets for name, v in admit(entries, runs).verdicts.items() if v.tickets}


@pytest.mark.parametrize(
    ("entries", "runs", "expected"),
    [
        pytest.param(
            [],
            [waiting("r1", 0, wants=1), waiting("r2", 1, wants=1)],
            {"r1": 1, "r2": 1},
            id="limit removed from the workflow: every waiting run starts",
        ),
        pytest.param(
            [Concurrency(limit=1)],
            [waiting("late", 5), waiting("early", 1)],
            {"early": 1},
            id="oldest first",
        ),
        pytest.param(
            [Concurrency(limit=2)],
            [running("r1", 0), waiting("r2", 1), waiting("r3", 2)],
            {"r2": 1},
            id="in flight counts",
        ),
        pytest.param(
            [Concurrency(limit=2)],
            [running("r1", 0, active=0, tickets=1), running("r2", 1, active=0, tickets=1), waiting("r3", 2)],
            {},
            id="unused tickets hold their slots",
        ),
        pytest.param(
            [Concurrency(limit=2)],
            [running("r1", 0, finished=True), running("r2", 0, finished=True), waiting("r3", 2)],
            {"r3": 1},
            id="finished runs hold nothing",
        ),
        pytest.param(
            PER_TENANT,
            [running("a1", 0, "a"), running("a2", 1, "a"), waiting("a3", 2, "a"), waiting("b1", 3, "b")],
            {"b1": 1},
            id="a limit per key",
        ),
        pytest.param(
            [Concurrency(limit=3)],
            [running("p", 0, active=1, wants=2)],
            {"p": 2},
            id="parallel steps of one run",
        ),
        pytest.param(
            [Concurrency(limit=2)],
            [running("p", 0, active=1, wants=3)],
            {"p": 1},
            id="parallel steps capped",
        ),
        pytest.param(
            [Concurrency(limit=1, scope=RUNS)],
            [running("r1", 0, active=0), waiting("r2", 1)],
            {},
            id="runs scope: a sleeping run holds its slot",
        ),
    ],
)
def test_grants(entries: list[Concurrency], runs: list[Candidate], expected: dict[str, int]) -> None:
    assert granted(entries, runs) == expected


def test_runs_scope_admits_the_oldest_and_says_why_the_rest_wait() -> None:
    entries = [Concurrency(limit=1, scope=RUNS, key="event.data.tenant")]
    verdicts = admit(entries, [waiting("r2", 2), waiting("r1", 1), waiting("b", 3, "b")]).verdicts
    assert verdicts["r1"] == Verdict(admit=True, keys={"event.data.tenant": "a"})
    assert verdicts["b"] == Verdict(admit=True, keys={"event.data.tenant": "b"})
    assert not verdicts["r2"].admit
    assert verdicts["r2"].reason == "ConcurrencyLimited"
    assert verdicts["r2"].waiting_for == "ConcurrencyLimited event.data.tenant=a"
    assert (
        "spec.concurrency[0] allows 1 runs at once for key event.data.tenant = 'a'" in verdicts["r2"].message
    )


def test_runs_and_steps_together_admit_the_run_and_its_first_step() -> None:
    entries = [Concurrency(limit=1, scope=RUNS), Concurrency(limit=5)]
    assert admit(entries, [waiting("r1", 0)]).verdicts["r1"] == Verdict(admit=True, tickets=1)


def test_fairness_a_late_key_is_served_before_a_burst_goes_on() -> None:
    # 20 of tenant A queued before 1 of B, 2 slots shared: B gets the first slot freed.
    runs = [running("a00", 0), running("a01", 0)] + [waiting(f"a{i:02}", i) for i in range(2, 20)]
    runs.append(waiting("b", 100, "b"))
    runs[0] = running("a00", 0, finished=True)
    assert granted(GLOBAL_2_FAIR, runs) == {"b": 1}


def test_fairness_round_robin_order() -> None:
    # Keys A, B, C each with 5 waiting, 3 slots, nothing held: one each, oldest first within a key.
    runs = [waiting(f"{k}{i}", i * 3 + n, k) for n, k in enumerate("abc") for i in range(5)]
    entries = [Concurrency(limit=3), Concurrency(limit=3, key="event.data.tenant")]
    assert granted(entries, runs) == {"a0": 1, "b0": 1, "c0": 1}


@pytest.mark.parametrize("seed", range(40))
def test_no_key_takes_more_than_its_share_while_others_wait(seed: int) -> None:
    rnd = random.Random(seed)
    keys = rnd.randint(1, 6)
    limit = rnd.randint(1, 12)
    runs = [
        waiting(f"r{i}", rnd.uniform(0, 100), f"k{rnd.randrange(keys)}") for i in range(rnd.randint(keys, 60))
    ]
    entries = [Concurrency(limit=limit), Concurrency(limit=limit, key="event.data.tenant")]
    grants = granted(entries, runs)
    tenant = {r.name: r.event["data"]["tenant"] for r in runs}
    per_key = {t: 0 for t in tenant.values()}
    for name, n in grants.items():
        per_key[tenant[name]] += n
    assert sum(grants.values()) == min(limit, len(runs))
    # Round robin: a key still waiting has at most one slot fewer than any other.
    for name in tenant:
        if name not in grants:
            assert max(per_key.values()) <= per_key[tenant[name]] + 1, per_key
    # Within a key, the oldest go first.
    for key in per_key:
        mine = sorted((r for r in runs if tenant[r.name] == key), key=lambda r: r.queued_at)
        assert [r.name in grants for r in mine] == sorted((r.name in grants for r in mine), reverse=True)


@pytest.mark.parametrize(("keys", "limit"), [(k, n) for k in range(1, 6) for n in range(1, 11)])
def test_with_k_keys_waiting_no_key_holds_more_than_its_ceiling(keys: int, limit: int) -> None:
    # Every key has more work than the limit, the oldest work all of one key.
    runs = [waiting(f"k{k}-{i}", k * 100 + i, f"k{k}") for k in range(keys) for i in range(limit + 1)]
    entries = [Concurrency(limit=limit), Concurrency(limit=limit, key="event.data.tenant")]
    per_key: dict[str, int] = {}
    for name, n in granted(entries, runs).items():
        per_key[name.split("-")[0]] = per_key.get(name.split("-")[0], 0) + n
    assert sum(per_key.values()) == limit
    assert max(per_key.values()) <= math.ceil(limit / keys)


def test_a_key_that_fails_to_evaluate_counts_under_the_empty_key() -> None:
    assert key_value("event.data.missing", {"data": {}}) == ""
    assert key_value("event.data.n", {"data": {"n": 3}}) == "3"
    assert key_value(None, {}) == ""


def test_paused_admits_nothing_and_says_so() -> None:
    verdict = admit([Concurrency(limit=5)], [waiting("r1", 0)], paused=True).verdicts["r1"]
    assert verdict == Verdict(
        reason="WorkflowPaused",
        waiting_for="WorkflowPaused",
        message="the workflow is paused; the run starts when it is resumed",
        paused=True,
    )


def test_apply_grants_and_sets_the_admitted_condition() -> None:
    run = make_run([Concurrency(limit=1)])
    waiting_status = apply(
        run.status, Verdict(reason="ConcurrencyLimited", waiting_for="X", message="m"), at(1)
    )
    condition = next(c for c in waiting_status.conditions if c.type == ADMITTED)
    assert (condition.status, condition.reason, condition.message) == ("False", "ConcurrencyLimited", "m")
    assert waiting_status.admission == RunAdmission(waiting_for="X")
    admitted = apply(waiting_status, Verdict(admit=True, tickets=1), at(2))
    assert admitted.admission == RunAdmission(admitted_at=at(2), tickets=1)
    assert next(c for c in admitted.conditions if c.type == ADMITTED).status == "True"


def test_concurrency_entries_are_validated() -> None:
    with pytest.raises(ValidationError, match="same scope and key twice"):
        spec([Concurrency(limit=1), Concurrency(limit=2)])
    with pytest.raises(ValidationError):
        spec([Concurrency(limit=1), Concurrency(limit=2, key="a"), Concurrency(limit=3, scope=RUNS)])
    with pytest.raises(ValidationError):
        Concurrency(limit=0)
    spec([Concurrency(limit=1), Concurrency(limit=1, scope=RUNS)])


# The engine's side ----------------------------------------------------------------------------------------


def spec(entries: list[Concurrency]) -> WorkflowSpec:
    return WorkflowSpec(
        triggers=[Trigger(event="go")], image="img", function="app.flows:main", concurrency=entries
    )


def make_run(entries: list[Concurrency], name: str = "r", tenant: str = "a", t: float = 0) -> WorkflowRun:
    return WorkflowRun(
        metadata=ObjectMeta(name=name, uid=f"uid-{name}", creation_timestamp=at(t)),
        spec=WorkflowRunSpec(
            workflow_ref=WorkflowRef(name="wf"),
            workflow=spec(entries),
            event=RunEvent(name="go", data={"tenant": tenant}),
        ),
    )


def test_a_capped_run_is_queued_until_admitted_then_starts() -> None:
    run = make_run([Concurrency(limit=1)])
    decision = decide(run, Observed(), at(0))
    assert decision.status.phase is RunPhase.QUEUED
    assert decision.status.started_at is None
    assert not decision.of(StartExecution)
    assert decision.status.admission == RunAdmission(wants=1)
    run = run.model_copy(update={"status": apply(decision.status, Verdict(admit=True, tickets=1), at(1))})
    decision = decide(run, Observed(), at(2))
    assert decision.status.phase is RunPhase.RUNNING
    assert len(decision.of(StartExecution)) == 1
    assert decision.status.admission is not None
    assert (decision.status.admission.tickets, decision.status.admission.wants) == (0, 0)


def test_a_queued_run_can_be_cancelled() -> None:
    run = make_run([Concurrency(limit=1, scope=RUNS)])
    run = run.model_copy(update={"status": decide(run, Observed(), at(0)).status})
    run.spec.cancel = True
    decision = decide(run, Observed(), at(1))
    assert decision.status.phase is RunPhase.CANCELLED
    assert not decision.of(StartExecution)


def test_parallel_steps_start_as_far_as_the_tickets_go() -> None:
    run = make_run([Concurrency(limit=2)])
    run = run.model_copy(update={"status": apply(run.status, Verdict(admit=True, tickets=1), at(0))})
    first = decide(run, Observed(), at(0))
    run = run.model_copy(update={"status": first.status})
    (execution,) = first.of(StartExecution)
    planned = Report(kind=ReportKind.PLANNED, planned=[StepRef(id=s, name=s) for s in "abc"])
    run = run.model_copy(
        update={"status": apply(run.status, Verdict(tickets=2), at(1))}
    )  # granted while it ran: unused, given back
    decision = decide(
        run, Observed([Outcome(execution.name, ExitKind.EXITED, report=planned, exit_code=0)]), at(2)
    )
    assert len(decision.of(StartExecution)) == 2
    assert decision.status.admission is not None
    assert (decision.status.admission.tickets, decision.status.admission.wants) == (0, 1)
    assert decision.status.phase is RunPhase.RUNNING


# Whole simulations: many runs, the engine and admission interleaved at random ----------------------------


def _simulate(entries: list[Concurrency], tenants: list[str], seed: int, steps: int = 2) -> list[WorkflowRun]:
    """Drive every run to its end; Jobs end at random; admission runs at random moments. Returns the runs."""
    rnd = random.Random(seed)
    runs = {f"r{i:02}": make_run(entries, f"r{i:02}", tenant, i) for i, tenant in enumerate(tenants)}
    now = at(0)
    for _ in range(5000):
        now += timedelta(seconds=1)
        if all(r.status.phase.finished for r in runs.values()):
            return list(runs.values())
        choice = rnd.random()
        if choice < 0.3:
            decided = admit(entries, [candidate(r) for r in runs.values()])
            for name, verdict in decided.verdicts.items():
                runs[name] = runs[name].model_copy(update={"status": apply(runs[name].status, verdict, now)})
        else:
            name = rnd.choice(sorted(runs))
            run = runs[name]
            outcomes = []
            for execution in run.status.active:
                if rnd.random() < 0.5:
                    done = sum(1 for s in run.status.steps if s.phase.finished)
                    if execution.step is None and done >= steps:
                        report = Report(kind=ReportKind.COMPLETED, output=name)
                    elif execution.step is None:
                        step = StepRef(id=f"s{done}", name=f"s{done}")
                        report = Report(kind=ReportKind.STEP_SUCCEEDED, step=step, output=done)
                    else:
                        report = Report(
                            kind=ReportKind.STEP_SUCCEEDED,
                            step=StepRef(id=execution.step, name=execution.step),
                            output=1,
                        )
                    outcomes.append(Outcome(execution.name, ExitKind.EXITED, report=report, exit_code=0))
            decision = decide(run, Observed(outcomes), now)
            runs[name] = run.model_copy(update={"status": decision.status})
        per_key: dict[str, int] = {}
        for run in runs.values():
            if not run.status.phase.finished:
                held = len(run.status.active)
                tenant = run.spec.event.data["tenant"]
                per_key[tenant] = per_key.get(tenant, 0) + held
                per_key[""] = per_key.get("", 0) + held
        for entry in entries:
            if entry.scope is STEPS:
                counts = [per_key.get("", 0)] if entry.key is None else [v for k, v in per_key.items() if k]
                assert max(counts, default=0) <= entry.limit, (per_key, entry)
    raise AssertionError("the runs did not all finish")


@pytest.mark.parametrize("seed", range(3))
def test_simulated_runs_never_exceed_the_limit_and_all_finish(seed: int) -> None:
    entries = [Concurrency(limit=3, key="event.data.tenant")]
    runs = _simulate(entries, ["a", "b"] * 10, seed)
    assert all(r.status.phase is RunPhase.SUCCEEDED for r in runs)


@pytest.mark.parametrize("seed", range(2))
def test_simulated_runs_under_a_shared_limit_all_finish(seed: int) -> None:
    runs = _simulate(GLOBAL_2_FAIR, ["a"] * 12 + ["b"] * 3, seed)
    assert all(r.status.phase is RunPhase.SUCCEEDED for r in runs)


def test_key_values_are_computed_once_and_kept() -> None:
    entries = [Concurrency(limit=1, key="event.data.tenant")]
    verdict = admit(entries, [waiting("r1", 0, "acme")]).verdicts["r1"]
    assert verdict.keys == {"event.data.tenant": "acme"}
    status = apply(make_run(entries).status, verdict, at(1))
    assert status.admission is not None and status.admission.keys == {"event.data.tenant": "acme"}
    # A kept value is used as is (the event never changes).
    kept = admit(
        entries, [running("r0", 0, "x", keys={"event.data.tenant": "acme"}), waiting("r1", 1, "acme")]
    )
    assert kept.verdicts["r1"].tickets == 0


# Throttle ------------------------------------------------------------------------------------------------


def admitted_now(
    throttle: Throttle, runs: list[Candidate], now: datetime
) -> tuple[list[str], datetime | None]:
    decided = admit([], runs, now, throttle)
    return sorted(n for n, v in decided.verdicts.items() if v.admit), decided.at


@pytest.mark.parametrize(
    ("throttle", "history", "expected", "at_seconds"),
    [
        pytest.param(Throttle(limit=2, period="10s"), [], ["w0"], 5, id="even spread: one now, next in 5s"),
        pytest.param(Throttle(limit=2, period="10s", burst=1), [], ["w0", "w1"], 5, id="burst: two now"),
        pytest.param(Throttle(limit=2, period="10s"), [-2.0], [], 3, id="a start 2s ago"),
        pytest.param(Throttle(limit=2, period="10s"), [-5.0], ["w0"], 5, id="a start a turn ago"),
        pytest.param(
            Throttle(limit=1, period="1m"), [-120.0, -90.0], ["w0"], 60, id="old starts are forgotten"
        ),
    ],
)
def test_throttle_turns(
    throttle: Throttle, history: list[float], expected: list[str], at_seconds: float
) -> None:
    runs = [running(f"h{i}", t - 100, admitted_at=at(100 + t), finished=True) for i, t in enumerate(history)]
    runs += [waiting(f"w{i}", i) for i in range(4)]
    names, next_at = admitted_now(throttle, runs, at(100))
    assert names == expected
    assert next_at == at(100 + at_seconds)


def test_throttle_says_why_and_keys_are_apart() -> None:
    throttle = Throttle(limit=1, period="10s", key="event.data.tenant")
    runs = [waiting("a1", 0, "a"), waiting("a2", 1, "a"), waiting("b1", 2, "b")]
    decided = admit([], runs, at(0), throttle)
    assert {n for n, v in decided.verdicts.items() if v.admit} == {"a1", "b1"}
    waits = decided.verdicts["a2"]
    assert (waits.reason, waits.waiting_for) == ("Throttled", "Throttled event.data.tenant=a")
    assert (
        "spec.throttle starts 1 run(s) per 10s for key event.data.tenant = 'a', one every 10s"
        in waits.message
    )


def test_a_throttled_queue_starts_in_order_at_the_spaced_times_and_drops_nothing() -> None:
    throttle = Throttle(limit=2, period="10s")
    runs = {f"w{i}": waiting(f"w{i}", i * 0.01) for i in range(10)}
    now = at(0)
    starts: dict[str, datetime] = {}
    while len(starts) < 10:
        decided = admit([], list(runs.values()), now, throttle)
        for name, verdict in decided.verdicts.items():
            if verdict.admit:
                starts[name] = now
                runs[name] = replace(runs[name], admitted=True, admitted_at=now, started=True)
        assert decided.at is not None or len(starts) == 10
        now = decided.at or now
    assert list(starts) == [f"w{i}" for i in range(10)]
    assert [(t - at(0)).total_seconds() for t in starts.values()] == [5.0 * i for i in range(10)]


def test_a_throttled_run_waits_for_its_admission_then_starts() -> None:
    run = make_run([])
    run.spec.workflow.throttle = Throttle(limit=1, period="1m")
    decision = decide(run, Observed(), at(0))
    assert decision.status.phase is RunPhase.QUEUED and not decision.of(StartExecution)
    run = run.model_copy(update={"status": apply(decision.status, Verdict(admit=True), at(1))})
    decision = decide(run, Observed(), at(2))
    assert decision.status.phase is RunPhase.RUNNING and len(decision.of(StartExecution)) == 1


def test_a_throttle_period_under_a_second_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"throttle\.period is shorter than 1s"):
        Throttle(limit=1, period="500ms")


# Priority ------------------------------------------------------------------------------------------------


def test_priority_moves_a_run_ahead_in_its_queue_and_is_clamped() -> None:
    prio = Priority(run="event.data.boost")
    runs = [waiting(f"w{i}", i * 10) for i in range(5)]  # queued 10 s apart; the last one is boosted
    runs[4] = replace(runs[4], event={"name": "go", "data": {"tenant": "a", "boost": 35}})
    decided = admit([Concurrency(limit=1)], runs, at(100), priority=prio)
    assert [n for n, v in decided.verdicts.items() if v.tickets] == ["w0"]
    runs[4] = replace(runs[4], event={"name": "go", "data": {"tenant": "a", "boost": 45}})
    decided = admit([Concurrency(limit=1)], runs, at(100), priority=prio)
    assert [n for n, v in decided.verdicts.items() if v.tickets] == ["w4"]
    assert decided.verdicts["w4"].keys == {"priority: event.data.boost": "45"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"boost": 10**9}, 3600),
        ({"boost": -(10**9)}, -3600),
        ({"boost": "x"}, 0),
        ({}, 0),
        ({"boost": 2.7}, 2),
    ],
)
def test_priority_seconds(data: dict[str, Any], expected: int) -> None:
    assert priority_seconds("event.data.boost", {"data": data}) == expected


# Event admission: the dedupe window, shared by the operator and `kubestep run` ---------------------------


@pytest.mark.parametrize(
    ("first", "created", "expected"),
    [
        pytest.param(at(0), at(10), True, id="within the window"),
        pytest.param(at(0), at(100), False, id="after the window"),
        pytest.param(None, at(100), True, id="a run of unknown age counts as recent"),
    ],
)
def test_dedupe_window(first: datetime | None, created: datetime, expected: bool) -> None:
    assert duplicate(first, created, timedelta(seconds=60)) is expected


def test_events_with_one_id_map_to_one_run_name_per_generation() -> None:
    assert id_run_seed("api/x", "order-7", 0) == id_run_seed("api/x", "order-7", 0)
    assert id_run_seed("api/x", "order-7", 0) != id_run_seed("api/x", "order-7", 1)
    assert id_run_seed("api/x", "order-7", 0) != id_run_seed("api/y", "order-7", 0)
