"""Cron expressions as `spec.triggers[].cron` takes them, checked with the `cronsim` library."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: The shorthands cron users know, as the five fields they stand for.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: What the API server checks (the library checks the rest): a macro, or 5 fields (6 with leading seconds).
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+( +\S+){4,5})$"
CRON_FORMAT_PROBLEM = (
    "is not a cron schedule; write five fields (minute hour day-of-month month day-of-week, e.g. "
    "'*/15 * * * *' or '0 3 * * 1-5') or a shorthand such as @hourly or @daily"
)


def expand(expr: str) -> str:
    """``expr`` with a shorthand replaced by its fields."""
    return MACROS.get(expr.strip().lower(), expr.strip())


def zone(name: str | None) -> ZoneInfo:
    """The IANA time zone ``name`` (UTC when unset)."""
    return ZoneInfo(name or "UTC")


def problem(expr: str, timezone: str | None) -> str | None:
    """Why ``expr`` (in ``timezone``) cannot be scheduled, or None."""
    try:
        tz = zone(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return (
            f"timezone {timezone!r} is not an IANA time zone name; write one such as Europe/Berlin, "
            "America/New_York or UTC"
        )
    try:
        next(iter(CronSim(expand(expr), datetime(2026, 1, 1, tzinfo=UTC).astimezone(tz))))
    except (CronSimError, StopIteration, ValueError) as exc:
        return f"cron {expr!r} {CRON_FORMAT_PROBLEM} ({exc})"
    return None
