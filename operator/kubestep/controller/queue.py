"""A work queue of object keys: level-triggered reconciling, one worker per key at a time.

Watch handlers only *add* keys; workers take them and reconcile the whole object. A key added while it
waits is not queued twice, and a key added while a worker holds it is run again once that worker is
done, so no change is ever missed and no object is reconciled twice at the same time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime

log = logging.getLogger(__name__)

Handler = Callable[[Hashable], Awaitable[None]]


class WorkQueue:
    """Keys to reconcile, now or at a given time."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._pending: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, tuple[datetime, asyncio.TimerHandle]] = {}

    def add(self, key: Hashable) -> None:
        """Reconcile ``key`` as soon as a worker is free."""
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

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

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being worked on (timers aside)."""
        return not self._pending and not self._active

    async def work(self, handler: Handler) -> None:
        """Take keys forever and run ``handler`` on each; ``handler`` must not raise."""
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            self._active.add(key)
            try:
                await handler(key)
            except Exception:  # a bug of ours: keep the worker alive, try the key again later
                log.exception("reconciling %s failed unexpectedly; retrying in 30s", key)
                self.add_after(key, 30)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)

    def close(self) -> None:
        """Cancel every timer."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
