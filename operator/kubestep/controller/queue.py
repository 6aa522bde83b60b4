"""A work queue of object keys, and the one place where the operator decides when to try a key again.

Watch handlers only *add* keys; workers take them and reconcile the whole object. A key added while it
waits is not queued twice, and a key added while a worker holds it is run again once that worker is
done, so no change is ever missed and no object is reconciled twice at the same time.

Reconcilers never schedule themselves: each returns a :class:`Result` and the queue acts on it, as
controller-runtime's work queue does:

- **done**: the key's failure count is reset; nothing more until a watch adds the key again;
- **at a time**: reconcile again then (a backoff, a sleep, a timeout the object asks for); the count is
  reset, since the pass succeeded;
- **requeue**: the object changed under the pass (a conflict); try again after the key's backoff;
- **failed** (or an unexpected exception): try again after the key's backoff.

The backoff is per key, exponential from :data:`RETRY_INITIAL_SECONDS` to :data:`RETRY_MAX_SECONDS`,
and grows with every requeue or failure in a row; of two times asked for a key, the earliest wins.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)

#: Delay before the first retry of a key whose pass failed or lost a conflict (doubling per failure).
RETRY_INITIAL_SECONDS = 0.1
#: The longest delay between two tries of a key that keeps failing.
RETRY_MAX_SECONDS = 60.0
#: Failures in a row of a transient error (the API server unreachable) logged at INFO before WARNING.
QUIET_FAILURES = 5


@dataclass(frozen=True)
class Result:
    """What one reconcile asks of the queue: controller-runtime's ``(Result, error)`` in one value."""

    requeue: bool = False
    """Try again after the key's backoff: the object changed while this pass read it (a conflict)."""
    at: datetime | None = None
    """Reconcile again at this time even if nothing changes (a backoff, a sleep, a timeout)."""
    error: str | None = None
    """Why this pass failed, in words for the log; it is tried again after the key's backoff."""
    transient: bool = False
    """The failure is likely to pass by itself (the API server unreachable): logged quietly at first."""

    @classmethod
    def done(cls) -> Result:
        """Nothing more to do until the object (or something it watches) changes."""
        return cls()

    @classmethod
    def again(cls) -> Result:
        """Reconcile again soon, rate-limited by the key's backoff."""
        return cls(requeue=True)

    @classmethod
    def requeue_at(cls, when: datetime | None) -> Result:
        """Reconcile again at ``when`` (done when None)."""
        return cls(at=when)

    @classmethod
    def failed(cls, error: str, transient: bool = False) -> Result:
        """The pass failed for ``error``: try again after the key's backoff."""
        return cls(error=error, transient=transient)


class Backoff:
    """Per-key exponential backoff: ``initial * 2^(n-1)`` after the n-th failure in a row, capped."""

    def __init__(self, initial: float = RETRY_INITIAL_SECONDS, maximum: float = RETRY_MAX_SECONDS) -> None:
        self.initial = initial
        self.maximum = maximum
        self._failures: dict[Hashable, int] = {}

    def fail(self, key: Hashable) -> float:
        """Count one more failure of ``key`` and return the delay before its next try."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        # The exponent is bounded so that a key failing for days cannot overflow the float.
        return float(min(self.maximum, self.initial * 2 ** min(count - 1, 64)))

    def failures(self, key: Hashable) -> int:
        """How many times in a row ``key`` failed (or was requeued)."""
        return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        """``key`` succeeded: its next failure starts from the initial delay again."""
        self._failures.pop(key, None)


Handler = Callable[[Hashable], Awaitable[Result]]


class WorkQueue:
    """Keys to reconcile, now or at a given time, and when to try them again."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        # (lane, order, key): a key queued urgently again while it waits in the later lane gets a second
        # entry; the one taken first wins and the other is skipped as stale.
        self._queue: asyncio.PriorityQueue[tuple[int, int, Hashable]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._pending: dict[Hashable, int] = {}
        """Keys waiting for a worker, and the lane each waits in (0 now, 1 later)."""
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, tuple[datetime, asyncio.TimerHandle]] = {}

    def add(self, key: Hashable, later: bool = False) -> None:
        """Reconcile ``key`` as soon as a worker is free; with ``later``, once no other key waits.

        ``later`` is for keys whose pass is rarely needed at once (a finished run seen when the operator
        starts): live work is not held up behind them, however many there are.
        """
        lane = 1 if later else 0
        if key in self._active:
            self._dirty.add(key)
        elif self._pending.get(key, 2) > lane:
            self._pending[key] = lane
            self._queue.put_nowait((lane, next(self._order), key))

    def add_at(self, key: Hashable, when: datetime) -> None:
        """Reconcile ``key`` at ``when`` (the earliest of all times asked for wins)."""
        current = self._timers.get(key)
        if current is not None and current[0] <= when:
            return
        if current is not None:
            current[1].cancel()
        delay = max(0.0, (when - datetime.now(UTC)).total_seconds())
        handle = asyncio.get_running_loop().call_later(delay, self._fire, key)
        self._timers[key] = (when, handle)

    def add_after(self, key: Hashable, seconds: float) -> None:
        """Reconcile ``key`` in ``seconds``."""
        self.add_at(key, datetime.fromtimestamp(datetime.now(UTC).timestamp() + seconds, UTC))

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def due(self, key: Hashable) -> datetime | None:
        """When ``key`` is next reconciled by a timer, if one is set."""
        current = self._timers.get(key)
        return current[0] if current is not None else None

    @property
    def depth(self) -> int:
        """Keys waiting for a worker (not those being worked on, nor timers)."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being worked on (timers aside)."""
        return not self._pending and not self._active

    async def work(self, handler: Handler) -> None:
        """Take keys forever, run ``handler`` on each and act on the :class:`Result` it returns."""
        while True:
            lane, _, key = await self._queue.get()
            if self._pending.get(key) != lane:
                continue  # taken already from the other lane
            del self._pending[key]
            self._active.add(key)
            try:
                result = await handler(key)
            except Exception:  # a bug of ours: keep the worker alive, try the key again with backoff
                delay = self.backoff.fail(key)
                log.exception("reconciling %s failed unexpectedly; trying again in %.1fs", key, delay)
                self.add_after(key, delay)
            else:
                self.finish(key, result)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)

    def finish(self, key: Hashable, result: Result) -> None:
        """Act on what the reconcile of ``key`` returned."""
        if result.error is not None or result.requeue:
            delay = self.backoff.fail(key)
            if result.error is not None:
                count = self.backoff.failures(key)
                level = logging.INFO if result.transient and count <= QUIET_FAILURES else logging.WARNING
                log.log(level, "%s: %s; trying again in %.1fs (failure %d)", key, result.error, delay, count)
            self.add_after(key, delay)
        else:
            self.backoff.forget(key)
        if result.at is not None:
            self.add_at(key, result.at)

    def close(self) -> None:
        """Cancel every timer."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
