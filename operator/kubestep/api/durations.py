"""Duration strings as users write them in specs and in the SDK: ``"15s"``, ``"1h30m"``, ``"500ms"``,
``"2d"``."""

from __future__ import annotations

import re
from datetime import timedelta

#: Durations in code (`step.sleep`): the units of Inngest's SDK spec, from nanoseconds (`ns`, `us` or `µs`)
#: to days and weeks.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h|d|w))+$"
#: Durations in resource specs: units CEL's `duration()` understands, so the API server can compare them.
#: Not `ns` and `us`: no timeout, backoff or window in a spec is that short.
SPEC_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
#: Spec durations whose every part has few enough digits that, within 32 characters, CEL's `duration()`
#: (Go's `time.ParseDuration`, at most about 2.5 million hours) cannot overflow. A part with more digits
#: (not counting leading zeros) is always longer than :data:`MAX_SPEC_DURATION`, so the API server can
#: refuse what does not match this as too long without ever parsing it.
SPEC_DURATION_PARSABLE_PATTERN = (
    r"^(0*([0-9]{1,5}(\.[0-9]+)?h|[0-9]{1,7}(\.[0-9]+)?m|[0-9]{1,9}(\.[0-9]+)?s|[0-9]{1,12}(\.[0-9]+)?ms))+$"
)
#: The longest duration a spec may hold: 366 days, as for waits and delays in code. It keeps every
#: duration within what Kubernetes fields such as `activeDeadlineSeconds` accept.
MAX_SPEC_DURATION = "8784h"
MAX_SPEC_DURATION_SECONDS = 366 * 86400.0

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|μs|ms|s|m|h|d|w)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # the micro sign
    "μs": 1e-6,  # the Greek letter mu, which Go's durations also accept
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


class DurationError(ValueError):
    """A duration string that does not follow the documented format."""


def parse_duration(value: str | float | int | timedelta) -> float:
    """Return the number of seconds in ``value``.

    Accepts a duration string (``"1h30m"``), a number of seconds or a ``timedelta``.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise DurationError(f"duration {value} is negative; use 0 or more")
        return value.total_seconds()
    if isinstance(value, int | float):
        if value < 0:
            raise DurationError(f"duration {value!r} is negative; use 0 or more seconds")
        return float(value)
    text = value.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise DurationError(
            f"duration {value!r} is not valid; write it as a number and a unit (ns, us, ms, s, m, h, d, w), "
            "for example '30s', '1h30m' or '500ms'"
        )
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """Render seconds the way people read them: ``1h2m3s``, ``45s``, ``1.5s``, ``250ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
