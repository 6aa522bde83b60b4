"""Duplicates by `spec.id` stay duplicates for the dedupe window even when the first run is deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubestep.api.event import Event
from kubestep.engine.dedupe import earlier_start

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=24)


def event(
    name: str, at: float, id: str | None = "upload-1", started: list[str] | None = None, **spec: Any
) -> Event:
    return Event.model_validate(
        {
            "metadata": {"name": name, "creationTimestamp": (T0 + timedelta(seconds=at)).isoformat()},
            "spec": {"name": spec.get("event", "api/uploaded"), "id": id},
            "status": {"started": [{"workflow": wf, "run": f"{wf}-run"} for wf in started or []]},
        }
    )


@pytest.mark.parametrize(
    ("others", "expected"),
    [
        ([event("first", 0, started=["import"])], "first"),
        # Another workflow's run does not make this one's a duplicate.
        ([event("first", 0, started=["other"])], None),
        # Started nothing (no trigger matched then, or still unprocessed): not a duplicate by it.
        ([event("first", 0)], None),
        ([event("first", 0, id="upload-2", started=["import"])], None),
        ([event("first", 0, started=["import"], event="api/other")], None),
        # Outside the window: a new run.
        ([event("first", -86401, started=["import"])], None),
        # Later ones never make an earlier one a duplicate.
        ([event("later", 10, started=["import"])], None),
        # At the same second, the object name decides.
        ([event("a-same-second", 5, started=["import"])], "a-same-second"),
        ([event("z-same-second", 5, started=["import"])], None),
        ([event("second", 3, started=["import"]), event("first", 1, started=["import"])], "first"),
    ],
)
def test_an_earlier_event_that_started_a_run_makes_this_one_a_duplicate(
    others: list[Event], expected: str | None
) -> None:
    mine = event("mine", 5)
    found = earlier_start(mine, "import", [mine, *others], WINDOW)
    assert (None if found is None else found.metadata.name) == expected


def test_events_without_an_id_are_never_duplicates() -> None:
    mine = event("mine", 5, id=None)
    assert earlier_start(mine, "import", [event("first", 0, id=None, started=["import"])], WINDOW) is None
