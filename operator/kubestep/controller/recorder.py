"""Kubernetes Events about kubestep objects, posted as client-go's event recorder posts them.

- A repeat (same object, type, reason and message as an Event this process posted) does not create a new
  Event: the first one's ``count`` is raised and its ``lastTimestamp`` moved to now, so ``kubectl
  describe`` shows ``(x3 over 2m)`` instead of three lines.
- Each new Event is named ``<object>.<nanoseconds in hex>``, as client-go names them: the API server lists
  Events by name, so the list ``kubectl describe`` sorts (by ``lastTimestamp``, to the second) already
  holds those of one second in the order they were posted, and ``kubectl`` keeps that order.

- The notes of one reconcile pass are told as one Event (:func:`one_note`): a step's end and the next
  step's start, an attempt's failure and its retry, the last step and the run's end. Each Event is an
  API write; one per pass instead of one per transition keeps a step attempt at three writes (its status,
  its Job, this Event) while ``kubectl describe`` still lists every transition.

What was posted is remembered in memory only, for the most recent :data:`REMEMBERED` Events (as client-go
does): after a restart a repeat starts a new Event, which is harmless.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kubestep.controller import builders
from kubestep.controller.kube import Kube, NotFound, Obj
from kubestep.engine.actions import Note

#: Events remembered for aggregation (client-go's cache holds as many).
REMEMBERED = 4096
#: The longest message an Event keeps (as `builders.event_message` cuts it).
MESSAGE_BYTES = 1024
#: Between the messages of the notes one Event tells.
SEPARATOR = "; "

_Key = tuple[str, str, str, str, str, str, str]


@dataclass
class _Posted:
    name: str
    count: int


class EventRecorder:
    """Posts Events, aggregating repeats of one this process posted; one per operator process."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._posted: OrderedDict[_Key, _Posted] = OrderedDict()
        self._remembered = remembered
        self._last_stamp = 0

    async def record(self, kube: Kube, obj: Obj, note: Note, now: datetime) -> None:
        """Tell ``note`` about ``obj``: a new Event, or one more count of the same Event. API errors raise."""
        meta = obj["metadata"]
        namespace = meta["namespace"]
        key = _key(obj, note)
        posted = self._posted.get(key)
        if posted is not None:
            patch = {"count": posted.count + 1, "lastTimestamp": builders.event_stamp(now)}
            try:
                await kube.patch_event(namespace, posted.name, patch)
            except NotFound:
                del self._posted[key]  # expired (the API server keeps Events an hour): start a new one
            else:
                posted.count += 1
                self._posted.move_to_end(key)
                return
        name = f"{meta['name'][:200]}.{self._stamp(now):x}"
        await kube.post_event(namespace, builders.note_event(obj, note, now, name=name))
        self._posted[key] = _Posted(name, 1)
        while len(self._posted) > self._remembered:
            self._posted.popitem(last=False)

    def _stamp(self, now: datetime) -> int:
        # Strictly increasing, so that two Events posted within one clock tick still sort in order.
        stamp = max(int(now.timestamp() * 1_000_000_000), self._last_stamp + 1)
        self._last_stamp = stamp
        return stamp


def one_note(notes: Sequence[Note]) -> Note | None:
    """The notes of one pass as the one Event that tells them all (None if there are none).

    A Warning if any note is one. Its reason is that of the first run-level note of its type (a run's
    start or end says most about the pass), else of its first note of its type; its message lists every
    note's message in order, each shortened as needed (the longest first) to fit what an Event keeps.
    """
    if len(notes) <= 1:
        return notes[0] if notes else None
    warning = any(note.warning for note in notes)
    candidates = [note for note in notes if note.warning is warning]
    lead = next((note for note in candidates if note.reason.startswith("Run")), candidates[0])
    return Note(lead.reason, _fit([note.message for note in notes]), warning)


def _fit(messages: list[str]) -> str:
    """``messages`` joined, the longest cut (marked "…") until the whole fits :data:`MESSAGE_BYTES`."""
    budget = MESSAGE_BYTES - len(SEPARATOR) * (len(messages) - 1)
    # The largest share each message may keep: short ones keep all, the rest split what is left equally.
    share = budget
    for count, length in enumerate(sorted(len(m) for m in messages)):
        remaining = len(messages) - count
        if length * remaining <= budget:
            budget -= length
            continue
        share = budget // remaining
        break
    return SEPARATOR.join(m if len(m) <= share else m[: max(0, share - 1)] + "…" for m in messages)


def _key(obj: Obj, note: Note) -> _Key:
    """What makes two Events the same, as client-go's ``getEventKey`` (the source is always this one)."""
    meta = obj["metadata"]
    return (
        obj["kind"],
        meta["namespace"],
        meta["name"],
        str(meta.get("uid")),
        "Warning" if note.warning else "Normal",
        note.reason,
        builders.event_message(note),
    )
