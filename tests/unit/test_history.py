"""Collection of finished runs: `spec.history` keeps the newest per class, `spec.ttlAfterFinished` ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubestep.api.run import RunPhase
from kubestep.api.workflow import WorkflowSpec
from kubestep.engine.history import Finished, collect, over_limits

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S, F, C = RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.CANCELLED


def spec(**extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"triggers": [{"event": "app/go"}], "image": "img", "function": "app.flows:main"} | extra
    )


def runs(*phases: RunPhase) -> list[Finished]:
    """Runs r0, r1, ... finished a minute apart, in order."""
    return [Finished(f"r{i}", phase, T0 + timedelta(minutes=i)) for i, phase in enumerate(phases)]


@pytest.mark.parametrize(
    ("history", "phases", "deleted"),
    [
        ({"succeeded": 2}, [S, S, S, S, S], ["r0", "r1", "r2"]),
        ({"succeeded": 2, "failed": 1}, [F, S, C, S, F, S], ["r0", "r1", "r2"]),
        ({"succeeded": 0, "failed": 0}, [S, F], ["r0", "r1"]),
        ({}, [S] * 50 + [F] * 3, []),
    ],
)
def test_history_keeps_the_newest_of_each_class(
    history: dict[str, int], phases: list[RunPhase], deleted: list[str]
) -> None:
    assert collect(spec(history=history), runs(*phases), T0 + timedelta(days=1)).delete == deleted


def test_ttl_deletes_runs_finished_longer_ago_and_says_when_the_next_one_is_due() -> None:
    s = spec(ttlAfterFinished="10m")
    result = collect(s, runs(S, F, S), T0 + timedelta(minutes=10, seconds=30))
    assert result.delete == ["r0"]
    assert result.next == T0 + timedelta(minutes=11)


def test_runs_are_listed_only_when_the_counts_may_exceed_the_limits() -> None:
    assert not over_limits(spec(history={"succeeded": 2}), 2, 0)
    assert over_limits(spec(history={"succeeded": 2}), 3, 0)
    assert over_limits(spec(ttlAfterFinished="1h"), 1, 0)
    assert not over_limits(spec(ttlAfterFinished="1h"), 0, 0)
