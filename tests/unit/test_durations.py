"""Durations in code accept the units of Inngest's SDK spec, down to nanoseconds; specs keep ms to h."""

from __future__ import annotations

import pytest

from kubestep.api.durations import DurationError, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ns", 250e-9),
        ("1500us", 0.0015),
        ("250µs", 0.00025),  # the micro sign
        ("250μs", 0.00025),  # the Greek mu
        ("2ms", 0.002),
        ("1m30s", 90.0),
        ("1h1us", 3600.000001),
        ("2d", 172800.0),
        ("1w", 604800.0),
    ],
)
def test_every_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("text", ["5 minutes", "1y", "10", "us", "1.5"])
def test_anything_else_is_refused_naming_the_units(text: str) -> None:
    with pytest.raises(DurationError, match=r"\(ns, us, ms, s, m, h, d, w\)"):
        parse_duration(text)
