"""Collection of what finished runs and handled Events leave behind: a run's step Jobs once its log tails
are recorded, and Events past their dedupe window that no unfinished run refers to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubestep.api.event import Event
from kubestep.api.run import WorkflowRun
from kubestep.engine.gc import collect_event, collect_jobs

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
#: When an Event published at T0 may go at the earliest: its window and a 30 s grace.
EXPIRY = T0 + WINDOW + timedelta(seconds=30)


def run(
    phase: str = "Succeeded",
    attempts: list[str | None] | None = None,
    active: bool = False,
    history: dict[str, Any] | None = None,
    name: str = "r1",
    source: str = "ev-1",
    created: datetime = T0,
    steps: list[dict[str, Any]] | None = None,
    cancel_on: list[dict[str, Any]] | None = None,
) -> WorkflowRun:
    """A run finished at T0 + 1 min (when ``phase`` is a finished one)."""
    spec: dict[str, Any] = {"triggers": [{"event": "app/go"}], "image": "img", "function": "app.flows:main"}
    if history is not None:
        spec["history"] = history
    if cancel_on is not None:
        spec["cancelOn"] = cancel_on
    attempt_list = [
        {"number": i + 1, "job": f"{name}-a{i}", "result": result, "logTail": "printed\n"}
        for i, result in enumerate(["Succeeded"] if attempts is None else attempts)
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "steps": steps if steps is not None else [{"id": "s", "name": "s", "attempts": attempt_list}],
    }
    if phase in ("Succeeded", "Failed", "Cancelled"):
        status["finishedAt"] = (T0 + timedelta(minutes=1)).isoformat()
    if active:
        status["active"] = [{"name": f"{name}-x", "attempt": 1, "startedAt": T0.isoformat()}]
    return WorkflowRun.model_validate(
        {
            "metadata": {"name": name, "creationTimestamp": created.isoformat()},
            "spec": {
                "workflowRef": {"name": "wf"},
                "workflow": spec,
                "event": {"name": "app/go", "data": {}, "source": source},
            },
            "status": status,
        }
    )


FINISHED = T0 + timedelta(minutes=1)


@pytest.mark.parametrize(
    ("case", "the_run", "left", "now", "delete", "at"),
    [
        (
            "default: a minute after the run finished",
            run(),
            True,
            FINISHED,
            False,
            FINISHED + timedelta(minutes=1),
        ),
        ("default, once the minute passed", run(), True, FINISHED + timedelta(minutes=1), True, None),
        ("0s: at once", run(history={"jobsAfterFinished": "0s"}), True, FINISHED, True, None),
        (
            "no Jobs left: nothing to do",
            run(history={"jobsAfterFinished": "0s"}),
            False,
            FINISHED,
            False,
            None,
        ),
        ("a run in flight keeps them", run("Running"), True, FINISHED + timedelta(days=1), False, None),
        (
            "a failed run too",
            run("Failed", ["Error", "Error"]),
            True,
            FINISHED + timedelta(hours=1),
            True,
            None,
        ),
        (
            "an attempt not recorded yet (its log tail unread)",
            run("Failed", ["Error", None]),
            True,
            FINISHED + timedelta(hours=1),
            False,
            None,
        ),
        ("an execution still active", run(active=True), True, FINISHED + timedelta(hours=1), False, None),
        (
            "kept longer",
            run(history={"jobsAfterFinished": "8760h"}),
            True,
            FINISHED,
            False,
            FINISHED + timedelta(hours=8760),
        ),
    ],
)
def test_a_finished_runs_jobs_go_once_its_attempts_are_recorded(
    case: str, the_run: WorkflowRun, left: bool, now: datetime, delete: bool, at: datetime | None
) -> None:
    verdict = collect_jobs(the_run, left, now)
    assert (verdict.delete, verdict.at) == (delete, at), case


def event(
    name: str = "ev-1",
    at: float = 0,
    event_id: str | None = None,
    handled: bool = True,
    event_name: str = "app/go",
) -> Event:
    status: dict[str, Any] = {}
    if handled:
        status["conditions"] = [{"type": "Processed", "status": "True", "reason": "RunsStarted"}]
    return Event.model_validate(
        {
            "metadata": {"name": name, "creationTimestamp": (T0 + timedelta(seconds=at)).isoformat()},
            "spec": {"name": event_name, "id": event_id, "data": {}},
            "status": status,
        }
    )


def waiting(began: datetime, event_name: str = "app/go", matched: str | None = None) -> list[dict[str, Any]]:
    wait: dict[str, Any] = {"event": event_name, "timeoutAt": (T0 + timedelta(days=1)).isoformat()}
    if matched:
        wait["matched"] = matched
    return [
        {
            "id": "w",
            "name": "w",
            "type": "wait_for_event",
            "phase": "Succeeded" if matched else "Waiting",
            "startedAt": began.isoformat(),
            "wait": wait,
        }
    ]


LATER = EXPIRY + timedelta(seconds=1)
EARLIER = T0 - timedelta(minutes=5)


@pytest.mark.parametrize(
    ("case", "same_name", "referrers", "now", "delete"),
    [
        ("inside its window", [], [], EXPIRY - timedelta(seconds=1), False),
        ("past its window, nothing refers to it", [], [], LATER, True),
        ("its run finished", [], [run(source="ev-1")], LATER, True),
        ("its run still runs", [], [run("Running", source="ev-1")], LATER, False),
        ("another Event's run", [], [run("Running", source="ev-2")], LATER, True),
        (
            "a step waits for its name since before it",
            [],
            [run("Waiting", source="x", steps=waiting(EARLIER))],
            LATER,
            False,
        ),
        (
            "a step began waiting after it",
            [],
            [run("Waiting", source="x", steps=waiting(T0 + timedelta(seconds=5)))],
            LATER,
            True,
        ),
        (
            "a step waits for another name",
            [],
            [run("Waiting", source="x", steps=waiting(EARLIER, "app/other"))],
            LATER,
            True,
        ),
        (
            "a running run's step matched it",
            [],
            [run("Running", source="x", steps=waiting(EARLIER, matched="ev-1"))],
            LATER,
            False,
        ),
        (
            "a finished run's step matched it",
            [],
            [run(source="x", steps=waiting(EARLIER, matched="ev-1"))],
            LATER,
            True,
        ),
        (
            "it may cancel a run started before it",
            [],
            [run("Running", source="x", created=EARLIER, cancel_on=[{"event": "app/go"}])],
            LATER,
            False,
        ),
        (
            "it cannot cancel a run started after it",
            [],
            [run("Running", source="x", created=T0 + timedelta(seconds=5), cancel_on=[{"event": "app/go"}])],
            LATER,
            True,
        ),
    ],
)
def test_an_event_goes_after_its_window_unless_an_unfinished_run_refers_to_it(
    case: str, same_name: list[Event], referrers: list[WorkflowRun], now: datetime, delete: bool
) -> None:
    verdict = collect_event(event(), same_name, referrers, WINDOW, now)
    assert verdict.delete is delete, (case, verdict.why)
    assert (verdict.at is None) is delete, case  # kept: looked at again


@pytest.mark.parametrize(
    ("case", "others", "delete"),
    [
        ("a later duplicate inside the window, handled", [event("ev-2", 600, "id-1")], True),
        (
            "a later duplicate inside the window, not handled yet",
            [event("ev-2", 600, "id-1", handled=False)],
            False,
        ),
        ("an earlier one with its id, not handled yet", [event("ev-0", -600, "id-1", handled=False)], False),
        ("another id, not handled yet", [event("ev-2", 600, "id-2", handled=False)], True),
        (
            "one published after its window, not handled yet",
            [event("ev-2", 3601, "id-1", handled=False)],
            True,
        ),
    ],
)
def test_an_event_stays_while_an_event_with_its_id_inside_its_window_is_not_handled(
    case: str, others: list[Event], delete: bool
) -> None:
    """It is what makes those duplicates (`kubestep.engine.dedupe`): it must be there when they are seen."""
    me = event(event_id="id-1")
    assert collect_event(me, [me, *others], [], WINDOW, LATER).delete is delete, case


def test_an_event_not_handled_yet_is_never_collected() -> None:
    verdict = collect_event(event(handled=False), [], [], WINDOW, T0 + timedelta(days=30))
    assert not verdict.delete and verdict.at is None


def test_a_short_window_gets_a_grace_as_long_as_itself() -> None:
    short = timedelta(seconds=5)
    assert not collect_event(event(), [], [], short, T0 + timedelta(seconds=9)).delete
    assert collect_event(event(), [], [], short, T0 + timedelta(seconds=10)).delete
