"""Kubernetes Events about runs: a repeat raises the count of the Event already posted, as client-go's
recorder does, and Events are named so that the API server lists them in the order they were posted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from fake_kube import NOTES, FakeKube

from kubestep.controller.kube import Kube, NotFound
from kubestep.controller.recorder import MESSAGE_BYTES, EventRecorder, one_note
from kubestep.engine.actions import Note

T0 = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
RUN: dict[str, Any] = {
    "apiVersion": "kubestep.dev/v1alpha1",
    "kind": "WorkflowRun",
    "metadata": {"name": "contacts-1", "namespace": "ns", "uid": "uid-run"},
}


def _record(recorder: EventRecorder, kube: FakeKube, note: Note, at: datetime, obj: Any = RUN) -> None:
    asyncio.run(recorder.record(cast(Kube, kube), obj, note, at))


def _shown(kube: FakeKube) -> list[tuple[str, str, int, str, str]]:
    """What ``kubectl describe`` lists, in the API server's (name) order."""
    return [
        (e["reason"], e["message"], e["count"], e["firstTimestamp"], e["lastTimestamp"])
        for e in kube.objects(NOTES, "ns")
    ]


def test_a_repeat_raises_the_count_and_moves_the_last_time_instead_of_a_new_event() -> None:
    kube, recorder = FakeKube(), EventRecorder()
    pending = Note("StepPending", "step 'a': its pod has not started: ImagePullBackOff", warning=True)
    _record(recorder, kube, pending, T0)
    _record(recorder, kube, pending, T0 + timedelta(seconds=30))
    _record(recorder, kube, pending, T0 + timedelta(minutes=2))
    assert _shown(kube) == [
        ("StepPending", pending.message, 3, "2026-03-01T12:00:05Z", "2026-03-01T12:02:05Z"),
    ]
    assert kube.methods("post_event", "patch_event") == ["post_event", "patch_event", "patch_event"]


def test_a_different_message_reason_type_or_object_is_a_new_event() -> None:
    kube, recorder = FakeKube(), EventRecorder()
    other_run = {**RUN, "metadata": {**RUN["metadata"], "name": "contacts-2", "uid": "uid-2"}}
    notes = [
        Note("AttemptFailed", "step 'a' attempt 1 failed (Error) E: x", warning=True),
        Note("AttemptFailed", "step 'a' attempt 2 failed (Error) E: x", warning=True),
        Note("RetryScheduled", "step 'a' attempt 2 failed (Error) E: x"),
    ]
    for note in notes:
        _record(recorder, kube, note, T0)
    _record(recorder, kube, notes[0], T0, obj=other_run)
    assert [e[2] for e in _shown(kube)] == [1] * 4
    assert kube.methods("patch_event") == []


def test_events_of_one_second_are_listed_in_the_order_they_were_posted() -> None:
    kube, recorder = FakeKube(), EventRecorder()
    reasons = [f"R{i:02d}" for i in range(30)]
    for reason in reasons:
        _record(recorder, kube, Note(reason, "m"), T0)  # one clock reading: names still increase
    events = kube.objects(NOTES, "ns")
    assert [e["reason"] for e in events] == reasons
    assert all(e["metadata"]["name"].startswith("contacts-1.") for e in events)


def test_an_event_that_expired_is_posted_again() -> None:
    kube, recorder = FakeKube(), EventRecorder()
    note = Note("StepPending", "m", warning=True)
    _record(recorder, kube, note, T0)
    kube.fail("patch_event", NotFound("gone", 404))
    _record(recorder, kube, note, T0 + timedelta(hours=2))
    _record(recorder, kube, note, T0 + timedelta(hours=2, seconds=1))
    assert [(e[0], e[2]) for e in _shown(kube)] == [("StepPending", 1), ("StepPending", 2)]


def test_only_the_most_recent_events_are_remembered() -> None:
    kube, recorder = FakeKube(), EventRecorder(remembered=2)
    a, b, c = (Note(r, "m") for r in "ABC")
    for note in (a, b, c, a):
        _record(recorder, kube, note, T0)
    assert [(e[0], e[2]) for e in _shown(kube)] == [("A", 1), ("B", 1), ("C", 1), ("A", 1)]


# One Event per pass ----------------------------------------------------------------------------------------

SUCCEEDED = Note("StepSucceeded", "step 'a' succeeded (attempt 1, 0.4 s)")
STARTED = Note("StepStarted", "step 'b' attempt 1 started")
FAILED = Note("AttemptFailed", "step 'b' attempt 1 failed (Error) ValueError: bad row", warning=True)
RETRY = Note("RetryScheduled", "step 'b' attempt 2 at 2026-03-01T12:00:20+00:00 (in 15 s)")
STEP_FAILED = Note("StepFailed", "step 'b' failed: ValueError: bad row", warning=True)
RUN_FAILED = Note("RunFailed", "run failed: step 'b': ValueError: bad row", warning=True)
RUN_SUCCEEDED = Note("RunSucceeded", "run succeeded")
RUN_STARTED = Note("RunStarted", "run started by event 'app/go'")
RERUN = Note("RerunStarted", "rerun of run r from step 'b'")


def test_a_pass_with_no_note_tells_nothing_and_one_note_is_told_as_it_is() -> None:
    assert one_note([]) is None
    assert one_note([STARTED]) is STARTED


@pytest.mark.parametrize(
    ("notes", "reason", "warning"),
    [
        # A step's end and the next step's start: the first transition names the Event.
        ([SUCCEEDED, STARTED], "StepSucceeded", False),
        # A warning makes the Event one, named by the first warning.
        ([FAILED, RETRY], "AttemptFailed", True),
        ([SUCCEEDED, Note("StepPending", "step 'b': its pod has not started", True)], "StepPending", True),
        # A run's start or end says most about its pass.
        ([SUCCEEDED, RUN_SUCCEEDED], "RunSucceeded", False),
        ([FAILED, STEP_FAILED, RUN_FAILED], "RunFailed", True),
        ([RUN_STARTED, RERUN], "RunStarted", False),
    ],
)
def test_the_notes_of_a_pass_are_one_event_that_lists_them_all_in_order(
    notes: list[Note], reason: str, warning: bool
) -> None:
    told = one_note(notes)
    assert told is not None and (told.reason, told.warning) == (reason, warning)
    assert told.message == "; ".join(note.message for note in notes)


def test_long_messages_are_cut_longest_first_so_that_every_note_still_shows() -> None:
    trace = Note("AttemptFailed", "step 'b' attempt 1 failed (Error) " + "x" * 3000, warning=True)
    told = one_note([trace, RETRY, STEP_FAILED])
    assert told is not None and len(told.message) <= MESSAGE_BYTES
    first, retry, failed = told.message.split("; ")
    assert first.startswith("step 'b' attempt 1 failed (Error) xxx") and first.endswith("…")
    assert (retry, failed) == (RETRY.message, STEP_FAILED.message)
    # Several long ones share what is left equally.
    halves = one_note([Note("A", "a" * 900), Note("B", "b" * 900)])
    assert halves is not None and len(halves.message) <= MESSAGE_BYTES
    a, b = halves.message.split("; ")
    assert abs(len(a) - len(b)) <= 1 and a.endswith("…") and b.endswith("…")
