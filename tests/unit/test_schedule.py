"""Cron triggers: due ticks, missed ticks within and past `startingDeadline`, time zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from kubestep.api.workflow import WorkflowSpec
from kubestep.engine.schedule import TICK_EVENT, Tick, plan

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def spec(*triggers: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"triggers": list(triggers), "image": "img", "function": "app.flows:main"}
    )


def at(minutes: float, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def test_nothing_is_due_before_the_first_tick() -> None:
    result = plan(spec({"cron": "*/5 * * * *"}), None, T0, at(3))
    assert result.start == [] and result.skipped == 0 and result.last is None and result.next == at(5)


def test_a_due_tick_starts_one_run_and_is_not_due_again() -> None:
    s = spec({"cron": "*/5 * * * *"})
    first = plan(s, None, T0, at(5, 2))
    assert first.start == [Tick(0, at(5))] and first.last == at(5) and first.next == at(10)
    again = plan(s, first.last, T0, at(6))
    assert again.start == [] and again.last == at(5)


def test_missed_ticks_start_the_most_recent_within_the_deadline_and_count_the_others() -> None:
    s = spec({"cron": "* * * * *"})
    # Down from 12:00:30 to 12:10:20: ticks 12:01 ... 12:10 were missed; 12:10 is 20 s late.
    result = plan(s, at(0), T0, at(10, 20))
    assert result.start == [Tick(0, at(10))]
    assert result.skipped == 9 and result.last == at(10) and result.next == at(11)


def test_missed_ticks_past_the_deadline_are_all_skipped() -> None:
    s = spec({"cron": "*/10 * * * *", "startingDeadline": "2m"})
    result = plan(s, at(0), T0, at(25))
    assert result.start == [] and result.skipped == 2 and result.last == at(20)


def test_the_default_deadline_is_five_minutes() -> None:
    s = spec({"cron": "*/10 * * * *"})
    assert plan(s, at(0), T0, at(14, 59)).start == [Tick(0, at(10))]
    assert plan(s, at(0), T0, at(15, 1)).start == []


def test_a_long_outage_of_a_frequent_schedule_is_counted_without_walking_every_tick() -> None:
    s = spec({"cron": "* * * * * *"})  # every second, for a week
    result = plan(s, T0, T0, T0 + timedelta(days=7))
    assert result.start == [Tick(0, T0 + timedelta(days=7))]
    assert abs(result.skipped - (7 * 86400 - 1)) <= 2


def test_shorthands_and_a_seconds_field() -> None:
    assert plan(spec({"cron": "@hourly"}), None, T0, at(61)).start == [Tick(0, at(60))]
    assert plan(spec({"cron": "*/10 * * * * *"}), None, T0, at(0, 25)).start == [Tick(0, at(0, 20))]


def test_next_tick_follows_the_zones_daylight_saving_rules() -> None:
    # Berlin springs forward on 2026-03-29 (02:00 -> 03:00) and falls back on 2026-10-25 (03:00 -> 02:00).
    s = spec({"cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    before_spring = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)
    spring = plan(s, before_spring, before_spring, before_spring).next
    assert spring is not None
    # 02:30 does not exist that night: the first time after it, 03:00 CEST (01:00 UTC).
    assert spring.astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    after = plan(s, spring, before_spring, spring).next
    assert after is not None and after.astimezone(UTC) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)
    before_autumn = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)
    autumn = plan(s, before_autumn, before_autumn, before_autumn).next
    assert autumn is not None and autumn.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    # 02:30 happens twice that night; the schedule runs once, and next at 02:30 CET.
    following = plan(s, autumn, before_autumn, autumn).next
    assert following is not None and following.astimezone(UTC) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_tick_names_its_run_from_the_workflow_and_the_time() -> None:
    tick = Tick(0, datetime(2026, 3, 1, 13, 0, tzinfo=BERLIN))
    same = Tick(1, datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    assert tick.run_name("nightly") == same.run_name("nightly")
    assert tick.run_name("nightly") != Tick(0, at(1)).run_name("nightly")
    assert tick.run_name("nightly") != tick.run_name("other")
    event = tick.event(spec({"cron": "0 * * * *", "timezone": "Europe/Berlin"}))
    assert event["name"] == TICK_EVENT
    assert event["data"] == {
        "scheduledAt": "2026-03-01T13:00:00+01:00",
        "cron": "0 * * * *",
        "timezone": "Europe/Berlin",
    }


def test_event_and_cron_triggers_live_side_by_side() -> None:
    s = spec({"event": "app/go"}, {"cron": "0 * * * *"}, {"event": "app/other"})
    assert plan(s, None, T0, at(60)).start == [Tick(1, at(60))]


@pytest.mark.parametrize(
    ("trigger", "problem"),
    [
        ({"cron": "every hour"}, "is not a cron schedule"),
        ({"cron": "61 * * * *"}, "is not a cron schedule"),
        ({"cron": "@fortnightly"}, "is not a cron schedule"),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "not an IANA time zone name"),
        ({"event": "app/go", "cron": "0 * * * *"}, "set exactly one of them"),
        ({}, "set exactly one of them"),
        ({"event": "app/go", "timezone": "UTC"}, "belong to a `cron` trigger"),
        ({"cron": "0 * * * *", "if": "true"}, "belongs to an `event` trigger"),
        ({"cron": "0 * * * *", "startingDeadline": "soon"}, "'soon' is not a duration"),
    ],
)
def test_bad_triggers_are_refused_naming_the_fix(trigger: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        spec(trigger)
