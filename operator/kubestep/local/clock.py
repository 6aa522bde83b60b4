"""Time for the local driver: the real clock, or a virtual one that jumps ahead (for tests)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where the driver gets the time and how it waits."""

    def now(self) -> datetime:
        """The current time (timezone-aware)."""

    def wait(self, seconds: float, wake: threading.Event) -> None:
        """Wait up to ``seconds``, returning early when ``wake`` is set."""


class RealClock:
    """Wall-clock time; waits really wait."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    def wait(self, seconds: float, wake: threading.Event) -> None:
        """Block up to ``seconds`` or until woken."""
        wake.wait(max(0.0, seconds))
        wake.clear()


class VirtualClock:
    """A clock that jumps to the next deadline instead of sleeping: backoffs and sleeps cost nothing."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        """The virtual time."""
        return self._now

    def wait(self, seconds: float, wake: threading.Event) -> None:
        """Advance the virtual time by ``seconds``."""
        if not wake.is_set():
            self._now += timedelta(seconds=max(0.0, seconds))
        wake.clear()
